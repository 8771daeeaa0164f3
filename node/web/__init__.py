"""HTTP endpoints of a node process: Prometheus metrics read from the audit database, liveness and readiness."""
