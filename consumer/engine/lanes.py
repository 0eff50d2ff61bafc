"""Sequencing of people: every person's writes go through one lane, in order.

A person (the email key) is routed to one of ``SYNC_CONCURRENCY`` lanes by a stable hash. A
lane writes one batch at a time, in the order its items arrived, and lanes never share a
person, so writes for one person are never reordered while the lanes run fully in parallel
however skewed the input (Confluent's Parallel Consumer calls this key ordering). Messages
that write nothing to Salesforce (rejected, ignored, nothing mapped) go through a lane of
their own that never waits for Salesforce.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import TopicPartition

from consumer.stages.batch import LaneBuffer

T = TypeVar("T")


def lane_of(person: str, lanes: int) -> int:
    """The lane of a person: a hash that is the same in every process and every release."""
    return zlib.crc32(person.encode("utf-8")) % lanes


@dataclass(eq=False)
class Lane(Generic[T]):
    """One lane: its waiting batches, the batch it is writing (at most one), and the end of
    the publishing of its latest batch (outcomes go out in the lane's order)."""

    index: int
    buffer: LaneBuffer[TopicPartition, T]
    task: asyncio.Task[Any] | None = None
    #: Set once the latest batch started by this lane has published (or ended otherwise).
    #: True once it published, False when it failed (nothing after it may publish).
    published: asyncio.Future[bool] | None = None

    @property
    def idle(self) -> bool:
        """True when no batch of this lane is being written to Salesforce."""
        return self.task is None


class Lanes(Generic[T]):
    """The person lanes plus the direct lane."""

    def __init__(
        self, count: int, make_buffer: Callable[[bool], LaneBuffer[TopicPartition, T]]
    ) -> None:
        if count < 1:
            raise ValueError("at least one lane")
        self._people = [Lane(i, make_buffer(False)) for i in range(count)]
        #: Messages that write nothing: no Salesforce call, no linger worth waiting for.
        self.direct = Lane(count, make_buffer(True))

    def route(self, person: str | None) -> Lane[T]:
        """The lane for a person's item (the direct lane when it writes nothing)."""
        if person is None:
            return self.direct
        return self._people[lane_of(person, len(self._people))]

    def __iter__(self) -> Iterator[Lane[T]]:
        yield self.direct
        yield from self._people

    def __getitem__(self, index: int) -> Lane[T]:
        return self.direct if index == len(self._people) else self._people[index]

    def buffered(self) -> int:
        """Items waiting in every lane."""
        return sum(len(lane.buffer) for lane in self)

    def drop(self, partitions: set[TopicPartition]) -> int:
        """Drop waiting items of these partitions from every lane; returns how many."""
        return sum(len(lane.buffer.drop(partitions)) for lane in self)
