"""The batch stage: a lane's open batches (injected clock), coalescing and readiness."""

from __future__ import annotations

import pytest

from consumer.stages.batch import LaneBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def buf(
    clock: Clock,
    *,
    max_people: int = 200,
    max_events: int = 3,
    max_bytes: int = 100,
    linger: float = 1.0,
) -> LaneBuffer[str, str]:
    return LaneBuffer(
        max_people=max_people,
        max_events=max_events,
        max_bytes=max_bytes,
        linger=linger,
        clock=clock,
    )


def add(b: LaneBuffer[str, str], item: str, person: str | None = None, size: int = 1) -> None:
    b.add("p0", person, {"Contact"} if person else set(), item, size)


def items(b: LaneBuffer[str, str]) -> list[str]:
    return [i for _, i in b.take()]


def test_batch_ready_by_count() -> None:
    clock = Clock()
    b = buf(clock)
    add(b, "a")
    add(b, "b")
    assert not b.ready()
    add(b, "c")
    assert b.ready()
    assert items(b) == ["a", "b", "c"]
    assert len(b) == 0
    assert b.pending_bytes == 0


def test_batch_ready_by_linger_and_time_to_ready() -> None:
    clock = Clock()
    b = buf(clock)
    assert b.time_to_ready() is None
    add(b, "a")
    assert b.time_to_ready() == pytest.approx(1.0)
    clock.now += 0.4
    assert b.time_to_ready() == pytest.approx(0.6)
    assert not b.ready()
    clock.now += 0.6
    assert b.ready()
    assert b.time_to_ready() == 0.0


def test_a_fresh_item_counts_its_time_since_produce_against_the_linger() -> None:
    # Fetched 0.3 s after it was produced: it waits 0.7 s more, so 1 s from produce.
    clock = Clock()
    b = buf(clock, max_events=10)
    b.add("p0", "a@x.com", {"Contact"}, "a", 1, waited=0.3)
    assert b.time_to_ready() == pytest.approx(0.7)
    # A later, fresher item of the same batch does not push the deadline back.
    clock.now += 0.1
    b.add("p0", "b@x.com", {"Contact"}, "b", 1, waited=0.05)
    assert b.time_to_ready() == pytest.approx(0.6)
    # One produced earlier than the first pulls it forward.
    b.add("p0", "c@x.com", {"Contact"}, "c", 1, waited=0.45)
    assert b.time_to_ready() == pytest.approx(0.55)
    clock.now += 0.55
    assert b.ready()
    assert items(b) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("waited", "left"),
    [(0.5, 0.5), (0.75, 0.75), (0.9, 0.9), (1.0, 1.0), (5.0, 1.0), (0.0, 1.0), (-2.0, 1.0)],
)
def test_the_credit_fades_for_older_items_and_a_backlog_gets_the_whole_linger(
    waited: float, left: float
) -> None:
    # Past half the linger an item waits as long again as it already had (no age where the
    # wait jumps); older than the linger (a backlog) it gets the whole linger to fill a batch;
    # a producer's clock ahead of ours (a negative age) never makes a batch wait longer.
    clock = Clock()
    b = buf(clock, max_events=10)
    b.add("p0", "a@x.com", {"Contact"}, "a", 1, waited=waited)
    assert b.time_to_ready() == pytest.approx(left)
    assert not b.ready()


def test_batch_ready_by_bytes_and_take_respects_byte_cap() -> None:
    clock = Clock()
    b = buf(clock, max_events=10, max_bytes=100)
    add(b, "a", size=60)
    assert not b.ready()
    add(b, "b", size=60)
    assert b.ready()
    assert items(b) == ["a"]
    assert items(b) == ["b"]


def test_take_is_capped_by_count() -> None:
    clock = Clock()
    b = buf(clock, max_events=2)
    for x in "abcde":
        add(b, x)
    assert items(b) == ["a", "b"]
    assert len(b) == 3


def test_a_batch_closes_at_max_people_for_a_target() -> None:
    clock = Clock()
    b = buf(clock, max_people=2, max_events=100)
    add(b, "a1", "a")
    add(b, "b1", "b")
    assert b.ready()  # two people for Contact: a full collection call
    add(b, "c1", "c")  # a third person opens the next batch
    assert b.batches == 2
    assert items(b) == ["a1", "b1"]
    assert items(b) == ["c1"]


def test_events_of_a_waiting_person_coalesce_into_their_batch() -> None:
    clock = Clock()
    b = buf(clock, max_people=2, max_events=100)
    add(b, "a1", "a")
    add(b, "b1", "b")
    add(b, "c1", "c")
    add(b, "a2", "a")  # joins a's batch, not the newest one
    add(b, "c2", "c")
    assert items(b) == ["a1", "b1", "a2"]
    assert items(b) == ["c1", "c2"]


def test_a_person_whose_batch_is_full_continues_in_a_later_batch_in_order() -> None:
    clock = Clock()
    b = buf(clock, max_people=10, max_events=2)
    add(b, "a1", "a")
    add(b, "a2", "a")
    add(b, "a3", "a")
    assert items(b) == ["a1", "a2"]
    assert items(b) == ["a3"]


def test_a_new_target_for_a_waiting_person_respects_max_people() -> None:
    clock = Clock()
    b = buf(clock, max_people=1, max_events=100)
    b.add("p0", "a", {"Contact"}, "a1", 1)
    b.add("p0", "b", {"Lead"}, "b1", 1)  # Lead still has room
    b.add("p0", "b", {"Contact"}, "b2", 1)  # Contact is full here: a later batch
    assert items(b) == ["a1", "b1"]
    assert items(b) == ["b2"]


def test_drop_removes_only_revoked_partitions() -> None:
    clock = Clock()
    b = buf(clock, max_events=10)
    b.add("p0", None, (), "a", 5)
    b.add("p1", None, (), "b", 7)
    b.add("p0", None, (), "c", 5)
    assert b.drop(["p0"]) == ["a", "c"]
    assert b.pending_bytes == 7
    assert len(b) == 1
    assert items(b) == ["b"]


def test_drop_keeps_people_where_they_are() -> None:
    clock = Clock()
    b = buf(clock, max_people=1, max_events=100)
    b.add("p0", "a", {"Contact"}, "a1", 1)
    b.add("p1", "b", {"Contact"}, "b1", 1)
    b.drop(["p0"])
    b.add("p1", "b", {"Contact"}, "b2", 1)
    assert items(b) == ["b1", "b2"]


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        LaneBuffer[str, str](max_people=1, max_events=0, max_bytes=1, linger=0, clock=Clock())
