"""What the operators' machines ask of a running API: Prometheus scrapes /metrics
(metrics.py), Litestar's HTTP metrics and a snapshot of the flow read from PostgreSQL and
Redis (flow.py); an orchestrator probes /health and /ready (health.py). Both the snapshot
and the readiness check are fetched once for all concurrent callers (single_flight.py).
The admin API's figures and alerts are app/admin/'s."""
