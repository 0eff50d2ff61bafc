"""Shared fixtures: a real Kafka-protocol broker for the whole session.

By default the embedded Tansu broker runs on a free loopback port. Set
``KAFKA_TEST_BOOTSTRAP=host:port`` to use an existing Apache Kafka, or
``KAFKA_TEST_TESTCONTAINERS=1`` to start one with testcontainers (needs Docker).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from consumer.devkit.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running Kafka-protocol broker."""
    given = os.environ.get("KAFKA_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    if os.environ.get("KAFKA_TEST_TESTCONTAINERS") == "1":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def real_kafka() -> bool:
    """True when the tests run on Apache Kafka (features the embedded broker lacks)."""
    return bool(
        os.environ.get("KAFKA_TEST_BOOTSTRAP") or os.environ.get("KAFKA_TEST_TESTCONTAINERS")
    )
