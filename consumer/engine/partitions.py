"""Everything the engine keeps per partition, under one key type, forgotten in one place.

Per owned partition: the offsets fetched and which of them are done (commits move over the
done prefix only), whether this member paused it, the next offset to fetch, what was last
committed, and how many fetched messages and bytes are not done yet. :meth:`forget` is the one
way state leaves: on revocation, after abandoning work, and at shutdown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from consumer.engine.offsets import PartitionOffsets


@dataclass(eq=False)
class PartitionState:
    """One owned partition (compared by identity: a forgotten state is never the current one)."""

    tp: TopicPartition
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    #: The next offset to fetch (after the last one fetched); None before the first fetch.
    next_offset: int | None = None
    #: What the broker last acknowledged for this member's commits.
    committed: int | None = None
    #: The first offset fetched under this state: the group's committed position when this
    #: member took the partition (the lag's base until this member commits).
    start: int | None = None
    paused: bool = False
    #: Fetched and not yet done: messages and their bytes (for backpressure).
    pending_bytes: int = 0


class PartitionRegistry:
    """The owned partitions' state."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionState] = {}
        self._pending_bytes = 0

    def state(self, tp: TopicPartition) -> PartitionState:
        """The state of ``tp``, created on first use."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionState(tp)
        return part

    def fetched(self, tp: TopicPartition, offset: int, size: int) -> PartitionState:
        """Register one fetched message; returns the state to mark it done on."""
        part = self.state(tp)
        if part.start is None:
            part.start = offset
        part.offsets.add(offset)
        part.next_offset = offset + 1
        part.pending_bytes += size
        self._pending_bytes += size
        return part

    def done(self, part: PartitionState, offset: int, size: int) -> None:
        """Mark one message finished (written and its outcome acknowledged).

        ``part`` is the state the message was fetched under: when its partition was forgotten
        meanwhile (revoked, or abandoned and re-read), marking the old state changes nothing
        that is still in use.
        """
        part.offsets.done(offset)
        part.pending_bytes -= size
        if self._parts.get(part.tp) is part:
            self._pending_bytes -= size

    def first_pending(self, tp: TopicPartition) -> int | None:
        """The first fetched offset not yet done (where a re-read must start), or None."""
        part = self._parts.get(tp)
        return part.offsets.first_pending() if part is not None else None

    def to_commit(self, owned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Owned partitions whose done prefix moved past what was last committed."""
        out: dict[TopicPartition, int] = {}
        for tp, part in self._parts.items():
            pos = part.offsets.committable()
            if tp in owned and pos is not None and part.committed != pos:
                out[tp] = pos
        return out

    def committed(self, positions: dict[TopicPartition, int]) -> None:
        """Record positions the broker acknowledged."""
        for tp, pos in positions.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = pos

    def lag(self, tp: TopicPartition, highwater: int | None) -> int | None:
        """Messages between the committed offset and the high watermark.

        Fetched-but-unfinished messages count (they are not done until committed). Before
        this member's first commit of the partition, the base is where its fetching started
        (the group's committed position at assignment). None while neither is known.
        """
        part = self._parts.get(tp)
        if part is None or highwater is None:
            return None
        base = part.committed if part.committed is not None else part.start
        if base is None:
            return None
        return max(0, highwater - base)

    def unfetched(self, tp: TopicPartition, highwater: int | None) -> int:
        """Messages after the last one fetched, up to the high watermark (0 when unknown)."""
        part = self._parts.get(tp)
        if part is None or highwater is None or part.next_offset is None:
            return 0
        return max(0, highwater - part.next_offset)

    def paused(self) -> set[TopicPartition]:
        """Partitions this member paused."""
        return {tp for tp, part in self._parts.items() if part.paused}

    def in_flight(self) -> int:
        """Fetched messages not yet done, over all partitions."""
        return sum(p.offsets.in_flight for p in self._parts.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of fetched messages not yet done, over all partitions."""
        return self._pending_bytes

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions this member no longer owns (or must re-read)."""
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._pending_bytes -= part.pending_bytes
