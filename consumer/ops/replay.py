"""``python -m consumer replay``: move the service's committed offsets while it is stopped.

Three parts:

* a pure planning function (:func:`plan_reset`): committed offsets, each partition's bounds and
  the operator's request in, one :class:`PlanLine` per partition out;
* group membership (:func:`group_member`), shared with ``redrive``: joins a consumer group with
  the service's own assignment protocol, tells whether anybody else is in it, and leaves;
* the Kafka I/O around them (:func:`replay`).

Live members are detected by joining the group once, briefly: this client offers the service's
assignor (``roundrobin``) under a wrapper that records the members when it leads the
rebalance. Leading and alone means nobody else is there; not leading means another member led
(a live one: a departed member does not take part in a rebalance); a member with another
assignment protocol makes the broker refuse the join (``InconsistentGroupProtocol``). The
group's own description is not used to decide: the embedded test broker keeps listing members
that left cleanly.

The latest offset of a partition is the high watermark of a fetch (``ListOffsets``'s answer
is wrong on the embedded broker, see README); when a fetch does not answer in time the bound is
reported unknown and offsets are clamped at the bottom only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import InconsistentGroupProtocolError, KafkaError

from consumer.errors import JoinTimeoutError, LiveMembersError, TimeLookupError, UsageError
from consumer.kafka.clients import connection_options
from consumer.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

#: Default wait for the group's assignment when joining (a live group rebalances first).
DEFAULT_JOIN_TIMEOUT = 60.0
#: How long fetches may take to report each partition's high watermark.
HIGHWATER_TIMEOUT = 15.0


# --- the request and the plan (pure) ---------------------------------------------------------


@dataclass(frozen=True)
class ToEarliest:
    """Every partition back to its earliest retained offset."""

    def describe(self) -> str:
        return "to the earliest offset"


@dataclass(frozen=True)
class ToOffset:
    """Every partition to one offset (clamped to the partition's bounds)."""

    offset: int

    def describe(self) -> str:
        return f"to offset {self.offset}"


@dataclass(frozen=True)
class ShiftBy:
    """Every partition's committed offset moved by ``delta`` (negative: back, to replay)."""

    delta: int

    def describe(self) -> str:
        return f"shifted by {self.delta:+d}"


@dataclass(frozen=True)
class ToDatetime:
    """Every partition to its first message at or after ``when``.

    ``found`` holds what the broker's time index answered per partition (``offsets_for_times``):
    an offset, or None when the partition has no message at or after ``when`` (then: latest).
    """

    when: datetime
    found: Mapping[int, int | None] = field(default_factory=dict)

    def describe(self) -> str:
        return f"to the first message at or after {self.when.isoformat()}"


Request = ToEarliest | ToOffset | ShiftBy | ToDatetime


@dataclass(frozen=True)
class PartitionOffsets:
    """What is known about one partition before the reset."""

    partition: int
    #: The group's committed offset; None when the group never committed one.
    committed: int | None
    #: First offset still in the log.
    earliest: int
    #: Offset after the last message (high watermark); None when it could not be read.
    latest: int | None


@dataclass(frozen=True)
class PlanLine:
    """One partition's part of the plan."""

    partition: int
    committed: int | None
    #: Offset to commit; None: the partition is left as it is.
    new: int | None
    note: str = ""
    earliest: int | None = None
    latest: int | None = None

    @property
    def change(self) -> int | None:
        """New minus committed (None when either is missing)."""
        if self.new is None or self.committed is None:
            return None
        return self.new - self.committed

    @property
    def changes(self) -> bool:
        """True when the partition's committed offset is to be written."""
        return self.new is not None and self.new != self.committed

    def render(self) -> str:
        committed = "none" if self.committed is None else str(self.committed)
        if self.new is None:
            text = f"partition {self.partition}: committed {committed}, unchanged"
        else:
            change = self.change
            diff = "new" if change is None else f"{change:+d}"
            text = f"partition {self.partition}: committed {committed} -> {self.new} ({diff})"
        if self.earliest is not None:
            latest = "?" if self.latest is None else str(self.latest)
            text += f" [log {self.earliest}..{latest}]"
        return f"{text}; {self.note}" if self.note else text


@dataclass(frozen=True)
class Plan:
    """The reset, partition by partition."""

    lines: tuple[PlanLine, ...]

    def offsets(self) -> dict[int, int]:
        """Partition -> offset to commit, for the partitions that change."""
        return {
            line.partition: line.new for line in self.lines if line.new is not None and line.changes
        }


def plan_reset(partitions: Sequence[PartitionOffsets], request: Request) -> Plan:
    """The new offset of each partition for ``request``, within [earliest, latest] where known.

    A partition whose latest offset is unknown is clamped at the bottom only (and says so).
    ``--shift-by`` leaves a partition without a committed offset alone: there is nothing to
    shift from. ``--to-datetime`` sends a partition with no message at or after the time to
    its latest offset (left alone when that is unknown).
    """
    lines: list[PlanLine] = []
    for part in sorted(partitions, key=lambda p: p.partition):
        notes: list[str] = []
        target: int | None
        if isinstance(request, ToEarliest):
            target = part.earliest
        elif isinstance(request, ToOffset):
            target = request.offset
        elif isinstance(request, ShiftBy):
            if part.committed is None:
                lines.append(
                    PlanLine(
                        part.partition,
                        None,
                        None,
                        "no committed offset to shift from (use --to-offset or --to-earliest)",
                        part.earliest,
                        part.latest,
                    )
                )
                continue
            target = part.committed + request.delta
        else:
            target = request.found.get(part.partition)
            if target is None:
                if part.latest is None:
                    lines.append(
                        PlanLine(
                            part.partition,
                            part.committed,
                            None,
                            "no message at or after the time, and the latest offset is unknown",
                            part.earliest,
                            part.latest,
                        )
                    )
                    continue
                target = part.latest
                notes.append("no message at or after the time: latest")
        new = target
        if new < part.earliest:
            new = part.earliest
            notes.append(f"clamped to earliest {part.earliest}")
        elif part.latest is not None and new > part.latest:
            new = part.latest
            notes.append(f"clamped to latest {part.latest}")
        if part.latest is None:
            notes.append("latest offset unknown: not clamped above")
        lines.append(
            PlanLine(
                part.partition, part.committed, new, "; ".join(notes), part.earliest, part.latest
            )
        )
    return Plan(tuple(lines))


def parse_when(text: str) -> datetime:
    """An ISO-8601 time for ``--to-datetime``; without a time zone it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time: {text!r} (example: 2026-11-20T09:00:00Z)"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


# --- group membership (shared with redrive) ------------------------------------------------


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


# --- the command -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """The command line of ``replay``."""

    request: Request
    topic: str
    group: str
    partitions: tuple[int, ...] = ()
    dry_run: bool = False
    join_timeout: float = DEFAULT_JOIN_TIMEOUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``replay``."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--to-earliest", action="store_true", help="back to the earliest retained message"
    )
    mode.add_argument(
        "--to-offset", type=_non_negative, metavar="N", help="to offset N in every partition"
    )
    mode.add_argument(
        "--to-datetime",
        type=parse_when,
        metavar="ISO",
        help="to the first message at or after this ISO-8601 time (no zone: UTC); a partition "
        "with no later message goes to its end. Needs the broker's time index (Apache Kafka)",
    )
    mode.add_argument(
        "--shift-by",
        type=int,
        metavar="N",
        help="move each committed offset by N (negative: back, to replay N messages)",
    )
    parser.add_argument(
        "--partition",
        type=_non_negative,
        action="append",
        metavar="P",
        help="only this partition (repeatable; default: every partition of the topic)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--topic", help="topic (default: KAFKA_INPUT_TOPIC)")
    parser.add_argument("--group", help="consumer group (default: KAFKA_GROUP_ID)")
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=DEFAULT_JOIN_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait for the group's assignment (default {DEFAULT_JOIN_TIMEOUT:g})",
    )


def options_from_args(args: argparse.Namespace, settings: Settings) -> ReplayOptions:
    """ReplayOptions from parsed arguments and the settings' defaults."""
    request: Request
    if args.to_earliest:
        request = ToEarliest()
    elif args.to_offset is not None:
        request = ToOffset(args.to_offset)
    elif args.to_datetime is not None:
        request = ToDatetime(args.to_datetime)
    else:
        request = ShiftBy(args.shift_by)
    return ReplayOptions(
        request=request,
        topic=args.topic or settings.kafka_input_topic,
        group=args.group or settings.kafka_group_id,
        partitions=tuple(sorted(set(args.partition or ()))),
        dry_run=args.dry_run,
        join_timeout=args.join_timeout,
    )


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``python -m consumer replay``; returns the exit code."""
    return asyncio.run(replay(settings, options_from_args(args, settings)))


async def replay(
    settings: Settings, options: ReplayOptions, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Plan the reset, refuse while the group has live members, commit unless a dry run."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return await _replay(settings, options, out)
    except LiveMembersError as exc:
        print(exc.refusal(), file=err)
        return EXIT_REFUSED
    except JoinTimeoutError as exc:
        print(f"refused: {exc}", file=err)
        return EXIT_REFUSED
    except UsageError as exc:
        print(f"replay: error: {exc}", file=err)
        return EXIT_USAGE
    except TimeLookupError as exc:
        print(f"replay: {exc}", file=err)
        return EXIT_FAILED
    except KafkaError as exc:
        print(f"replay failed, nothing changed: {exc!r}", file=err)
        return EXIT_FAILED


async def _replay(settings: Settings, options: ReplayOptions, out: TextIO) -> int:
    reader = make_reader(settings)
    try:
        await reader.start()
        existing = await topic_partitions(reader, options.topic)
        if existing is None:
            raise UsageError(f"topic {options.topic} does not exist")
        unknown = sorted(set(options.partitions) - set(existing))
        if unknown:
            raise UsageError(
                f"topic {options.topic} has no partition {', '.join(map(str, unknown))} "
                f"(it has {len(existing)})"
            )
        partitions = list(options.partitions or existing)
        bounds = await read_bounds(reader, options.topic, partitions, HIGHWATER_TIMEOUT)
        request = options.request
        if isinstance(request, ToDatetime):
            found = await offsets_at(
                reader, options.topic, partitions, request.when, HIGHWATER_TIMEOUT
            )
            request = ToDatetime(request.when, found)
    finally:
        await reader.stop()

    async with group_member(
        settings, options.group, options.topic, timeout=options.join_timeout
    ) as member:
        committed = await member.committed(partitions)
        plan = plan_reset(
            [
                PartitionOffsets(p, committed[p], bounds.earliest[p], bounds.latest[p])
                for p in partitions
            ],
            request,
        )
        print(
            f"replay {options.request.describe()}: group {options.group}, topic {options.topic}",
            file=out,
        )
        for line in plan.lines:
            print(line.render(), file=out)
        _print_latest_note(bounds, out)
        if options.dry_run:
            print("dry run: nothing changed", file=out)
            return EXIT_OK
        offsets = plan.offsets()
        if not offsets:
            print("nothing to change: no offset moves", file=out)
            return EXIT_OK
        await member.commit(offsets)
        print("committed", file=out)
        logger.info(
            "offsets reset",
            extra={"group": options.group, "topic": options.topic, "offsets": offsets},
        )
        return EXIT_OK


def _print_latest_note(bounds: Bounds, out: TextIO) -> None:
    unknown = sorted(p for p, v in bounds.latest.items() if v is None)
    print("latest offsets: high watermarks read with a fetch", file=out)
    if unknown:
        print(
            f"latest offset unknown for partition {', '.join(map(str, unknown))} (no fetch "
            "answer in time): clamped at the earliest offset only",
            file=out,
        )
    if bounds.listed_disagrees:
        listed = ", ".join(f"{p}: {o}" for p, o in sorted(bounds.listed_disagrees.items()))
        print(
            f"note: the broker's ListOffsets(latest) answered differently ({listed}); "
            "the high watermarks above are used",
            file=out,
        )


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value
