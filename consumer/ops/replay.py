"""``python -m consumer replay``: move the service's committed offsets while it is stopped.

Two parts:

* a pure planning function (:func:`plan_reset`): committed offsets, each partition's bounds and
  the operator's request in, one :class:`PlanLine` per partition out;
* the command (:func:`replay`): reads the bounds, joins the group as its only member (refused
  while the service runs, see :mod:`consumer.ops.group`), prints the plan and commits it.

When a partition's latest offset cannot be read in time its offsets are clamped at the bottom
only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from consumer.errors import UsageError
from consumer.ops.command import EXIT_OK, run_command
from consumer.ops.group import (
    DEFAULT_JOIN_TIMEOUT,
    Bounds,
    group_member,
    make_reader,
    offsets_at,
    read_bounds,
    topic_partitions,
)
from consumer.settings import Settings

logger = logging.getLogger(__name__)

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
    return await run_command(
        "replay", _replay(settings, options, out or sys.stdout), err or sys.stderr
    )


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
