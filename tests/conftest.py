"""Shared fixtures: a real Kafka-protocol broker for the whole session.

By default the embedded Tansu broker runs on a free loopback port, one per pytest-xdist worker
(topics and groups are unique per test, so nothing else is shared). Set
``KAFKA_TEST_BOOTSTRAP=host:port`` to use an existing Apache Kafka, or
``KAFKA_TEST_TESTCONTAINERS=1`` to start one with testcontainers (needs Docker); either is
shared by all workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.support import embedded_broker, on_real_kafka

_container: Any = None


def pytest_configure(config: pytest.Config) -> None:
    """With testcontainers, start one Kafka in the main process, before any worker exists.

    The workers inherit its address as ``KAFKA_TEST_BOOTSTRAP``.
    """
    global _container
    if hasattr(config, "workerinput") or os.environ.get("KAFKA_TEST_BOOTSTRAP"):
        return
    if os.environ.get("KAFKA_TEST_TESTCONTAINERS") != "1":
        return
    from testcontainers.kafka import KafkaContainer

    _container = KafkaContainer().start()
    os.environ["KAFKA_TEST_BOOTSTRAP"] = _container.get_bootstrap_server()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _container
    if _container is not None:
        _container.stop()
        _container = None
        os.environ.pop("KAFKA_TEST_BOOTSTRAP", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long-running (``slow``) tests first, each followed by a quick one.

    Under xdist with ``--maxschedchunk=1`` (``make test``) every worker starts with two tests
    and then takes one more whenever it finishes one: so the long ones start at once, on
    different workers, and none starts when the rest is done.
    """
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    quick = [item for item in items if item.get_closest_marker("slow") is None]
    paired = [item for pair in zip(slow, quick, strict=False) for item in pair]
    items[:] = paired + slow[len(paired) // 2 :] + quick[len(paired) // 2 :]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running Kafka-protocol broker."""
    given = os.environ.get("KAFKA_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    with embedded_broker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def real_kafka() -> bool:
    """True when the tests run on Apache Kafka (features the embedded broker lacks)."""
    return on_real_kafka()
