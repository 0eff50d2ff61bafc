"""Kafka plumbing shared by the operator commands: group membership and group-less reading.

* :func:`group_member` joins a consumer group with the service's own assignment protocol,
  tells whether anybody else is in it, and leaves. ``replay`` uses it on the service's group,
  ``redrive`` on its own groups.
* :func:`make_reader` and the functions after it read a topic outside any group: its
  partitions, their bounds, the offsets at a time.

Live members are detected by joining the group once, briefly: this client offers the service's
assignor (``roundrobin``) under a wrapper that records the members when it leads the
rebalance. Leading and alone means nobody else is there; not leading means another member led
(a live one: a departed member does not take part in a rebalance); a member with another
assignment protocol makes the broker refuse the join (``InconsistentGroupProtocol``). The
group's own description is not used to decide: the embedded test broker keeps listing members
that left cleanly.

The latest offset of a partition is the high watermark of a fetch (``ListOffsets``'s answer
is wrong on the embedded broker, see README); when a fetch does not answer in time the bound is
reported unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import InconsistentGroupProtocolError, KafkaError

from consumer.errors import JoinTimeoutError, LiveMembersError, TimeLookupError
from consumer.kafka.clients import connection_options
from consumer.settings import Settings

#: Default wait for the group's assignment when joining (a live group rebalances first).
DEFAULT_JOIN_TIMEOUT = 60.0


# --- group membership ---------------------------------------------------------------------


class _RecordingAssignor(RoundRobinPartitionAssignor):  # type: ignore[misc]
    """The service's assignor, recording each rebalance this client takes part in.

    ``members_seen`` is the number of members when this client led the latest rebalance, None
    when another member led it; ``rounds`` counts the assignments received.
    """

    def __init__(self) -> None:
        self.members_seen: int | None = None
        self.rounds = 0

    def metadata(self, topics: Any) -> Any:  # called on every join
        self.members_seen = None
        return RoundRobinPartitionAssignor.metadata(topics)

    def assign(self, cluster: Any, members: Mapping[str, Any]) -> Any:
        self.members_seen = len(members)
        return RoundRobinPartitionAssignor.assign(cluster, members)

    def on_assignment(self, assignment: Any) -> None:
        self.rounds += 1
        RoundRobinPartitionAssignor.on_assignment(assignment)


@dataclass
class GroupMember:
    """This client as the group's only member, with every partition of the topic."""

    consumer: AIOKafkaConsumer
    group: str
    topic: str
    settings: Settings
    _assignor: _RecordingAssignor
    _round: int = 0

    async def check_alone(self) -> None:
        """Raise :class:`LiveMembersError` unless this client alone holds every partition.

        Leading the rebalance and seeing one member means nobody else is there; not leading
        means another member led it. A later rebalance (somebody joined since) is refused too.
        """
        seen = self._assignor.members_seen
        if self._round and self._assignor.rounds != self._round:
            raise LiveMembersError(self.group, None, "a member joined while this command ran")
        self._round = self._assignor.rounds
        if seen is None:
            count = await _described_members(self.settings, self.group, exclude_self=True)
            raise LiveMembersError(self.group, count)
        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        everything = {TopicPartition(self.topic, p) for p in partitions}
        if seen > 1 or not everything or not everything <= set(self.consumer.assignment()):
            raise LiveMembersError(self.group, max(seen - 1, 1))

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``partition -> offset`` for the group.

        Checked once more just before, and fenced by this member's generation: a member that
        joined in between makes it fail rather than race it.
        """
        if offsets:
            await self.check_alone()
            await self.consumer.commit(
                {TopicPartition(self.topic, p): o for p, o in offsets.items()}
            )

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offsets."""
        return {p: await self.consumer.committed(TopicPartition(self.topic, p)) for p in partitions}


@contextlib.asynccontextmanager
async def group_member(
    settings: Settings, group: str, topic: str, *, timeout: float = DEFAULT_JOIN_TIMEOUT
) -> AsyncIterator[GroupMember]:
    """Join ``group`` on ``topic`` as its only member; leave cleanly on exit.

    Raises :class:`LiveMembersError` (after leaving) when anybody else is in the group, and
    :class:`JoinTimeoutError` when no assignment came within ``timeout`` seconds.
    """
    assignor = _RecordingAssignor()
    consumer = AIOKafkaConsumer(
        topic,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        partition_assignment_strategy=(assignor,),
        **connection_options(settings),
    )
    try:
        try:
            await asyncio.wait_for(consumer.start(), timeout)
        except InconsistentGroupProtocolError as exc:
            count = await _described_members(settings, group, exclude_self=False)
            raise LiveMembersError(
                group, count, "their assignment protocol is not this service's"
            ) from exc
        except TimeoutError as exc:
            raise JoinTimeoutError(
                f"group {group} gave no assignment within {timeout:g} s; is it rebalancing "
                "with live members?"
            ) from exc
        consumer.pause(*consumer.assignment())  # this member never reads
        member = GroupMember(consumer, group, topic, settings, assignor)
        await member.check_alone()
        yield member
    finally:
        await consumer.stop()


async def _described_members(settings: Settings, group: str, *, exclude_self: bool) -> int | None:
    """How many members the broker lists for ``group`` (None when it cannot say).

    Only used to word a refusal: the decision itself comes from the join.
    """
    admin = AIOKafkaAdminClient(request_timeout_ms=5000, **connection_options(settings))
    try:
        await admin.start()
        answers = await asyncio.wait_for(admin.describe_consumer_groups([group]), 10)
        count = sum(len(g[5]) for answer in answers for g in answer.groups)
    except (KafkaError, OSError, TimeoutError, IndexError, TypeError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    count -= 1 if exclude_self else 0
    return count if count > 0 else None


# --- reading the topic (no group) ---------------------------------------------------------


def make_reader(settings: Settings) -> AIOKafkaConsumer:
    """A consumer outside any group, for bounds, time lookups and reading."""
    return AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        isolation_level="read_committed",
        **connection_options(settings),
    )


async def topic_partitions(reader: AIOKafkaConsumer, topic: str) -> list[int] | None:
    """The topic's partitions (None when the topic does not exist)."""
    await reader.topics()  # refreshes the metadata
    found = reader.partitions_for_topic(topic)
    return sorted(found) if found else None


@dataclass(frozen=True)
class Bounds:
    """Earliest and latest offsets of some partitions, and how latest was found."""

    earliest: dict[int, int]
    latest: dict[int, int | None]
    #: Partitions where the broker's ListOffsets(latest) disagreed with the high watermark.
    listed_disagrees: dict[int, int]


async def read_bounds(
    reader: AIOKafkaConsumer, topic: str, partitions: Sequence[int], timeout: float
) -> Bounds:
    """Earliest offsets from ListOffsets, latest ones from fetch high watermarks.

    Each partition is fetched from just below what ListOffsets calls latest (exact on Apache
    Kafka, at or below the real end on the embedded broker), so each fetch is small.
    """
    tps = [TopicPartition(topic, p) for p in partitions]
    earliest = await reader.beginning_offsets(tps)
    listed = await reader.end_offsets(tps)
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, max(earliest[tp], listed[tp] - 1))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        waiting = [tp for tp in tps if reader.highwater(tp) is None]
        if not waiting:
            break
        await reader.getmany(*waiting, timeout_ms=100)
    latest: dict[int, int | None] = {tp.partition: reader.highwater(tp) for tp in tps}
    disagrees = {
        tp.partition: listed[tp]
        for tp in tps
        if latest[tp.partition] is not None and listed[tp] != latest[tp.partition]
    }
    return Bounds({tp.partition: earliest[tp] for tp in tps}, latest, disagrees)


async def offsets_at(
    reader: AIOKafkaConsumer,
    topic: str,
    partitions: Sequence[int],
    when: datetime,
    timeout: float,
) -> dict[int, int | None]:
    """Per partition, the first offset at or after ``when`` (None: no such message).

    Each answer is checked by reading the message it names: its timestamp must not be
    before ``when``. (For a time after the last message the embedded test broker answers
    offset 0, where Apache Kafka answers none.)
    """
    millis = int(when.timestamp() * 1000)
    tps = [TopicPartition(topic, p) for p in partitions]
    answers = await reader.offsets_for_times(dict.fromkeys(tps, millis))
    found: dict[int, int | None] = {}
    for tp in tps:
        answer = answers.get(tp)
        found[tp.partition] = None if answer is None else int(answer.offset)
    to_check = {TopicPartition(topic, p): o for p, o in found.items() if o is not None}
    if not to_check:
        return found
    reader.assign(list(to_check))
    for tp, offset in to_check.items():
        reader.seek(tp, offset)
    seen: dict[TopicPartition, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(seen) < len(to_check) and loop.time() < deadline:
        waiting = [tp for tp in to_check if tp not in seen]
        batches = await reader.getmany(*waiting, timeout_ms=100)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= to_check[tp] and tp not in seen:
                    seen[tp] = int(record.timestamp)
    for tp, offset in to_check.items():
        stamp = seen.get(tp)
        if stamp is None:
            raise TimeLookupError(
                f"could not read the message at offset {offset} of partition {tp.partition} "
                "that the broker's time index named"
            )
        if stamp < millis:
            at = datetime.fromtimestamp(stamp / 1000, UTC).isoformat()
            raise TimeLookupError(
                f"the broker's time index named offset {offset} of partition {tp.partition}, "
                f"but that message is from {at}, before the requested time: this broker cannot "
                "look offsets up by time (the embedded test broker cannot); nothing was changed"
            )
    return found
