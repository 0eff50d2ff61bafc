"""Metrics (one definition on an injected registry) and the /metrics, /healthz, /readyz server."""
