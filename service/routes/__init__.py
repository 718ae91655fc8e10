"""HTTP routers: one module per resource (detection, health/metrics)."""
