"""Tools for tests and the demo: the embedded Kafka-protocol broker and fixture helpers.

Not used by the service itself.
"""
