"""Batch sizing (injected clock) and in-order offset tracking."""

from __future__ import annotations

import pytest

from consumer.engine.offsets import OffsetBook, PartitionOffsets
from consumer.stages.batch import BatchAccumulator


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def acc(clock: Clock, max_items: int = 3, max_bytes: int = 100, linger: float = 1.0):  # type: ignore[no-untyped-def]
    return BatchAccumulator[str](
        max_items=max_items, max_bytes=max_bytes, linger=linger, clock=clock
    )


def test_batch_ready_by_count() -> None:
    clock = Clock()
    a = acc(clock)
    a.add(("t", 0), "a", 1)
    a.add(("t", 0), "b", 1)
    assert not a.ready()
    a.add(("t", 1), "c", 1)
    assert a.ready()
    assert [i for _, i in a.take()] == ["a", "b", "c"]
    assert len(a) == 0
    assert a.pending_bytes == 0


def test_batch_ready_by_linger_and_time_to_ready() -> None:
    clock = Clock()
    a = acc(clock)
    assert a.time_to_ready() is None
    a.add(("t", 0), "a", 1)
    assert a.time_to_ready() == pytest.approx(1.0)
    clock.now += 0.4
    assert a.time_to_ready() == pytest.approx(0.6)
    assert not a.ready()
    clock.now += 0.6
    assert a.ready()
    assert a.time_to_ready() == 0.0


def test_batch_ready_by_bytes_and_take_respects_byte_cap() -> None:
    clock = Clock()
    a = acc(clock, max_items=10, max_bytes=100)
    a.add(("t", 0), "a", 60)
    assert not a.ready()
    a.add(("t", 0), "b", 60)
    assert a.ready()
    assert [i for _, i in a.take()] == ["a"]
    assert [i for _, i in a.take()] == ["b"]


def test_take_is_capped_by_count() -> None:
    clock = Clock()
    a = acc(clock, max_items=2)
    for x in "abcde":
        a.add(("t", 0), x, 1)
    assert [i for _, i in a.take()] == ["a", "b"]
    assert len(a) == 3


def test_drop_removes_only_revoked_partitions() -> None:
    clock = Clock()
    a = acc(clock, max_items=10)
    a.add(("t", 0), "a", 5)
    a.add(("t", 1), "b", 7)
    a.add(("t", 0), "c", 5)
    assert a.drop([("t", 0)]) == ["a", "c"]
    assert a.pending_bytes == 7
    assert [i for _, i in a.take()] == ["b"]


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        BatchAccumulator[str](max_items=0, max_bytes=1, linger=0, clock=Clock())


def test_offsets_commit_only_the_done_prefix() -> None:
    p = PartitionOffsets()
    for o in (10, 11, 12, 15):  # gaps are normal (compaction, markers)
        p.add(o)
    assert p.committable() is None
    p.done(12)
    p.done(11)
    assert p.committable() is None  # 10 is still in flight
    p.done(10)
    assert p.committable() == 13
    p.done(15)
    assert p.committable() == 16
    assert p.in_flight == 0


def test_offsets_must_grow() -> None:
    p = PartitionOffsets()
    p.add(5)
    with pytest.raises(ValueError, match="not after"):
        p.add(5)


def test_offset_book_reports_moves_once_and_forgets() -> None:
    book = OffsetBook()
    a = book.track(("t", 0))
    b = book.track(("t", 1))
    a.add(0)
    a.add(1)
    b.add(7)
    a.done(1)
    b.done(7)
    assert book.to_commit() == {("t", 1): 8}
    book.committed({("t", 1): 8})
    assert book.to_commit() == {}
    a.done(0)
    assert book.to_commit() == {("t", 0): 2}
    assert book.in_flight() == 0
    book.forget([("t", 0)])
    assert book.to_commit() == {}
    assert book.track(("t", 0)) is not a
