"""In-order offset tracking: what may be committed when work finishes out of order.

Pure. With several batches in flight, a later batch can finish first. A partition's commit
position may only pass an offset when that offset and everything before it is done, so the
tracker keeps the offsets handed out in fetch order and advances over the done prefix.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets of one partition: registered in fetch order, marked done in any order."""

    __slots__ = ("_committable", "_done", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._committable: int | None = None

    def add(self, offset: int) -> None:
        """Register a fetched offset (offsets only grow; gaps are fine)."""
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} is not after {self._pending[-1]}")
        if self._committable is not None and offset < self._committable:
            raise ValueError(f"offset {offset} is before the committable {self._committable}")
        self._pending.append(offset)

    def done(self, offset: int) -> None:
        """Mark an offset finished (written and its outcome acknowledged)."""
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            first = pending.popleft()
            done.discard(first)
            self._committable = first + 1

    def first_pending(self) -> int | None:
        """The first registered offset not yet done (None when all are done)."""
        return self._pending[0] if self._pending else None

    def committable(self) -> int | None:
        """The offset to commit (the next one to read), or None when nothing is done yet."""
        return self._committable

    @property
    def in_flight(self) -> int:
        """How many registered offsets are not yet committable."""
        return len(self._pending)
