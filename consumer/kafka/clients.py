"""Kafka adapter: builds the consumer and producer from Settings, with TLS and SASL.

Only construction and lifecycle live here; the poll loop is in :mod:`consumer.engine.pipeline`.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from consumer.kafka.partitioner import CachedPartitioner
from consumer.settings import Settings

logger = logging.getLogger(__name__)


def connection_options(settings: Settings) -> dict[str, Any]:
    """Client options shared by consumer, producer and admin: servers, TLS, SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    return context


def make_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group consumer with manual commits; subscribe it with a rebalance listener."""
    return AIOKafkaConsumer(
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.kafka_auto_offset_reset,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        isolation_level="read_committed",
        **connection_options(settings),
    )


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer of outcomes and dead letters: every send waits for all in-sync replicas."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=settings.kafka_producer_idempotence,
        linger_ms=settings.kafka_producer_linger_ms,
        max_request_size=settings.kafka_producer_max_request_bytes,
        compression_type=None,
        partitioner=CachedPartitioner(),
        # The publisher fills batches itself (one per partition per publish): room for a
        # batch's outcomes, under the brokers' default message.max.bytes (1 MiB).
        max_batch_size=256 * 1024,
        **connection_options(settings),
    )
