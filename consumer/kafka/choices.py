"""Kafka adapter: the choices topic, read back by partition (``KAFKA_CHOICES_TOPIC``).

The engine remembers per person the choices of recent batches (``engine/recent.py``) and
writes each person's entry to this compacted topic, in the partition of the input the person
came from. A member handed an input partition reads the same partition of this topic first,
so what was remembered survives a restart and follows a partition to another replica. The
reader belongs to no group: each member reads exactly the partitions it was assigned.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.engine.ports import Record
from consumer.kafka.clients import connection_options
from consumer.settings import Settings

logger = logging.getLogger(__name__)

#: How long one fetch of a read waits for data before the ends are checked again.
_FETCH_MS = 200


class ChoicesLog:
    """Reads the choices topic (start it first; :meth:`stop` is idempotent)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect (no group, nothing committed)."""
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            # An offset before what compaction left: its first record.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_FETCH_MS,
            **connection_options(self._settings),
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Disconnect; nothing is lost (the topic is the state)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def partitions(self) -> set[int]:
        """The topic's partitions (empty when it does not exist)."""
        consumer = self._started()
        await consumer.topics()  # loads the metadata
        return set(consumer.partitions_for_topic(self.topic) or ())

    async def read(
        self, since: Mapping[int, int | None]
    ) -> AsyncIterator[tuple[int, Sequence[Record]]]:
        """Each partition's records from its offset (None: its beginning) to the end it had
        when the read began."""
        consumer = self._started()
        tps = [TopicPartition(self.topic, p) for p in since]
        if not tps:
            return
        consumer.assign(tps)
        try:
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                start = since[tp.partition]
                if start is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, start)
            left = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            while left:
                fetched: dict[Any, list[Any]] = await consumer.getmany(*left, timeout_ms=_FETCH_MS)
                for tp, records in fetched.items():
                    # Records past the end are entries all the same (and a broker may
                    # answer an end inside the last batch: the embedded one does).
                    if records:
                        yield tp.partition, records
                left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        finally:
            consumer.assign([])

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("ChoicesLog is not started")
        return self._consumer
