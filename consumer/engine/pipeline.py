"""The consume loop: fetch, route to lanes, write to Salesforce, publish, commit in order.

One task polls Kafka. Each fetched message is parsed and mapped at once (pure stages) and
routed to its person's lane (:mod:`consumer.engine.lanes`); each lane writes one batch at a
time, in its own task, so one person's writes are never reordered and the lanes run in
parallel. Three rules keep it from losing anything:

- an offset is marked done only after its batch's Salesforce writes and its outcome and
  dead-letter publishes are acknowledged, and a partition commits only its done prefix
  (:class:`~consumer.engine.partitions.PartitionRegistry`);
- when work piles up or writing is paused (:class:`~consumer.engine.gate.WriteGate`),
  partitions are paused and polling goes on, so the member stays in its group however long
  Salesforce takes;
- a batch task that fails unexpectedly stops the service: in-flight batches finish, the done
  prefix is committed, and the process exits non-zero to be restarted, instead of leaving the
  partition's offsets pending forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumer.engine.gate import Verdict, WriteGate
from consumer.engine.health import Health
from consumer.engine.lanes import Lane, Lanes
from consumer.engine.partitions import PartitionRegistry, PartitionState
from consumer.engine.ports import ChoicesLogPort, ConsumerPort
from consumer.engine.publisher import Publisher
from consumer.engine.recent import RecentChoices
from consumer.errors import RetryBudgetExhaustedError
from consumer.mapping import TargetPlan
from consumer.model.changes import (
    Accepted,
    FieldValues,
    ParseResult,
    PersonResult,
    PersonWrite,
    Sourced,
    epoch_ms,
)
from consumer.model.held import HeldChoices
from consumer.model.messages import InputMessage
from consumer.model.outcomes import SalesforceErrorInfo
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from consumer.stages.batch import LaneBuffer
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from consumer.stages.parse import ParseRules, parse_message
from consumer.stages.report import assemble
from consumer.stop import sleep_unless_stopped
from consumer.tasks import gather_or_cancel

logger = logging.getLogger(__name__)

#: Records a collection call takes: a lane's batch closes at this many people for a target.
COLLECTION_PEOPLE = 200


class Writer(Protocol):
    """What the engine needs of a target writer (``salesforce.writer.TargetWriter``)."""

    @property
    def sobject(self) -> str: ...

    async def write(
        self,
        people: Sequence[PersonWrite],
        done: dict[str, PersonResult] | None = None,
        *,
        backlog: bool = False,
        writers: int | None = None,
        held: HeldChoices | None = None,
    ) -> dict[str, PersonResult]: ...


@dataclass(frozen=True)
class EngineConfig:
    """The settings the engine reads."""

    concurrency: int = 4
    batch_max_people: int = COLLECTION_PEOPLE
    batch_max_events: int = 10_000
    batch_max_bytes: int = 8 * 1024 * 1024
    linger_seconds: float = 0.5
    fetch_max_records: int = 1_000
    commit_interval_seconds: float = 1.0
    shutdown_timeout_seconds: float = 20.0
    rebalance_timeout_seconds: float = 10.0
    #: Longest a commit may take: aiokafka retries a coordinator it cannot reach for ever,
    #: and neither the poll loop nor a shutdown may hang on it (a timed-out commit counts as
    #: failed; the next one commits the same offsets or more).
    commit_timeout_seconds: float = 10.0
    max_pending_events: int = 20_000
    max_pending_bytes: int = 64 * 1024 * 1024
    #: Messages not yet done (not fetched yet, plus held) from which writers are told the
    #: service is behind.
    backlog_messages: int = 5_000
    #: Per person, the choices of finished batches are kept this long, for this many people
    #: (engine.recent); 0 keeps none.
    recent_choices_seconds: float = 3_600.0
    recent_choices_people: int = 100_000
    #: How long an assignment waits for the choices topic to be read back (then goes on
    #: with what was read).
    choices_restore_seconds: float = 60.0

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        """The engine's part of the settings."""
        return cls(
            concurrency=s.sync_concurrency,
            batch_max_events=s.sync_batch_max_events,
            batch_max_bytes=s.sync_batch_max_bytes,
            linger_seconds=s.sync_batch_linger_ms / 1000,
            fetch_max_records=s.kafka_fetch_max_records,
            commit_interval_seconds=s.sync_commit_interval_ms / 1000,
            shutdown_timeout_seconds=s.sync_shutdown_timeout_seconds,
            rebalance_timeout_seconds=s.sync_rebalance_timeout_seconds,
            max_pending_events=s.sync_max_pending_events,
            max_pending_bytes=s.sync_max_pending_bytes,
            backlog_messages=s.salesforce_composite_backlog,
            recent_choices_seconds=s.sync_recent_choices_seconds,
            recent_choices_people=s.sync_recent_choices_people,
            choices_restore_seconds=s.kafka_choices_restore_seconds,
        )


@dataclass(slots=True)
class Fetched:
    """One fetched message and what the poll loop learned from it."""

    part: PartitionState
    message: InputMessage
    parsed: ParseResult
    #: What it writes, by sObject (empty when nothing).
    fields: Mapping[str, FieldValues]
    #: Bytes of key and value (``message.size``, read once).
    size: int


class LaneBroken(Exception):
    """A batch's lane had an earlier batch fail: it does not publish (the service stops)."""

    def __init__(self, lane: int) -> None:
        super().__init__(f"lane {lane}: an earlier batch failed; not publishing after it")


@dataclass(eq=False)
class Batch:
    """Messages of one lane written together."""

    seq: int
    lane: int
    items: list[Fetched]
    started: float
    partitions: set[TopicPartition] = field(default_factory=set)


#: Records taken in between two yields to the event loop (see ``Pipeline._poll_once``).
INTAKE_CHUNK = 25
#: The least time the drain's last commit gets, however late the drain ended.
DRAIN_COMMIT_SECONDS = 2.0


class Pipeline:
    """Runs the sync until a stop is requested (or a batch fails), then drains and commits."""

    def __init__(
        self,
        config: EngineConfig,
        rules: ParseRules,
        plans: Sequence[TargetPlan],
        writers: Sequence[Writer],
        consumer: ConsumerPort,
        publisher: Publisher,
        gate: WriteGate,
        metrics: Metrics,
        health: Health,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        choices: ChoicesLogPort | None = None,
    ) -> None:
        self._cfg = config
        self._rules = rules
        self._plans = list(plans)
        self._writers = list(writers)
        self._consumer = consumer
        self._publisher = publisher
        self._gate = gate
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wall = wall
        self._parts = PartitionRegistry()
        #: What finished batches chose, per person: gates a late grant where no record holds
        #: the newer choice (only targets with a sync state are gated).
        self._recent = RecentChoices(
            {p.sobject: p.mapping.choice_keys() for p in self._plans},
            seconds=config.recent_choices_seconds
            if any(p.mapping.sync_state_field for p in self._plans)
            else 0,
            people=config.recent_choices_people,
            clock=clock,
        )
        #: Where the remembered choices are kept across restarts and replicas (None: in
        #: this process only), and per partition the offset to read it from next.
        self._choices = choices if self._recent.enabled else None
        self._choices_read: dict[int, int] = {}
        #: Assigned partitions held paused until the choices topic is read back, and the task
        #: reading it (outside the rebalance listener: aiokafka sends no heartbeat while a
        #: listener runs, and hands out the new partitions' records before it calls it).
        self._restoring: set[TopicPartition] = set()
        #: The stop ``run`` was given: a commit in the poll loop gives way to it.
        self._stop: asyncio.Event | None = None
        self._restore_task: asyncio.Task[None] | None = None
        self._lanes: Lanes[Fetched] = Lanes(config.concurrency, self._make_buffer)
        self._inflight: dict[asyncio.Task[None], Batch] = {}
        self._seq = 0
        self._commit_lock = asyncio.Lock()
        #: Held while a poll is taken in (it yields between chunks) and while partitions are
        #: revoked: a rebalance never sees a poll half taken in.
        self._intake = asyncio.Lock()
        #: Partitions are being revoked: no batch starts (the settling counts the batches).
        self._revoking = False
        self._last_commit = 0.0
        #: Messages of the assigned partitions not fetched yet, at the last poll.
        self._unfetched = 0
        #: Dispatch lanes whatever their linger (shutdown: write what was fetched).
        self._flushing = False
        #: Start no batch any more (the end of shutdown).
        self._closed = False
        #: The first unexpected error of a batch task; the loop stops when it is set.
        self.failure: BaseException | None = None

    def _make_buffer(self, direct: bool) -> LaneBuffer[TopicPartition, Fetched]:
        c = self._cfg
        return LaneBuffer(
            max_people=c.batch_max_people,
            max_events=c.batch_max_events,
            max_bytes=c.batch_max_bytes,
            linger=0.0 if direct else c.linger_seconds,
            clock=self._clock,
        )

    @property
    def gate(self) -> WriteGate:
        """The write gate (its pause state is what health and tests look at)."""
        return self._gate

    # --- the loop ------------------------------------------------------------------------

    def listener(self) -> ConsumerRebalanceListener:
        """The rebalance listener to subscribe with."""
        return _Listener(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and dispatch until ``stop`` is set or a batch failed; then drain and commit.

        After it returns, :attr:`failure` says whether the service must exit non-zero.
        """
        self._stop = stop
        try:
            while not stop.is_set() and self.failure is None:
                try:
                    await self._poll_once()
                except KafkaError as exc:
                    # The client reconnects by itself; keep the loop (and health) alive.
                    logger.error("polling failed; retrying", extra={"error": repr(exc)})
                    await sleep_unless_stopped(stop, 1.0)
                except Exception as exc:
                    self._fail(exc, "the poll loop failed unexpectedly")
        finally:
            await self._drain()

    async def _poll_once(self) -> None:
        self._backpressure()
        records = await self._consumer.getmany(
            timeout_ms=int(self._poll_timeout() * 1000), max_records=self._cfg.fetch_max_records
        )
        now = self._clock()
        self._health.polled(
            now, pending=self._parts.in_flight() > 0, paused=self._gate.deliberate()
        )
        # Taking in a poll costs about 40 µs a record: every INTAKE_CHUNK records the loop
        # lets batch tasks run and Salesforce answers be read (a poll of 1,000 stalled it for
        # 40-180 ms; with chunks of 100 every answer still waited up to 4-8 ms, and calls
        # took 118-122 ms against 100 at (c); 107-113 with 25). A person lane freed
        # meanwhile starts its next batch (see _dispatch_ready). A rebalance waits for the
        # whole poll (on_revoked takes the same lock): a poll is never half registered when
        # its partitions are settled.
        async with self._intake:
            taken = 0
            fetched_ms = self._wall().timestamp() * 1000
            for tp, messages in records.items():
                for record in messages:
                    self._take_in(tp, record, fetched_ms)
                    taken += 1
                    if taken % INTAKE_CHUNK == 0:
                        await asyncio.sleep(0)
                self._metrics.messages_consumed.labels(tp.topic).inc(len(messages))
        self._update_lag()
        self._dispatch_ready()
        if now - self._last_commit >= self._cfg.commit_interval_seconds:
            await self.commit(stop=self._stop)
        # getmany() returns at once while the client holds fetched records: each poll yields
        # at least once, so a backlog is never taken in poll after poll with nothing between.
        await asyncio.sleep(0)

    def _poll_timeout(self) -> float:
        busy = bool(self._inflight) or self._lanes.buffered() > 0
        timeout = 0.05 if busy else 0.5
        for lane in self._lanes:
            if lane.idle:
                wait = lane.buffer.time_to_ready()
                if wait is not None:
                    # A batch starts within a millisecond of its linger's end (a 5 ms floor
                    # cost (e) a few ms at the tail), without spinning on a deadline.
                    timeout = min(timeout, max(wait, 0.001))
        return timeout

    def _take_in(self, tp: TopicPartition, record: Any, fetched_ms: float) -> None:
        """Parse, map and route one fetched record (pure stages, no I/O); ``fetched_ms`` is
        the wall clock at the poll, against which the record's age counts in its linger."""
        message = InputMessage(
            tp.topic,
            tp.partition,
            record.offset,
            record.key,
            record.value,
            tuple(record.headers or ()),
            record.timestamp,
        )
        # A redriven message is judged and dated by its first read (model.messages.Origin).
        record_ms = message.origin().timestamp_ms if message.headers else message.timestamp_ms
        parsed = parse_message(message.value, self._rules, record_ms)
        fields: Mapping[str, FieldValues] = {}
        person = None
        if isinstance(parsed, Accepted):
            change = parsed.change
            fields = map_change(change, self._plans)
            if fields:
                person = change.email_key
            # Mapped: the parsed purposes are not needed any more, and a backlog holds many.
            parsed = Accepted(change.mapped())
        size = message.size
        part = self._parts.fetched(tp, message.offset, size)
        # The record's age: under linger, it counts against the linger (see stages/batch).
        stamp = record.timestamp
        waited = (fetched_ms - stamp) / 1000 if stamp is not None and stamp > 0 else 0.0
        self._lanes.route(person).buffer.add(
            tp, person, fields.keys(), Fetched(part, message, parsed, fields, size), size, waited
        )

    def _backpressure(self) -> None:
        """Pause every assigned partition while fetched-but-unfinished work passes its bounds
        or writing to Salesforce is paused; resume when it drains. Polling goes on, so the
        group membership is kept however long it lasts."""
        c = self._cfg
        full = (
            self._parts.in_flight() >= c.max_pending_events
            or self._parts.pending_bytes >= c.max_pending_bytes
            or self._gate.holding()
        )
        assigned = self._consumer.assignment()
        paused = self._parts.paused()
        if full:
            fresh = assigned - paused
            if fresh:
                self._consumer.pause(*fresh)
                for tp in fresh:
                    self._parts.state(tp).paused = True
        elif paused:
            resume = (paused & assigned) - self._restoring
            if resume:
                self._consumer.resume(*resume)
            for tp in paused:
                self._parts.state(tp).paused = False

    def _update_lag(self) -> None:
        unfetched = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            lag = self._parts.lag(tp, highwater)
            if lag is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            unfetched += self._parts.unfetched(tp, highwater)
        self._unfetched = unfetched

    def _behind(self) -> bool:
        """Whether the service is working through a backlog: messages not fetched yet plus
        those it holds reach ``backlog_messages`` (then latency is lost anyway and the org's
        API calls are what to save)."""
        return self._unfetched + self._parts.in_flight() >= self._cfg.backlog_messages

    # --- batches -------------------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        """Start the next batch of every idle lane that has one ready (but the direct lane's
        while a poll is taken in, and none during a revocation)."""
        if self.failure is not None or self._closed or self._revoking:
            return  # (a revocation: the poll loop dispatches next)
        # At shutdown a lane writes what it holds; otherwise a batch waits to be full (or its
        # linger): under a backlog the next batch fills as soon as fetching resumes.
        flush = self._flushing
        # A person lane freed while a poll is taken in starts its next batch at once (waiting
        # for the poll's end left it idle for 40-130 ms under a backlog); its batch holds what
        # the lane had so far, in order. The direct lane waits for the end of the poll: its
        # batches cost no call, and cut in pieces they would only cost publishes.
        taking_in = self._intake.locked()
        for lane in self._lanes:
            if not lane.idle or (taking_in and lane is self._lanes.direct):
                continue
            if len(lane.buffer) > 0 if flush else lane.buffer.ready():
                self._start(lane)

    def _start(self, lane: Lane[Fetched]) -> None:
        taken = lane.buffer.take()
        self._seq += 1
        batch = Batch(
            self._seq,
            lane.index,
            [item for _, item in taken],
            self._clock(),
            {tp for tp, _ in taken},
        )
        self._metrics.batch_events.observe(len(batch.items))
        before = lane.published
        published: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        lane.published = published
        task = asyncio.create_task(
            self._run_batch(batch, before, published), name=f"batch-{batch.seq}"
        )
        lane.task = task
        self._inflight[task] = batch
        self._metrics.batches_in_flight.set(len(self._inflight))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        batch = self._inflight.pop(task)
        lane = self._lanes[batch.lane]
        if lane.task is task:
            lane.task = None
        self._metrics.batches_in_flight.set(len(self._inflight))
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc, "a batch failed unexpectedly")
            return
        self._dispatch_ready()

    def _fail(self, exc: BaseException, what: str) -> None:
        """Stop the service because of ``exc`` (logged once, with its traceback)."""
        if self.failure is None:
            self.failure = exc
            logger.critical(
                "%s; stopping: what is done is committed, the rest is re-read after the restart",
                what,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    async def _run_batch(
        self,
        batch: Batch,
        before: asyncio.Future[bool] | None,
        published: asyncio.Future[bool],
    ) -> None:
        """Write a batch, then publish its outcomes once the lane's previous batch published.

        The lane is free for its next batch as soon as the Salesforce writes are done, so
        Salesforce is not idle while outcomes are acknowledged; outcomes still go out in the
        lane's order, and offsets are marked done only after their acknowledgement.
        """
        ok = False
        phase = self._metrics.batch_phase
        try:
            messages = [item.message for item in batch.items]
            parsed = [item.parsed for item in batch.items]
            people = merge_by_person(
                Sourced(item.parsed.change, m.partition, m.offset, i, item.fields)
                if not (m := item.message).headers
                # A redriven message sorts where it was first read (model.messages.Origin).
                else Sourced(item.parsed.change, *m.origin()[:2], i, item.fields)
                for i, item in enumerate(batch.items)
                if isinstance(item.parsed, Accepted)
            )
            self._metrics.batch_people.observe(len(people))
            merged = self._clock()
            phase.labels("merge").observe(merged - batch.started)
            results = await self._write(people)
            # Before the lane's next batch can start (below): it may hold the same people.
            if early := self._recent.record(people.values(), results):
                self._metrics.recent_forgotten_early.inc(early)
            self._metrics.recent_people.set(len(self._recent))
            choices = self._choices_out(batch.items) if self._choices is not None else []
            written = self._clock()
            phase.labels("salesforce").observe(written - merged)
            publications, dead = assemble(
                messages, parsed, people, results, self._plans, self._wall()
            )
            lane = self._lanes[batch.lane]
            if lane.task is asyncio.current_task():
                lane.task = None
                self._dispatch_ready()
            built = self._clock()
            phase.labels("outcomes").observe(built - written)
            if before is not None and not await asyncio.shield(before):
                raise LaneBroken(batch.lane)
            ordered = self._clock()
            phase.labels("order").observe(ordered - built)
            await self._publisher.publish(publications, dead, choices)
            for item in batch.items:
                self._parts.done(item.part, item.message.offset, item.size)
            now = self._clock()
            phase.labels("publish").observe(now - ordered)
            self._metrics.batch_duration.observe(now - batch.started)
            self._health.progressed(now)
            ok = True
        except asyncio.CancelledError:
            # Abandoned (rebalance, shutdown): re-read later; later batches may go on.
            ok = True
            raise
        finally:
            # Nothing after a batch that could not publish may publish: outcomes would run
            # ahead of what is committed, and the service is stopping anyway.
            published.set_result(ok)

    def _choices_out(self, items: Sequence[Fetched]) -> list[tuple[int, bytes, bytes]]:
        """Each person's remembered choices, for the choices topic: in the partition of the
        input each of their messages came from (one, when the input is keyed by person)."""
        where: dict[str, set[int]] = {}
        for item in items:
            if isinstance(item.parsed, Accepted):
                where.setdefault(item.parsed.change.email_key, set()).add(item.message.partition)
        out: list[tuple[int, bytes, bytes]] = []
        for key, partitions in where.items():
            value = self._recent.export(key)
            if value is not None:
                raw = key.encode()
                out.extend((p, raw, value) for p in sorted(partitions))
        return out

    async def _write(self, people: Mapping[str, PersonWrite]) -> dict[str, dict[str, PersonResult]]:
        """Write every target that has something to write, the targets concurrently."""
        todo = list(people.values())
        # A target a person has no values for may still be written (a deleted event reaches
        # every stateful target: the fields' key is there, empty).
        writers = [w for w in self._writers if any(w.sobject in p.fields for p in todo)]
        backlog = self._behind()
        # The targets tell each other what the person's records hold: a grant older than a
        # choice any of them holds is written to none (a record made meanwhile holds none).
        held = HeldChoices(w.sobject for w in writers)
        # ...and so do the choices finished batches took in, which no record may hold.
        self._recent.seed(held, todo)
        answers = await gather_or_cancel(
            *(self._write_target(w, todo, backlog, len(writers), held) for w in writers)
        )
        return {w.sobject: answer for w, answer in zip(writers, answers, strict=True)}

    async def _write_target(
        self,
        writer: Writer,
        people: Sequence[PersonWrite],
        backlog: bool = False,
        writers: int | None = None,
        held: HeldChoices | None = None,
    ) -> dict[str, PersonResult]:
        """Write one target; what cannot be written now waits at the gate and is written again.

        Only per-record problems end in failed outcomes (and, with
        ``SALESFORCE_ON_RETRY_EXHAUSTED=dead_letter``, a spent retry budget).
        """
        # Kept across attempts: people a paused attempt finished are not written again.
        done: dict[str, PersonResult] = {}
        try:
            while True:
                # The batch's targets wait for each other (held): they probe together.
                probe = await self._gate.wait_open(owner=held)
                try:
                    results = await writer.write(
                        people, done, backlog=backlog, writers=writers, held=held
                    )
                except asyncio.CancelledError:
                    if probe:
                        self._gate.abandoned()
                    raise
                except Exception as exc:
                    if self._gate.failed(exc, probe=probe) is Verdict.GIVE_UP and isinstance(
                        exc, RetryBudgetExhaustedError
                    ):
                        return _exhausted(exc)
                    continue
                self._gate.succeeded()
                return results
        finally:
            # Whatever ended it: the batch's other targets no longer wait for this one.
            if held is not None:
                held.leave(writer.sobject)

    # --- commits, rebalance, shutdown ---------------------------------------------------

    async def commit(
        self,
        only: set[TopicPartition] | None = None,
        *,
        timeout: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Commit every owned partition whose done prefix moved, within ``timeout``
        (``commit_timeout_seconds`` by default; waiting for a commit under way counts in it);
        a ``stop`` set meanwhile abandons it (the drain commits next)."""
        limit = self._cfg.commit_timeout_seconds if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            async with asyncio.timeout(limit):
                await self._commit_lock.acquire()
        except TimeoutError:
            self._commit_timed_out(limit)
            return
        try:
            await self._commit(only, deadline - loop.time(), stop)
        finally:
            self._commit_lock.release()

    async def _commit(
        self, only: set[TopicPartition] | None, limit: float, stop: asyncio.Event | None
    ) -> None:
        self._last_commit = self._clock()
        positions = {
            tp: pos
            for tp, pos in self._parts.to_commit(self._consumer.assignment()).items()
            if only is None or tp in only
        }
        if not positions:
            return
        request = asyncio.ensure_future(
            self._consumer.commit({tp: OffsetAndMetadata(pos, "") for tp, pos in positions.items()})
        )
        waits: set[asyncio.Future[Any]] = {request}
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waits.add(stopper)
        try:
            await asyncio.wait(waits, timeout=max(0.0, limit), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
            if not request.done():
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await request
        if request.cancelled():
            if stop is None or not stop.is_set():
                self._commit_timed_out(limit)
            return  # (stopping: the drain commits)
        try:
            request.result()
        except CommitFailedError as exc:
            # The partitions moved to another member, which re-reads what we did not commit.
            self._metrics.commits.labels("rebalanced").inc()
            logger.warning("commit refused after a rebalance", extra={"error": repr(exc)})
            return
        except KafkaError as exc:
            self._metrics.commits.labels("error").inc()
            self._health.commit_failed(self._clock())
            logger.warning("commit failed; will retry", extra={"error": repr(exc)})
            return
        self._parts.committed(positions)
        self._health.commit_succeeded()
        self._metrics.commits.labels("ok").inc()

    def _commit_timed_out(self, limit: float) -> None:
        # Counted as failed (health): the next commit carries the same offsets or more.
        self._metrics.commits.labels("error").inc()
        self._health.commit_failed(self._clock())
        logger.warning("commit timed out; will retry", extra={"timeout_s": round(limit, 3)})

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move: stop new work on them, finish or abandon what is in
        flight (bounded by ``SYNC_REBALANCE_TIMEOUT_SECONDS``) and commit exactly what is done.

        aiokafka rebalances eagerly (every partition is revoked, then reassigned from its
        committed offset), so whatever is abandoned here is re-read by its next owner, which
        may be this member again.
        """
        if not revoked:
            return
        async with self._intake:
            self._revoking = True
            try:
                await self._revoke(revoked)
            finally:
                self._revoking = False

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        await self._stop_restoring()
        self._lanes.drop(revoked)
        touching = [t for t, b in self._inflight.items() if b.partitions & revoked]
        abandoned = await self._settle(touching, self._cfg.rebalance_timeout_seconds)
        if abandoned:
            logger.warning(
                "rebalance: abandoned in-flight batches; their events will be re-read",
                extra={"batches": len(abandoned)},
            )
        await self.commit(only=revoked)
        # A partition kept by this member whose messages were in an abandoned batch is read
        # again from its first unfinished offset, or its commits would stall for good.
        kept = {tp for b in abandoned for tp in b.partitions} - revoked
        self._forget(revoked)
        self._forget(kept, reread=True)
        logger.info(
            "partitions revoked",
            extra={"partitions": sorted(f"{tp.topic}-{tp.partition}" for tp in revoked)},
        )

    async def _restore(self, assigned: set[TopicPartition]) -> None:
        """Read back the choices topic's partitions of the numbers just assigned, from where
        this member last read them (their beginning the first time), into what is
        remembered; then let the partitions' messages be fetched."""
        log = self._choices
        assert log is not None
        since = {tp.partition: self._choices_read.get(tp.partition) for tp in assigned}
        now_ms = epoch_ms(self._wall())
        started = self._clock()
        records = bad = 0
        problems = self._metrics.recent_restore_problems
        try:
            async with asyncio.timeout(self._cfg.choices_restore_seconds):
                missing = set(since) - await log.partitions()
                if missing:
                    # Input partitions added, not the choices topic's: the start-up check
                    # refuses that, but not while running.
                    problems.labels("read_failed").inc()
                    logger.error(
                        "the choices topic lacks partitions of the input: give it as many",
                        extra={"partitions": sorted(missing)},
                    )
                    since = {p: o for p, o in since.items() if p not in missing}
                async for partition, chunk in log.read(since):
                    bad += self._recent.restore(
                        ((r.key, r.value, r.timestamp) for r in chunk), now_ms
                    )
                    self._choices_read[partition] = chunk[-1].offset + 1
                    records += len(chunk)
        except (TimeoutError, KafkaError) as exc:
            # Waiting on would hold the partitions' messages back for good; without the rest,
            # late grants are gated by what the records hold (and what was read). The next
            # assignment reads on from where this stopped.
            problems.labels("read_failed").inc()
            logger.error(
                "the choices topic could not be read back in full; going on with what was read",
                extra={"error": repr(exc), "records": records},
            )
        except Exception as exc:
            # Nobody classified it: the partitions would stay paused, silently. Stop loudly.
            self._fail(exc, "reading the choices topic back failed unexpectedly")
            return
        finally:
            self._recent.restored()
            self._metrics.recent_people.set(len(self._recent))
        if bad:
            problems.labels("unreadable_entry").inc(bad)
            logger.warning("unreadable entries in the choices topic", extra={"entries": bad})
        logger.info(
            "choices read back",
            extra={
                "records": records,
                "people": len(self._recent),
                "seconds": round(self._clock() - started, 3),
            },
        )
        self._restoring -= assigned
        # Unless the pending bound holds them (_backpressure resumes those).
        ready = (assigned & self._consumer.assignment()) - self._parts.paused()
        if ready:
            self._consumer.resume(*ready)

    async def _stop_restoring(self) -> None:
        """Cancel a read-back in progress (a rebalance, a shutdown); what it read is kept
        and the next read goes on from there."""
        task, self._restore_task = self._restore_task, None
        try:
            if task is not None:
                task.cancel()
                # gather: the task's own cancellation is its result; this caller's is not
                # swallowed. _restore catches what it can meet; anything else is a bug.
                (result,) = await asyncio.gather(task, return_exceptions=True)
                if isinstance(result, Exception):
                    self._fail(result, "reading the choices topic back failed unexpectedly")
        finally:
            self._restoring.clear()

    async def close(self) -> None:
        """Stop what may outlive :meth:`run` (a read-back started by an assignment during
        the drain, or before ``run``: a stop while joining). Idempotent."""
        self._closed = True
        await self._stop_restoring()

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Note the new assignment; with a choices topic, hold the partitions paused while
        it is read back (before this returns, so none of their records is handed out)."""
        self._health.joined = True
        if self._choices is not None and assigned and not (self._flushing or self._closed):
            # (While draining nothing more is taken in: no read-back, and nothing to hold.)
            if self._restore_task is not None:
                self._restore_task.cancel()  # never: a revocation stops it first
            self._restoring = set(assigned)
            self._consumer.pause(*assigned)
            self._restore_task = asyncio.create_task(self._restore(set(assigned)))
        logger.info(
            "partitions assigned",
            extra={"partitions": sorted(f"{tp.topic}-{tp.partition}" for tp in assigned)},
        )

    async def _settle(self, tasks: list[asyncio.Task[None]], timeout: float) -> list[Batch]:
        """Wait up to ``timeout`` for batch tasks; cancel the late ones and return their
        batches (nothing of theirs is marked done, so it is read again)."""
        if not tasks:
            return []
        _, late = await asyncio.wait(tasks, timeout=max(0.0, timeout))
        abandoned = [self._inflight[t] for t in late if t in self._inflight]
        for task in late:
            task.cancel()
        # Cancelled tasks end with CancelledError; their callbacks already ran or run now.
        await asyncio.gather(*late, return_exceptions=True)
        return abandoned

    def _forget(self, tps: set[TopicPartition], *, reread: bool = False) -> None:
        """The one way partition state goes: dropped from the lanes and the registry (and, for
        a partition this member keeps, fetched again from its first unfinished offset)."""
        if not tps:
            return
        self._lanes.drop(tps)
        assigned = self._consumer.assignment()
        for tp in tps:
            if reread and tp in assigned:
                start = self._parts.first_pending(tp)
                if start is not None:
                    self._consumer.seek(tp, start)
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self._parts.forget(tps)

    async def _drain(self) -> None:
        """Shutdown: write what was fetched (not after a failure), wait for in-flight batches
        (bounded by ``SYNC_SHUTDOWN_TIMEOUT_SECONDS``), commit the done prefix."""
        deadline = self._clock() + self._cfg.shutdown_timeout_seconds
        # Flushing first: an assignment while draining starts no read-back (on_assigned).
        self._flushing = True
        await self._stop_restoring()
        self._dispatch_ready()
        while self._inflight and self._clock() < deadline:
            await asyncio.wait(
                list(self._inflight),
                timeout=max(0.0, deadline - self._clock()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        self._closed = True
        abandoned = await self._settle(list(self._inflight), 0.0)
        if abandoned:
            logger.warning(
                "abandoned in-flight batches at shutdown", extra={"batches": len(abandoned)}
            )
        # What is left of the shutdown time, and a moment at least: committing what is done
        # is what the drain is for (a broker that does not answer must not hold it for good).
        await self.commit(timeout=max(deadline - self._clock(), DRAIN_COMMIT_SECONDS))


def _exhausted(exc: RetryBudgetExhaustedError) -> dict[str, PersonResult]:
    """Results when the retry budget ran out: what was done, and failures for the rest."""
    results = {str(k): v for k, v in exc.done.items() if isinstance(v, PersonResult)}
    info = SalesforceErrorInfo(code=exc.code, message=exc.message)
    for key in exc.pending:
        results[key] = PersonResult("failed", error=info)
    return results


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline.on_assigned(set(assigned))
