"""Batch stage: gathers fetched messages until a batch is worth a Salesforce round trip.

Pure, with an injected clock (like aiokafka's message accumulator). A batch is ready when it
holds ``max_items`` messages or ``max_bytes`` bytes, or when its oldest message has waited
``linger`` seconds. Messages keep arrival order; pending messages of a partition can be dropped
when the partition is revoked (they are not committed, so the new owner reads them again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[str, int]


@dataclass(frozen=True)
class _Entry(Generic[T]):
    key: Key
    item: T
    size: int
    added: float


class BatchAccumulator(Generic[T]):
    """Collects items per partition and hands them out as batches."""

    def __init__(
        self, *, max_items: int, max_bytes: int, linger: float, clock: Callable[[], float]
    ) -> None:
        if max_items < 1 or max_bytes < 1 or linger < 0:
            raise ValueError("max_items and max_bytes must be positive, linger not negative")
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._linger = linger
        self._clock = clock
        self._entries: deque[_Entry[T]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_bytes(self) -> int:
        """Bytes of all items waiting."""
        return self._bytes

    def add(self, key: Key, item: T, size: int) -> None:
        """Queue one item read from partition ``key``."""
        self._entries.append(_Entry(key, item, size, self._clock()))
        self._bytes += size

    def ready(self) -> bool:
        """Whether a batch should be taken now."""
        if not self._entries:
            return False
        if len(self._entries) >= self._max_items or self._bytes >= self._max_bytes:
            return True
        return self._clock() - self._entries[0].added >= self._linger

    def time_to_ready(self) -> float | None:
        """Seconds until :meth:`ready` turns true by lingering, or None when empty."""
        if not self._entries:
            return None
        if self.ready():
            return 0.0
        return max(0.0, self._entries[0].added + self._linger - self._clock())

    def take(self) -> list[tuple[Key, T]]:
        """Remove and return the next batch (at most ``max_items`` items / ``max_bytes``)."""
        out: list[tuple[Key, T]] = []
        size = 0
        while self._entries and len(out) < self._max_items:
            entry = self._entries[0]
            if out and size + entry.size > self._max_bytes:
                break
            self._entries.popleft()
            out.append((entry.key, entry.item))
            size += entry.size
        self._bytes -= size
        return out

    def drop(self, keys: Iterable[Key]) -> list[T]:
        """Remove and return every waiting item of the given partitions."""
        gone = set(keys)
        kept: deque[_Entry[T]] = deque()
        dropped: list[T] = []
        for entry in self._entries:
            if entry.key in gone:
                dropped.append(entry.item)
                self._bytes -= entry.size
            else:
                kept.append(entry)
        self._entries = kept
        return dropped
