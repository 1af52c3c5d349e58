"""A stand-in for Entity Permissions Core, to run, demo and test the whole flow alone.

It reads `market.approval_requested` from `markets:events` (group
`entity-permissions-core`), lists the pending requests, lets an administrator approve
or reject them over HTTP, serves the polling feed (API key, cursors), and pushes each
decision to our webhook signed with a Standard Webhooks secret. Fault switches make
its feed slow, failing or malformed for tests.
"""
