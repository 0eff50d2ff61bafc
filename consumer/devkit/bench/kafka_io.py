"""Kafka on the bench's side: producing backlogs and paced events, watching outputs arrive.

The bench process produces and watches; the measured processes (the service, the passthrough)
only consume and produce. The watcher reads the output topic by assignment (no group, so it
cannot disturb the measured group) and keeps counts and the output records' own timestamps,
which the measured process's producer set when it sent them: the throughput window is taken
from those, not from when the watcher happened to read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

#: Outcomes carry ``"status":"<status>"`` first; the watcher reads it without decoding JSON.
_STATUS = b'"status":"'


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes, int]],
    *,
    timestamp: Callable[[int], int] | None = None,
) -> tuple[int, float, int]:
    """Produce every (key, value, event ms) fast: large batches, a linger, acks from the
    leader, at most a few thousand sends in flight. Returns (count, seconds, bytes).

    ``timestamp`` gives the Kafka record timestamp from the event time (None: the producer's
    clock at send, as in production).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    count = size = 0
    started = time.monotonic()
    try:
        pending: list[asyncio.Future[object]] = []
        for key, value, when in records:
            ts = timestamp(when) if timestamp is not None else None
            pending.append(await producer.send(topic, value=value, key=key, timestamp_ms=ts))
            count += 1
            size += len(value)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return count, time.monotonic() - started, size


@dataclass
class Watch:
    """What the watcher has seen on an output topic."""

    count: int = 0
    #: Output record timestamps (ms), as their producer set them.
    first_ms: int | None = None
    last_ms: int | None = None
    #: Wall-clock time (s) when the watcher read the first and the last record.
    first_seen: float | None = None
    last_seen: float | None = None
    statuses: Counter[str] = field(default_factory=Counter)


class Watcher:
    """Reads an output topic from the start, by assignment, counting records."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        on_first: Callable[[], None] | None = None,
        on_record: Callable[[ConsumerRecord[bytes, bytes]], None] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._on_first = on_first
        self._on_record = on_record
        self.seen = Watch()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Assign every partition of the topic and start reading in the background."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = consumer.partitions_for_topic(self._topic)
        for _ in range(50):
            if partitions:
                break
            await asyncio.sleep(0.1)
            await consumer.topics()  # a remote metadata call: a just-made topic
            partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            raise RuntimeError(f"topic {self._topic} has no partitions")
        consumer.assign([TopicPartition(self._topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        self._task = asyncio.create_task(self._read(consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        seen = self.seen
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    if seen.first_ms is None:
                        seen.first_ms = seen.last_ms = record.timestamp
                        seen.first_seen = now
                        if self._on_first is not None:
                            self._on_first()
                    elif record.timestamp > (seen.last_ms or 0):
                        seen.last_ms = record.timestamp
                    if self._on_record is not None:
                        self._on_record(record)
                    value = record.value or b""
                    at = value.find(_STATUS)
                    if at >= 0:
                        start = at + len(_STATUS)
                        end = value.find(b'"', start)
                        seen.statuses[value[start:end].decode()] += 1
                seen.count += len(records)
            if batch:
                seen.last_seen = now
                self._changed.set()

    async def wait_for(
        self, count: int, *, timeout: float, alive: Callable[[], bool] | None = None
    ) -> bool:
        """Until ``count`` records were seen (True), the time is up or ``alive`` says the
        producing process died (False)."""
        deadline = time.monotonic() + timeout
        while self.seen.count < count:
            left = deadline - time.monotonic()
            if left <= 0 or (alive is not None and not alive()):
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise what stopped the reader
        return True

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
