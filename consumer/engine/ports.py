"""The parts of the Kafka clients the engine talks to, as protocols.

aiokafka's ``AIOKafkaConsumer`` and ``AIOKafkaProducer`` satisfy them as they are; the engine's
unit tests use in-memory ones, so ordering, commit, rebalance and drain rules get fast tests
with an injected clock while the real-broker tests stay focused on what only a broker shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata


class Record(Protocol):
    """One fetched record (``aiokafka.structs.ConsumerRecord``)."""

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class ConsumerPort(Protocol):
    """A group member with manual commits."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[Any]]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None: ...


class BatchPort(Protocol):
    """A batch being filled (``aiokafka.producer.message_accumulator.BatchBuilder``)."""

    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> object | None: ...


class ProducerPort(Protocol):
    """A producer: ``send`` queues one record, ``send_batch`` a batch of one partition; both
    return the delivery future."""

    async def partitions_for(self, topic: str) -> set[int]: ...

    def create_batch(self) -> BatchPort: ...

    async def send_batch(
        self, batch: BatchPort, topic: str, *, partition: int
    ) -> asyncio.Future[Any]: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


class ChoicesLogPort(Protocol):
    """The choices topic (``engine/recent.py``), read back by partition without a group."""

    async def partitions(self) -> set[int]:
        """The topic's partitions."""
        ...

    def read(self, since: Mapping[int, int | None]) -> AsyncIterator[tuple[int, Sequence[Record]]]:
        """Each partition's records from its offset (None: its beginning) to the end it had
        when the read began, a chunk at a time."""
        ...
