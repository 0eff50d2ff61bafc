"""A dead letter the broker refuses for its size still arrives, without its value.

Needs Apache Kafka (the embedded broker has no record size limit): run with
KAFKA_TEST_BOOTSTRAP or KAFKA_TEST_TESTCONTAINERS=1.
"""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.support import (
    Topics,
    collect,
    make_emulator,
    produce,
    running_service,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


async def test_dead_letter_refused_for_size_is_sent_without_value(
    kafka_bootstrap: str, real_kafka: bool
) -> None:
    if not real_kafka:
        pytest.skip("the embedded broker enforces no record size limit")
    topics = Topics.fresh()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics.input, 1, 1, topic_configs={"max.message.bytes": "2000000"}),
                NewTopic(topics.results, 1, 1),
                NewTopic(topics.dlq, 1, 1, topic_configs={"max.message.bytes": "100000"}),
            ]
        )
    finally:
        await admin.close()
    big = b'{"type": "event.created", "pad": "' + b"x" * 500_000 + b'"}'
    await produce(kafka_bootstrap, topics.input, [(b"k", big)])
    async with make_emulator() as emulator:
        settings = settings_for(
            kafka_bootstrap, topics, emulator.url, sync_max_message_bytes=200_000
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(dlq.records) >= 1, 60, "the dead letter")
            await wait_for(lambda: len(results.records) >= 1, 60, "the outcome")
            assert await running.finish() == 0
    record = dlq.records[0]
    headers = dict(record.headers)
    assert record.value == b""
    assert headers["x-dlq-error-class"] == b"MESSAGE_TOO_LARGE"
    assert b"too large" in headers["x-dlq-value-omitted"]
    assert results.values()[0]["status"] == "rejected"
