"""In-order offset tracking and the per-partition registry."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from consumer.engine.offsets import PartitionOffsets
from consumer.engine.partitions import PartitionRegistry

T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)


def test_offsets_commit_only_the_done_prefix() -> None:
    p = PartitionOffsets()
    for o in (10, 11, 12, 15):  # gaps are normal (compaction, markers)
        p.add(o)
    assert p.committable() is None
    assert p.first_pending() == 10
    p.done(12)
    p.done(11)
    assert p.committable() is None  # 10 is still in flight
    p.done(10)
    assert p.committable() == 13
    assert p.first_pending() == 15
    p.done(15)
    assert p.committable() == 16
    assert p.in_flight == 0
    assert p.first_pending() is None


def test_offsets_must_grow() -> None:
    p = PartitionOffsets()
    p.add(5)
    with pytest.raises(ValueError, match="not after"):
        p.add(5)


def test_registry_reports_moves_once_and_forgets() -> None:
    reg = PartitionRegistry()
    a0 = reg.fetched(T0, 0, 10)
    a1 = reg.fetched(T0, 1, 10)
    b = reg.fetched(T1, 7, 5)
    assert a0 is a1
    assert reg.pending_bytes == 25
    reg.done(a1, 1, 10)
    reg.done(b, 7, 5)
    owned = {T0, T1}
    assert reg.to_commit(owned) == {T1: 8}
    assert reg.to_commit({T0}) == {}  # only owned partitions are committed
    reg.committed({T1: 8})
    assert reg.to_commit(owned) == {}
    reg.done(a0, 0, 10)
    assert reg.to_commit(owned) == {T0: 2}
    assert reg.in_flight() == 0
    assert reg.pending_bytes == 0
    reg.forget([T0])
    assert reg.to_commit(owned) == {}
    assert reg.state(T0) is not a0


def test_done_on_a_forgotten_state_changes_nothing_in_use() -> None:
    reg = PartitionRegistry()
    old = reg.fetched(T0, 5, 10)
    reg.forget([T0])
    new = reg.fetched(T0, 5, 10)  # re-read after the partition was forgotten
    reg.done(old, 5, 10)  # the abandoned batch finishes late
    assert reg.first_pending(T0) == 5  # the re-read copy is still pending
    assert reg.pending_bytes == 10
    reg.done(new, 5, 10)
    assert reg.to_commit({T0}) == {T0: 6}


def test_lag_is_highwater_minus_committed_offset() -> None:
    reg = PartitionRegistry()
    assert reg.lag(T0, 100) is None  # nothing known yet
    part = reg.fetched(T0, 41, 1)
    reg.fetched(T0, 42, 1)
    # Not committed by this member yet: counted from where fetching started (the group's
    # committed position), so fetched-but-unfinished messages still count.
    assert reg.lag(T0, 100) == 59
    reg.done(part, 41, 1)
    assert reg.lag(T0, 100) == 59  # done is not committed
    reg.committed(reg.to_commit({T0}))
    assert reg.lag(T0, 100) == 58
    assert reg.lag(T0, None) is None
    assert reg.lag(T0, 10) == 0  # a stale high watermark never gives a negative lag
