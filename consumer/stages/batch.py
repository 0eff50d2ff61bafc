"""Batch stage: what one lane gathers before a Salesforce round trip is worth making.

Pure, with an injected clock (like aiokafka's message accumulator). A lane holds a queue of
open batches. An item of a person already waiting in an open batch joins that batch, so while
Salesforce is slower than the input the events of one person merge into one pending write
(coalescing: a backlog costs calls per person, not per event). An item of a new person joins
the last batch while it has room. The head batch is ready when it holds ``max_people`` people
for some target (one full sObject Collections call), ``max_events`` items or ``max_bytes``
bytes, when a later batch exists (the head takes no new people any more), or when its oldest
item has waited ``linger`` seconds.

An item's time before it reached the lane (``waited``, its Kafka record's age when fetched)
counts against the linger while it is under half the linger: an event then waits at most
``linger`` from produce to dispatch, the broker's leg included. Older than that, the credit
shrinks back to nothing at one whole linger (a record that waited ``w`` then waits ``w`` more),
and a record older than the linger gets the whole linger from its arrival: a consumer
working through a backlog fills its batches rather than writing each poll as it comes, and
no age makes a batch suddenly shorter or longer (the credit is continuous in the age).

Order: a person is in at most one waiting batch at a time, except when that batch had no room
left, in which case later items go to a later batch. Batches are taken in queue order, so one
person's items are always handed out in arrival order. Items of revoked partitions can be
dropped (they are not committed, so their next owner reads them again).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Entry(Generic[K, T]):
    partition: K
    person: str | None
    targets: tuple[str, ...]
    item: T
    size: int


@dataclass(slots=True)
class _Open(Generic[K, T]):
    """One batch still in the queue (not yet taken)."""

    started: float
    entries: list[_Entry[K, T]] = field(default_factory=list)
    #: person -> targets this batch writes for them
    people: dict[str, set[str]] = field(default_factory=dict)
    per_target: Counter[str] = field(default_factory=Counter)
    size: int = 0

    def place(self, entry: _Entry[K, T]) -> None:
        self.entries.append(entry)
        self.size += entry.size
        if entry.person is not None:
            known = self.people.setdefault(entry.person, set())
            for target in entry.targets:
                if target not in known:
                    known.add(target)
                    self.per_target[target] += 1


class LaneBuffer(Generic[K, T]):
    """The open batches of one lane, ready to be taken in order."""

    def __init__(
        self,
        *,
        max_people: int,
        max_events: int,
        max_bytes: int,
        linger: float,
        clock: Callable[[], float],
    ) -> None:
        if max_people < 1 or max_events < 1 or max_bytes < 1 or linger < 0:
            raise ValueError("limits must be positive and linger not negative")
        self._max_people = max_people
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._linger = linger
        self._clock = clock
        self._queue: deque[_Open[K, T]] = deque()
        #: person -> the latest waiting batch that holds them
        self._where: dict[str, _Open[K, T]] = {}
        self._items = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._items

    @property
    def pending_bytes(self) -> int:
        """Bytes of every item waiting."""
        return self._bytes

    @property
    def batches(self) -> int:
        """How many batches are waiting."""
        return len(self._queue)

    def add(
        self,
        partition: K,
        person: str | None,
        targets: Collection[str],
        item: T,
        size: int,
        waited: float = 0.0,
    ) -> None:
        """Queue one item; ``person`` None for items that write nothing (joins the last batch).

        ``waited``: seconds since the item was produced (its Kafka record's age when fetched);
        counted against the linger as the module's doc says.
        """
        entry = _Entry(partition, person, tuple(targets), item, size)
        batch = self._where.get(person) if person is not None else None
        if batch is None or not self._fits(batch, entry):
            batch = self._queue[-1] if self._queue else None
            if batch is None or not self._fits(batch, entry):
                batch = _Open(self._clock())
                self._queue.append(batch)
        if 0.0 < waited < self._linger:
            credit = waited if waited <= self._linger / 2 else self._linger - waited
            since = self._clock() - credit
            if since < batch.started:
                batch.started = since
        batch.place(entry)
        if person is not None:
            self._where[person] = batch
        self._items += 1
        self._bytes += size

    def _fits(self, batch: _Open[K, T], entry: _Entry[K, T]) -> bool:
        if not batch.entries:
            return True
        if len(batch.entries) >= self._max_events or batch.size + entry.size > self._max_bytes:
            return False
        if entry.person is None:
            return True
        known = batch.people.get(entry.person)
        per_target = batch.per_target
        for target in entry.targets:
            if (known is None or target not in known) and per_target[target] >= self._max_people:
                return False
        return True

    def _full(self, batch: _Open[K, T]) -> bool:
        return (
            len(batch.entries) >= self._max_events
            or batch.size >= self._max_bytes
            or any(n >= self._max_people for n in batch.per_target.values())
        )

    def ready(self) -> bool:
        """Whether the head batch should be taken now."""
        if not self._queue:
            return False
        head = self._queue[0]
        return (
            len(self._queue) > 1 or self._full(head) or self._clock() - head.started >= self._linger
        )

    def time_to_ready(self) -> float | None:
        """Seconds until :meth:`ready` turns true by lingering (0 when ready), None if empty."""
        if not self._queue:
            return None
        if self.ready():
            return 0.0
        return max(0.0, self._queue[0].started + self._linger - self._clock())

    def take(self) -> list[tuple[K, T]]:
        """Remove and return the head batch's items, in arrival order."""
        if not self._queue:
            return []
        head = self._queue.popleft()
        for person in head.people:
            if self._where.get(person) is head:
                del self._where[person]
        self._items -= len(head.entries)
        self._bytes -= head.size
        return [(e.partition, e.item) for e in head.entries]

    def drop(self, partitions: Iterable[K]) -> list[T]:
        """Remove and return every waiting item of the given partitions."""
        gone = set(partitions)
        dropped: list[T] = []
        kept: deque[_Open[K, T]] = deque()
        for batch in self._queue:
            if not any(e.partition in gone for e in batch.entries):
                kept.append(batch)
                continue
            rebuilt: _Open[K, T] = _Open(batch.started)
            for entry in batch.entries:
                if entry.partition in gone:
                    dropped.append(entry.item)
                    self._items -= 1
                    self._bytes -= entry.size
                else:
                    rebuilt.place(entry)
            if rebuilt.entries:
                kept.append(rebuilt)
        self._queue = kept
        self._where = {p: b for b in self._queue for p in b.people}
        return dropped
