"""The operator console at /console: the flow as pages, and the replays an operator may
ask for, through the admin service the JSON admin API uses (app/admin)."""
