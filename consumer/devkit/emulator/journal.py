"""A time-stamped log of API calls and record writes, for benchmarks (off unless asked for).

:class:`~consumer.devkit.emulator.limits.Stats` counts; the journal says *when*: each query and
collections call with how many keys or records it carried and how many succeeded, and each
record written with the email it was written for. A benchmark reads it to compute records
written per second over time, records per call, and the delay from an event's production to
its write. Times are wall-clock seconds (``time.time``), comparable with Kafka record
timestamps taken by other processes on the same machine. An entry's time is when its answer
left: the emulator does its work at the start of a call's latency, so entries made inside
:meth:`Journal.answering` are held and stamped when it ends, after the latency's sleep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from consumer.devkit.emulator.errors import JsonObj

__all__ = ["CallEntry", "Journal", "WriteEntry"]

#: Entries of the call being handled, held until its answer leaves; one list per request.
#: An entry held: it is made with its time once the answer leaves, and kept in its list.
_Held = tuple[Callable[[float], Any], list[Any]]
_HELD: ContextVar[list[_Held] | None] = ContextVar("journal_held", default=None)


@dataclass(frozen=True, slots=True)
class CallEntry:
    """One query or collections call, when it was answered."""

    at: float
    kind: str  # query, create, update, upsert, delete
    sobject: str
    #: Records sent (writes) or filter values (queries: the emails of an ``IN``).
    sent: int
    #: Records that succeeded (writes) or rows returned (queries).
    ok: int


@dataclass(frozen=True, slots=True)
class WriteEntry:
    """One record created or updated."""

    at: float
    sobject: str
    action: str  # create | update
    record_id: str
    #: The record's Email (folded), else its external id value; None when it has neither.
    key: str | None


class Journal:
    """Calls and writes in the order they were answered; records nothing until enabled."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.enabled = False
        self._clock = clock
        self.calls: list[CallEntry] = []
        self.writes: list[WriteEntry] = []

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Within: entries are held, then stamped and kept when the block ends (the call's
        answer leaves), in the order they were made."""
        held: list[_Held] = []
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            now = self._clock()
            for make, into in held:
                into.append(make(now))

    def call(self, kind: str, sobject: str, sent: int, ok: int) -> None:
        """Note one call."""
        self._note(lambda at: CallEntry(at, kind, sobject, sent, ok), self.calls)

    def write(self, sobject: str, action: str, record_id: str, key: str | None) -> None:
        """Note one record written."""
        self._note(lambda at: WriteEntry(at, sobject, action, record_id, key), self.writes)

    def _note(self, make: Callable[[float], Any], into: list[Any]) -> None:
        if not self.enabled:
            return
        held = _HELD.get()
        if held is None:
            into.append(make(self._clock()))
        else:
            held.append((make, into))

    def clear(self) -> None:
        """Forget every entry."""
        self.calls.clear()
        self.writes.clear()

    def summary(self) -> list[JsonObj]:
        """Per (kind, sObject): calls, records (or filter values) sent, succeeded, largest call."""
        groups: dict[tuple[str, str], list[int]] = {}
        for entry in self.calls:
            row = groups.setdefault((entry.kind, entry.sobject), [0, 0, 0, 0])
            row[0] += 1
            row[1] += entry.sent
            row[2] += entry.ok
            row[3] = max(row[3], entry.sent)
        return [
            {"kind": k, "sobject": s, "calls": c, "sent": n, "ok": ok, "max_sent": top}
            for (k, s), (c, n, ok, top) in sorted(groups.items())
        ]

    def export(self, calls_from: int = 0, writes_from: int = 0) -> JsonObj:
        """Entries from the given positions on, as compact rows, and where the next read
        starts (so a reader can poll while a run goes on)."""
        calls = self.calls[max(0, calls_from) :]
        writes = self.writes[max(0, writes_from) :]
        return {
            "calls": [[e.at, e.kind, e.sobject, e.sent, e.ok] for e in calls],
            "writes": [[e.at, e.sobject, e.action, e.record_id, e.key] for e in writes],
            "next_calls": max(0, calls_from) + len(calls),
            "next_writes": max(0, writes_from) + len(writes),
        }
