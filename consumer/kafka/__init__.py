"""Kafka adapter: consumer and producer construction (TLS, SASL)."""
