"""In-memory stand-ins for the engine's ports: a group member, a producer, target writers.

They keep what a broker keeps (logs, positions, committed offsets, an assignment, paused
partitions) so the engine's ordering, commit, rebalance and drain rules can be tested in
milliseconds; what only a real broker shows stays in tests/integration.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from consumer.engine.ports import BatchPort
from consumer.model.changes import PersonResult, PersonWrite
from consumer.model.held import HeldChoices


@dataclass(frozen=True)
class Record:
    """A fetched record (the fields of aiokafka's ConsumerRecord the engine reads)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class MemoryConsumer:
    """One group member over in-memory partition logs."""

    def __init__(self, topic: str, partitions: int = 1) -> None:
        self.topic = topic
        self.logs: dict[TopicPartition, list[Record]] = {
            TopicPartition(topic, p): [] for p in range(partitions)
        }
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self._assigned: set[TopicPartition] = set(self.logs)
        self._position: dict[TopicPartition, int] = dict.fromkeys(self.logs, 0)
        self._paused: set[TopicPartition] = set()
        self._wake = asyncio.Event()
        self.listener: ConsumerRebalanceListener | None = None
        #: Exceptions the next commits raise, in order.
        self.commit_errors: list[BaseException] = []
        #: Set: every commit waits for it (a coordinator that does not answer meanwhile).
        self.commit_hangs: asyncio.Event | None = None

    # --- test side -----------------------------------------------------------------------

    def append(
        self,
        partition: int,
        value: bytes | None,
        key: bytes | None = None,
        timestamp: int = 0,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> int:
        """Append a record; returns its offset."""
        tp = TopicPartition(self.topic, partition)
        log = self.logs[tp]
        log.append(Record(self.topic, partition, len(log), timestamp, key, value, tuple(headers)))
        self._wake.set()
        return len(log) - 1

    @property
    def paused_partitions(self) -> set[TopicPartition]:
        return set(self._paused)

    def position(self, tp: TopicPartition) -> int:
        """The next offset ``getmany`` hands out for ``tp``."""
        return self._position[tp]

    async def rebalance(self, assignment: set[TopicPartition]) -> None:
        """An eager rebalance: everything revoked, then ``assignment`` handed out from the
        committed offsets."""
        revoked = set(self._assigned)
        if self.listener is not None:
            await self.listener.on_partitions_revoked(revoked)
        self._assigned = set()
        self._paused.clear()
        for tp in assignment:
            self._position[tp] = self.committed.get(tp, 0)
        self._assigned = set(assignment)
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(assignment))
        self._wake.set()

    # --- the port ------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[Any]]:
        out = self._fetch(max_records)
        if not out and timeout_ms > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
            out = self._fetch(max_records)
        return out

    def _fetch(self, max_records: int | None) -> dict[TopicPartition, list[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        budget = max_records or 1_000_000
        for tp in sorted(self._assigned - self._paused):
            pos = self._position[tp]
            batch = self.logs[tp][pos : pos + budget]
            if batch:
                out[tp] = batch
                self._position[tp] = pos + len(batch)
                budget -= len(batch)
            if budget <= 0:
                break
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)
        self._wake.set()

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.logs[partition])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._position[partition] = offset
        self._wake.set()

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        if self.commit_hangs is not None:
            await self.commit_hangs.wait()  # a coordinator that does not answer
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        moved = {tp: meta.offset for tp, meta in offsets.items()}
        self.commits.append(moved)
        self.committed.update(moved)


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int = 0
    #: When it was delivered (ms since the epoch), as a broker's log-append time.
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))


class MemoryBatch:
    """A batch being filled (like aiokafka's BatchBuilder: full at ``max_bytes``, but the
    first record always fits)."""

    def __init__(self, max_bytes: int) -> None:
        self.records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self._size = 0
        self._max = max_bytes

    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> object | None:
        # aiokafka's builder refuses anything but a list here (a TypeError at run time).
        assert isinstance(headers, list), "headers must be a list"
        size = len(key or b"") + len(value or b"")
        if self.records and self._size + size > self._max:
            return None
        self.records.append((key, value, list(headers)))
        self._size += size
        return object()


class MemoryProducer:
    """A producer whose records land in lists; faults are injected per topic."""

    def __init__(self, partitions: int = 1, batch_bytes: int = 16_384) -> None:
        self.topics: dict[str, list[Sent]] = defaultdict(list)
        #: topic -> exceptions for the next deliveries to that topic (one per send or batch).
        self.fail_delivery: dict[str, list[BaseException]] = defaultdict(list)
        #: Largest value accepted (send() refuses it at once, a batch is refused by the
        #: "broker"), None: no limit.
        self.max_value_bytes: int | None = None
        #: Decides a delivery's error from the record (None: delivered).
        self.fail_when: Callable[[Sent], BaseException | None] | None = None
        #: Records offered for delivery, delivered or not.
        self.attempts = 0
        self.batches = 0
        self._partitions = partitions
        self._batch_bytes = batch_bytes

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partitions))

    def create_batch(self) -> MemoryBatch:
        return MemoryBatch(self._batch_bytes)

    async def send_batch(
        self, batch: BatchPort, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        assert isinstance(batch, MemoryBatch)
        from aiokafka.errors import MessageSizeTooLargeError

        self.batches += 1
        self.attempts += len(batch.records)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent = [Sent(topic, k, v, h, partition) for k, v, h in batch.records]
        faults = self.fail_delivery.get(topic)
        error: BaseException | None = faults.pop(0) if faults else None
        limit = self.max_value_bytes
        if error is None and limit is not None and any(len(s.value or b"") > limit for s in sent):
            error = MessageSizeTooLargeError("a record is over the topic's limit")
        if error is None and self.fail_when is not None:
            error = next((e for s in sent if (e := self.fail_when(s)) is not None), None)
        if error is not None:
            future.set_exception(error)
        else:
            self.topics[topic].extend(sent)
            future.set_result(None)
        return future

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        from aiokafka.errors import MessageSizeTooLargeError

        if self.max_value_bytes is not None and len(value or b"") > self.max_value_bytes:
            self.attempts += 1
            raise MessageSizeTooLargeError("over max_request_size")
        batch = self.create_batch()
        batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers or [])
        return await self.send_batch(batch, topic, partition=partition or 0)


class MemoryChoicesLog:
    """The choices topic as a :class:`MemoryProducer` holds it (offsets: each partition's
    records in the order they were delivered)."""

    def __init__(self, producer: MemoryProducer, topic: str = "choices") -> None:
        self.producer = producer
        self.topic = topic
        #: The ``since`` of each read, in order.
        self.reads: list[dict[int, int | None]] = []
        #: Raised by every read while set.
        self.fail: BaseException | None = None
        #: The topic's partitions.
        self.count = 2
        #: While set and not yet set free, reads wait for it (a slow read-back).
        self.hold: asyncio.Event | None = None

    def _log(self, partition: int) -> list[Sent]:
        return [s for s in self.producer.topics[self.topic] if s.partition == partition]

    async def ends(self, partitions: Iterable[int]) -> dict[int, int]:
        return {p: len(self._log(p)) for p in partitions}

    async def partitions(self) -> set[int]:
        return set(range(self.count))

    async def read(
        self, since: Mapping[int, int | None]
    ) -> AsyncIterator[tuple[int, Sequence[Record]]]:
        self.reads.append(dict(since))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        for partition, start in since.items():
            log = self._log(partition)
            records = [
                Record(self.topic, partition, n, s.timestamp, s.key, s.value)
                for n, s in enumerate(log)
                if n >= (start or 0)
            ]
            if records:
                yield partition, records


@dataclass
class Call:
    """One write call a fake writer received."""

    people: dict[str, dict[str, Any]]


@dataclass
class MemoryWriter:
    """A target writer that records calls; each person gets ``updated``."""

    sobject: str
    calls: list[Call] = field(default_factory=list)
    #: Exceptions the next calls raise, in order.
    errors: list[BaseException] = field(default_factory=list)
    #: Seconds each call takes (popped per call; 0 when empty).
    latencies: list[float] = field(default_factory=list)
    #: When set, calls wait for it (a Salesforce that hangs until the test lets it go).
    gate: asyncio.Event | None = None
    #: email key -> an event the calls holding that person wait for.
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Reads a sync state: posts to the batch's HeldChoices (after ``errors``, as a real
    #: writer posts after its query) and waits for the batch's other targets.
    stateful: bool = False
    in_flight: int = 0
    max_in_flight: int = 0
    #: What the engine said of each call: whether the service was behind.
    backlogs: list[bool] = field(default_factory=list)
    #: What the engine said of each call: how many writers write its batch.
    company: list[int | None] = field(default_factory=list)

    async def write(
        self,
        people: Sequence[PersonWrite],
        done: dict[str, PersonResult] | None = None,
        *,
        backlog: bool = False,
        writers: int | None = None,
        held: HeldChoices | None = None,
    ) -> dict[str, PersonResult]:
        if held is not None and not self.stateful:
            held.leave(self.sobject)  # keeps no sync state
        self.backlogs.append(backlog)
        self.company.append(writers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            for person in people:
                waits = self.hold.get(person.email_key)
                if waits is not None and person.fields.get(self.sobject):
                    await waits.wait()
            if self.latencies:
                await asyncio.sleep(self.latencies.pop(0))
            if self.errors:
                raise self.errors.pop(0)
            if held is not None and self.stateful:
                held.post(self.sobject, {})
                await held.settled()
            mine = {
                p.email_key: dict(p.fields[self.sobject])
                for p in people
                if p.fields.get(self.sobject)
            }
            self.calls.append(Call(mine))
            return {k: PersonResult("updated", [f"id-{k}"]) for k in mine}
        finally:
            self.in_flight -= 1
