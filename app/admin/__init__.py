"""The admin API: processed events, replays, monitoring figures and alerts
(docs/async-approval-flow.md, Monitoring)."""
