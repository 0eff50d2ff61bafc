"""The throughput baseline: the least a consumer of this topic must do, with the service's
own Kafka clients.

``python -m consumer.devkit.bench.passthrough`` reads the same environment variables as the
service (only the Kafka ones), builds its consumer and producer with the service's own
``make_consumer`` / ``make_producer`` (same group settings, manual commits, read_committed,
acks=all, linger, no compression), and for every message fetched produces one small record
to ``KAFKA_RESULTS_TOPIC``, waits for the acknowledgements of each fetch, and commits every
``SYNC_COMMIT_INTERVAL_MS`` (at least once: nothing is committed before its output is
acknowledged). No parsing, no Salesforce. Stops on SIGTERM or SIGINT after a last commit.

With ``BENCH_PASSTHROUGH_DECODE=orjson`` it also decodes each message with ``orjson.loads``
and nothing more: the ceiling of any consumer that reads the events, against which (a)'s
target can be judged (the bench runs it twice, beside the plain passthrough's two runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from consumer.kafka.clients import make_consumer, make_producer
from consumer.settings import Settings


async def run(
    settings: Settings, stop: asyncio.Event, decode: Callable[[bytes], object] | None = None
) -> int:
    """Consume, produce one record per message, commit; until ``stop`` is set. ``decode``,
    when given, is called on each message's value first."""
    consumer = make_consumer(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        consumer.subscribe([settings.kafka_input_topic])
        await consumer.start()
        try:
            done: dict[TopicPartition, int] = {}
            last_commit = time.monotonic()
            interval = settings.sync_commit_interval_ms / 1000
            while not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=500, max_records=settings.kafka_fetch_max_records
                )
                sends = []
                for tp, records in fetched.items():
                    for record in records:
                        if decode is not None:
                            decode(record.value)
                        # The input's timestamp rides along: the bench measures the Kafka
                        # leg of the latency (input record to output record) from it.
                        value = b'{"status":"passed","partition":%d,"offset":%d,"in_ts":%d}' % (
                            tp.partition,
                            record.offset,
                            record.timestamp,
                        )
                        sends.append(
                            await producer.send(
                                settings.kafka_results_topic, value=value, key=record.key
                            )
                        )
                    done[tp] = records[-1].offset + 1
                if sends:
                    await asyncio.gather(*sends)
                if done and time.monotonic() - last_commit >= interval:
                    await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in done.items()})
                    done.clear()
                    last_commit = time.monotonic()
            if done:
                await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in done.items()})
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return 0


async def _main() -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    decode = orjson.loads if os.environ.get("BENCH_PASSTHROUGH_DECODE") == "orjson" else None
    return await run(Settings(), stop, decode)


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
