"""Routing people to lanes: stable, and one lane per person."""

from __future__ import annotations

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from consumer.engine.lanes import Lanes, lane_of
from consumer.stages.batch import LaneBuffer


def make(direct: bool) -> LaneBuffer[TopicPartition, str]:
    return LaneBuffer(
        max_people=200, max_events=10, max_bytes=1000, linger=0 if direct else 1, clock=lambda: 0
    )


def test_lane_of_is_stable_across_processes() -> None:
    # crc32: the same in every process (unlike hash(), which is salted per process).
    assert lane_of("jane@example.com", 4) == lane_of("jane@example.com", 4)
    assert [lane_of(f"p{i}@x.com", 4) for i in range(8)] == [
        lane_of(f"p{i}@x.com", 4) for i in range(8)
    ]
    assert {lane_of(f"p{i}@x.com", 4) for i in range(100)} == {0, 1, 2, 3}


@given(st.lists(st.emails(), min_size=1, max_size=50), st.integers(1, 8))
def test_a_person_always_routes_to_the_same_person_lane(emails: list[str], count: int) -> None:
    lanes = Lanes(count, make)
    for email in emails:
        lane = lanes.route(email)
        assert lane is lanes.route(email)
        assert lane is not lanes.direct
        assert lanes[lane.index] is lane


def test_items_that_write_nothing_take_the_direct_lane() -> None:
    lanes = Lanes(2, make)
    assert lanes.route(None) is lanes.direct
    assert next(iter(lanes)) is lanes.direct
    lanes.direct.buffer.add(TopicPartition("t", 0), None, (), "x", 1)
    assert lanes.direct.buffer.ready()  # no linger: nothing to wait for
    assert lanes.buffered() == 1
    assert lanes.drop({TopicPartition("t", 0)}) == 1
