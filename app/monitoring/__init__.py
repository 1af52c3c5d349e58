"""What Prometheus scrapes at /metrics (metrics.py): Litestar's HTTP metrics and a
snapshot of the flow read from PostgreSQL and Redis (flow.py), refreshed once for all
concurrent scrapes (single_flight.py). The admin API's figures and alerts are app/admin/'s."""
