"""``python -m consumer redrive``: re-publish dead letters to the input topic after a fix.

What has been redriven is kept in consumer-group offsets, so that it works on any Kafka broker:

* the redrive group (``--group``, default ``<KAFKA_GROUP_ID>-redrive``) commits, per DLQ
  partition, the offset below which every message has been redriven (or was never to be);
* for each error class a run selected with ``--error-class``, the group ``<group>.<class>``
  commits the offset below which every message *of that class* has been redriven.

A run reads each DLQ partition from the redrive group's offset; a message is redriven when it is
selected (its class was asked for, or no class was given) and not already redriven (below its
class's offset). A message the filter skips stays pending: the redrive group's offset stops at
the first skipped message of each partition, so a later run (for that class, or without
``--error-class``) still finds it, while the class offsets keep the messages already redriven
from being published twice. Every message is thus re-published at most once per redrive group.

A dead letter the service had to send without its value (``x-dlq-value-omitted``) cannot be
redriven: when selected it is counted as not redrivable and passed.

Reading stops once the run has caught up: every partition read up to its high watermark, or no
record for ``--idle-seconds``. Publishes wait for all acknowledgements (acks=all) before
anything is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.errors import (
    LiveMembersError,
    RedriveCommitError,
    RedrivePublishError,
    UsageError,
)
from consumer.kafka.clients import connection_options, make_producer
from consumer.model.messages import (
    DLQ_HEADER_PREFIX,
    ERROR_CLASS_HEADER,
    FIRST_SEEN_HEADER,
    ORIGIN_HEADER,
    REDRIVEN_AT_HEADER,
    REDRIVEN_FROM_HEADER,
    VALUE_OMITTED_HEADER,
)
from consumer.ops.command import EXIT_OK, run_command
from consumer.ops.group import (
    DEFAULT_JOIN_TIMEOUT,
    GroupMember,
    group_member,
    make_reader,
    topic_partitions,
)
from consumer.settings import Settings

logger = logging.getLogger(__name__)

#: How a message without an error-class header is shown.
NO_CLASS = "(no class)"
DEFAULT_IDLE_SECONDS = 2.0
#: Wait for acknowledgements after this many sends (bounds memory on a large DLQ).
_ACK_CHUNK = 1000

#: redrive: publish it; skip: not selected, stays pending; done: an earlier run redrove it;
#: omitted: selected, but the DLQ holds no value to publish (counted as handled).
Decision = Literal["redrive", "skip", "done", "omitted"]


# --- pure parts ---------------------------------------------------------------------------


def value_omitted(headers: Iterable[tuple[str, bytes]]) -> bool:
    """True for a dead letter the service sent without its value (it cannot be redriven)."""
    return any(key.lower() == VALUE_OMITTED_HEADER for key, _ in headers)


def error_class(headers: Iterable[tuple[str, bytes]]) -> str:
    """The dead letter's ``x-dlq-error-class`` ("" when it has none)."""
    found = ""
    for key, value in headers:
        if key.lower() == ERROR_CLASS_HEADER:
            found = value.decode("utf-8", errors="replace")
    return found


def redriven_headers(
    headers: Iterable[tuple[str, bytes]], source: str, now: datetime
) -> list[tuple[str, bytes]]:
    """The headers of the re-published message.

    The original headers in their order, without the ``x-dlq-*`` ones except
    ``x-dlq-first-seen`` and ``x-dlq-origin`` (so a message that fails again keeps its
    first-seen time, and the service orders and dates it by its first read), without
    an earlier redrive's ``x-redriven-*``, plus ``x-redriven-at`` and ``x-redriven-from``
    (``topic/partition/offset`` in the DLQ).
    """
    kept = [(k, v) for k, v in headers if not _dropped(k)]
    kept.append((REDRIVEN_AT_HEADER, now.isoformat().encode()))
    kept.append((REDRIVEN_FROM_HEADER, source.encode()))
    return kept


def _dropped(key: str) -> bool:
    low = key.lower()
    if low in (REDRIVEN_AT_HEADER, REDRIVEN_FROM_HEADER):
        return True
    return low.startswith(DLQ_HEADER_PREFIX) and low not in (FIRST_SEEN_HEADER, ORIGIN_HEADER)


def class_group(group: str, cls: str) -> str:
    """The consumer group holding how far class ``cls`` has been redriven."""
    return f"{group}.{cls}"


@dataclass
class Ledger:
    """What earlier runs redrove: the redrive group's offsets and each class's offsets."""

    floor: dict[int, int]
    by_class: dict[str, dict[int, int]] = field(default_factory=dict)

    def done(self, cls: str, partition: int, offset: int) -> bool:
        """True when an earlier run redrove (or passed) this message."""
        below = max(self.floor.get(partition, 0), self.by_class.get(cls, {}).get(partition, 0))
        return offset < below


def decide(
    ledger: Ledger,
    selected: frozenset[str] | None,
    cls: str,
    partition: int,
    offset: int,
    *,
    omitted: bool = False,
) -> Decision:
    """Redrive a selected message not yet redriven; skip (keep pending) an unselected one.

    A selected dead letter without its value (``omitted``) cannot be redriven: it is counted
    and passed, so that it does not hold the other messages back.
    """
    if ledger.done(cls, partition, offset):
        return "done"
    if selected is None or cls in selected:
        return "omitted" if omitted else "redrive"
    return "skip"


@dataclass
class Progress:
    """One run's walk over the DLQ partitions."""

    start: dict[int, int]
    next_offset: dict[int, int] = field(default_factory=dict)
    first_pending: dict[int, int] = field(default_factory=dict)
    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for partition, offset in self.start.items():
            self.next_offset.setdefault(partition, offset)

    def record(self, partition: int, offset: int, cls: str, decision: Decision) -> None:
        """Note one message's decision (messages of a partition come in offset order)."""
        self.next_offset[partition] = offset + 1
        if decision == "skip":
            self.first_pending.setdefault(partition, offset)
        self.counts.setdefault(cls, Counter())[decision] += 1

    def total(self, decision: Decision) -> int:
        return sum(c[decision] for c in self.counts.values())

    def new_floor(self) -> dict[int, int]:
        """The redrive group's new offsets: each partition's first pending message, or its end."""
        return {p: self.first_pending.get(p, n) for p, n in self.next_offset.items()}

    def new_class_offsets(self, old: Mapping[int, int]) -> dict[int, int]:
        """A selected class's new offsets: everything of that class read so far is redriven."""
        return {p: max(old.get(p, 0), n) for p, n in self.next_offset.items()}


def changed(
    new: Mapping[int, int], old: Mapping[int, int | None], base: Mapping[int, int]
) -> dict[int, int]:
    """The partitions of ``new`` that differ from what is committed (``base`` when nothing is)."""
    out: dict[int, int] = {}
    for partition, offset in new.items():
        current = old.get(partition)
        if offset != (base.get(partition, 0) if current is None else current):
            out[partition] = offset
    return out


# --- the command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RedriveOptions:
    """The command line of ``redrive``."""

    group: str
    error_classes: frozenset[str] | None = None
    dry_run: bool = False
    limit: int | None = None
    idle_seconds: float = DEFAULT_IDLE_SECONDS
    join_timeout: float = DEFAULT_JOIN_TIMEOUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``redrive``."""
    parser.add_argument(
        "--error-class",
        action="append",
        type=_class_name,
        metavar="X",
        help="only dead letters whose x-dlq-error-class is X (repeatable). The others are "
        "skipped and stay pending for a later run (with their class, or without a filter); "
        "nothing is re-published twice by the same --group",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be redriven, by error class; publish and commit nothing",
    )
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="redrive at most N messages in this run"
    )
    parser.add_argument(
        "--group",
        help="the redrive consumer group (default: <KAFKA_GROUP_ID>-redrive); each class run "
        "with --error-class also keeps its progress in the group <group>.<class>",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=DEFAULT_IDLE_SECONDS,
        metavar="S",
        help="stop reading when no record came for S seconds (it also stops on reaching the "
        f"partitions' ends; default {DEFAULT_IDLE_SECONDS:g})",
    )
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=DEFAULT_JOIN_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait for the redrive groups' assignment (default {DEFAULT_JOIN_TIMEOUT:g})",
    )


def options_from_args(args: argparse.Namespace, settings: Settings) -> RedriveOptions:
    """RedriveOptions from parsed arguments and the settings' defaults."""
    return RedriveOptions(
        group=args.group or f"{settings.kafka_group_id}-redrive",
        error_classes=frozenset(args.error_class) if args.error_class else None,
        dry_run=args.dry_run,
        limit=args.limit,
        idle_seconds=args.idle_seconds,
        join_timeout=args.join_timeout,
    )


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``python -m consumer redrive``; returns the exit code."""
    return asyncio.run(redrive(settings, options_from_args(args, settings)))


async def redrive(
    settings: Settings,
    options: RedriveOptions,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Redrive, print the summary; returns the exit code."""
    return await run_command(
        "redrive", _redrive(settings, options, out or sys.stdout), err or sys.stderr
    )


async def _redrive(settings: Settings, options: RedriveOptions, out: TextIO) -> int:
    dlq, target = settings.kafka_dlq_topic, settings.kafka_input_topic
    selected = options.error_classes
    reader = make_reader(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(reader.stop)
        await reader.start()
        partitions = await topic_partitions(reader, dlq)
        if partitions is None:
            raise UsageError(f"the DLQ topic {dlq} does not exist")
        if await topic_partitions(reader, target) is None:
            raise UsageError(f"the input topic {target} does not exist")
        if dlq == target:
            raise UsageError(f"KAFKA_DLQ_TOPIC and KAFKA_INPUT_TOPIC are both {dlq}")
        members: dict[str, GroupMember] = {}
        if not options.dry_run:
            # Members of the redrive groups for the whole run: a second redrive running at the
            # same time is refused before it publishes anything.
            classes = sorted(class_group(options.group, c) for c in selected or ())
            groups = [options.group, *classes]
            members = await _join_all(stack, settings, groups, dlq, options.join_timeout)
        floor_committed = await _committed(settings, options.group, dlq, partitions)
        tps = [TopicPartition(dlq, p) for p in partitions]
        earliest = await reader.beginning_offsets(tps)
        start = {tp.partition: max(floor_committed[tp.partition] or 0, earliest[tp]) for tp in tps}
        ledger = Ledger(floor=dict(start))
        class_committed: dict[str, dict[int, int | None]] = {}

        async def load_class(cls: str) -> None:
            committed = await _committed(settings, class_group(options.group, cls), dlq, partitions)
            class_committed[cls] = committed
            ledger.by_class[cls] = {p: o for p, o in committed.items() if o is not None}

        for cls in sorted(selected or ()):
            await load_class(cls)

        progress = Progress(start=dict(start))
        producer = None
        if not options.dry_run:
            producer = make_producer(settings)
            await producer.start()
            stack.push_async_callback(producer.stop)
        reader.assign(tps)
        for tp in tps:
            reader.seek(tp, start[tp.partition])

        pending: list[asyncio.Future[Any]] = []
        redriven = 0
        limited = False
        loop = asyncio.get_running_loop()
        last_record = loop.time()
        last_keepalive = loop.time()
        now = datetime.now(UTC)
        while not limited:
            batches = await reader.getmany(timeout_ms=200)
            if batches:
                last_record = loop.time()
            for tp in sorted(batches):
                for record in batches[tp]:
                    if options.limit is not None and redriven >= options.limit:
                        limited = True
                        break
                    headers = list(record.headers or ())
                    cls = error_class(headers)
                    if cls not in ledger.by_class and cls not in class_committed:
                        await load_class(cls)
                    decision = decide(
                        ledger,
                        selected,
                        cls,
                        tp.partition,
                        record.offset,
                        omitted=value_omitted(headers),
                    )
                    if decision == "redrive":
                        redriven += 1
                        if producer is not None:
                            source = f"{tp.topic}/{tp.partition}/{record.offset}"
                            try:
                                sent = await producer.send(
                                    target,
                                    key=record.key,
                                    value=record.value,
                                    headers=redriven_headers(headers, source, now),
                                )
                            except KafkaError as exc:
                                raise RedrivePublishError(
                                    "publishing to the input topic failed"
                                ) from exc
                            pending.append(sent)
                    progress.record(tp.partition, record.offset, cls, decision)
                if limited:
                    break
            if len(pending) >= _ACK_CHUNK:
                await _acknowledged(pending)
            if loop.time() - last_keepalive > 1.0:
                for member in members.values():  # a member must poll to stay in its group
                    await member.consumer.getmany(timeout_ms=0)
                last_keepalive = loop.time()
            if (
                _caught_up(reader, tps, progress)
                or loop.time() - last_record >= options.idle_seconds
            ):
                break
        await _acknowledged(pending)

        _print_summary(options, dlq, target, progress, limited, out)
        if options.dry_run:
            print("dry run: nothing published, nothing committed", file=out)
            return EXIT_OK

        # Class offsets first: should the redrive group's commit then fail, the classes still
        # know what they redrove and the next run does not publish it again.
        commits: dict[str, dict[int, int]] = {}
        for cls in sorted(selected or ()):
            old = ledger.by_class.get(cls, {})
            new = changed(progress.new_class_offsets(old), class_committed[cls], {})
            if new:
                commits[class_group(options.group, cls)] = new
        floor = changed(progress.new_floor(), floor_committed, start)
        if floor:
            commits[options.group] = floor
        try:
            for group, offsets in commits.items():
                await members[group].commit(offsets)
        except (LiveMembersError, KafkaError) as exc:
            raise RedriveCommitError(progress.total("redrive")) from exc
        if commits:
            print(f"committed: {', '.join(sorted(commits))}", file=out)
        else:
            print("nothing to commit", file=out)
        logger.info(
            "redrive finished",
            extra={
                "group": options.group,
                "redriven": progress.total("redrive"),
                "skipped": progress.total("skip"),
            },
        )
        return EXIT_OK


async def _join_all(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    groups: Sequence[str],
    topic: str,
    timeout: float,
) -> dict[str, GroupMember]:
    """Join every group at once (a join can take seconds); leave them when the stack closes."""

    async def join(group: str) -> GroupMember:
        member: GroupMember = await stack.enter_async_context(
            group_member(settings, group, topic, timeout=timeout)
        )
        return member

    results = await asyncio.gather(*(join(g) for g in groups), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return {m.group: m for m in results if isinstance(m, GroupMember)}


async def _committed(
    settings: Settings, group: str, topic: str, partitions: Sequence[int]
) -> dict[int, int | None]:
    """A group's committed offsets, read without joining it."""
    consumer = AIOKafkaConsumer(
        group_id=group, enable_auto_commit=False, **connection_options(settings)
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


async def _acknowledged(pending: list[asyncio.Future[Any]]) -> None:
    if not pending:
        return
    try:
        await asyncio.gather(*pending)
    except KafkaError as exc:
        raise RedrivePublishError("publishing to the input topic failed") from exc
    finally:
        pending.clear()


def _caught_up(reader: AIOKafkaConsumer, tps: Sequence[TopicPartition], progress: Progress) -> bool:
    for tp in tps:
        end = reader.last_stable_offset(tp)
        if end is None:
            end = reader.highwater(tp)
        if end is None or progress.next_offset[tp.partition] < end:
            return False
    return True


def _print_summary(
    options: RedriveOptions, dlq: str, target: str, progress: Progress, limited: bool, out: TextIO
) -> None:
    which = (
        f"error class {', '.join(sorted(options.error_classes))}"
        if options.error_classes
        else "every error class"
    )
    print(f"redrive from {dlq} to {target}, group {options.group}, {which}", file=out)
    verb = "would redrive" if options.dry_run else "redriven"
    for cls in sorted(progress.counts):
        c = progress.counts[cls]
        extra = f", not redrivable {c['omitted']}" if c["omitted"] else ""
        print(
            f"{cls or NO_CLASS}: {verb} {c['redrive']}, skipped {c['skip']}, "
            f"already redriven {c['done']}{extra}",
            file=out,
        )
    omitted = progress.total("omitted")
    print(
        f"total: {verb} {progress.total('redrive')}, skipped {progress.total('skip')}, "
        f"already redriven {progress.total('done')}"
        + (f", not redrivable {omitted}" if omitted else ""),
        file=out,
    )
    if progress.total("skip"):
        print(
            "skipped messages stay pending in the DLQ: a later run with their --error-class, "
            "or without --error-class, redrives them",
            file=out,
        )
    if progress.total("omitted"):
        print(
            "not redrivable: dead letters sent without their value (x-dlq-value-omitted, too "
            "large for the DLQ); replay them from x-dlq-source-topic/partition/offset instead",
            file=out,
        )
    if limited:
        print(f"stopped at --limit {options.limit}: the rest is left for the next run", file=out)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {value}")
    return value


def _class_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an error class cannot be empty")
    return text.strip()
