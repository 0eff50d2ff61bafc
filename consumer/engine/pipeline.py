"""The consume loop: fetch, batch, write to Salesforce, publish outcomes, commit in order.

One task polls Kafka; each batch runs in its own task (at most ``SYNC_CONCURRENCY`` at once).
Three rules keep it from losing or reordering anything:

- a batch waits for every earlier in-flight batch that holds one of its people, so writes
  for one person are never reordered (:class:`KeySequencer`);
- an offset is marked done only after the batch's Salesforce writes and its outcome and
  dead-letter publishes are acknowledged, and a partition commits only its done prefix
  (:class:`~consumer.engine.offsets.OffsetBook`);
- when work piles up, partitions are paused and polling goes on, so the member stays in its
  group however long Salesforce takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, MessageSizeTooLargeError
from aiokafka.structs import OffsetAndMetadata

from consumer.engine.health import Health, PauseState
from consumer.engine.offsets import OffsetBook, PartitionOffsets
from consumer.errors import (
    ApiBudgetExceededError,
    AuthenticationError,
    RequestLimitExceededError,
    RetryBudgetExhaustedError,
)
from consumer.mapping import TargetPlan
from consumer.model.changes import Accepted, ParseResult, PersonResult, PersonWrite, Sourced
from consumer.model.messages import InputMessage
from consumer.model.outcomes import Outcome, SalesforceErrorInfo
from consumer.observability.metrics import Metrics
from consumer.salesforce.writer import TargetWriter
from consumer.settings import Settings
from consumer.stages.batch import BatchAccumulator
from consumer.stages.merge import merge_by_person
from consumer.stages.parse import ParseRules, parse_message
from consumer.stages.report import DeadLetterOut, Publication, assemble

logger = logging.getLogger(__name__)

Key = tuple[str, int]


class KeySequencer:
    """Orders batches that share a key: a batch waits for the last earlier one holding it."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}

    def claim(self, keys: set[str]) -> tuple[list[asyncio.Future[None]], asyncio.Future[None]]:
        """Register a batch (in dispatch order); returns what it must wait for and its token."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = {id(f): f for k in keys if (f := self._tails.get(k)) is not None}
        for key in keys:
            self._tails[key] = done
        return list(before.values()), done

    def release(self, keys: set[str], done: asyncio.Future[None]) -> None:
        """Let the batches waiting on this one go (call it whatever happened)."""
        if not done.done():
            done.set_result(None)
        for key in keys:
            if self._tails.get(key) is done:
                del self._tails[key]

    def __len__(self) -> int:
        return len(self._tails)


@dataclass
class Batch:
    """Messages dispatched together, with everything derived from them."""

    seq: int
    messages: list[InputMessage]
    parsed: list[ParseResult]
    trackers: list[PartitionOffsets]
    people: dict[str, PersonWrite]
    prereqs: list[asyncio.Future[None]]
    done: asyncio.Future[None]
    started: float
    partitions: set[Key] = field(default_factory=set)
    size: int = 0


class Pipeline:
    """Runs the sync until a stop is requested, then drains and commits."""

    def __init__(
        self,
        settings: Settings,
        plans: Sequence[TargetPlan],
        regulations: Sequence[str],
        writers: Sequence[TargetWriter],
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        health: Health,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._s = settings
        self._plans = list(plans)
        self._writers = list(writers)
        self._consumer = consumer
        self._producer = producer
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wall = wall
        self._rules = ParseRules(
            regulations=tuple(regulations),
            max_message_bytes=settings.sync_max_message_bytes,
        )
        self._acc: BatchAccumulator[InputMessage] = BatchAccumulator(
            max_items=settings.sync_batch_max_events,
            max_bytes=settings.sync_batch_max_bytes,
            linger=settings.sync_batch_linger_ms / 1000,
            clock=clock,
        )
        self._book = OffsetBook()
        self._sequencer = KeySequencer()
        self._inflight: dict[asyncio.Task[None], Batch] = {}
        self._seq = 0
        self._paused: set[TopicPartition] = set()
        self._next_offset: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._inflight_bytes = 0
        self._last_commit = 0.0
        self.pause_state = PauseState()

    # --- the loop ------------------------------------------------------------------------

    def listener(self) -> ConsumerRebalanceListener:
        """The rebalance listener to subscribe with."""
        return _Listener(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and dispatch until ``stop`` is set; then flush, publish, commit."""
        try:
            while not stop.is_set():
                try:
                    await self._poll_once()
                except KafkaError as exc:
                    # The client reconnects by itself; keep the loop (and health) alive.
                    logger.error("polling failed; retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(1.0)
        finally:
            await self._drain()

    async def _poll_once(self) -> None:
        self._backpressure()
        busy = bool(self._inflight) or len(self._acc) > 0
        timeout = 0.05 if busy else 0.5
        wait = self._acc.time_to_ready()
        if wait is not None:
            timeout = min(timeout, max(wait, 0.005))
        records = await self._consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=self._s.kafka_fetch_max_records
        )
        self._health.polled(
            self._clock(),
            pending=self._book.in_flight() > 0,
            paused=self.pause_state.active(self._clock()),
        )
        for tp, messages in records.items():
            tracker = self._book.track((tp.topic, tp.partition))
            for m in messages:
                tracker.add(m.offset)
                item = InputMessage(
                    tp.topic, tp.partition, m.offset, m.key, m.value, tuple(m.headers or ())
                )
                self._acc.add((tp.topic, tp.partition), item, item.size)
            self._metrics.messages_consumed.labels(tp.topic).inc(len(messages))
            self._next_offset[tp] = messages[-1].offset + 1
        self._update_lag()
        while self._acc.ready() and len(self._inflight) < self._s.sync_concurrency:
            self._dispatch(self._acc.take())
        now = self._clock()
        if now - self._last_commit >= self._s.sync_commit_interval_ms / 1000:
            await self.commit()

    def _backpressure(self) -> None:
        """Pause every assigned partition while a full batch waits for a free slot, while
        fetched-but-unfinished work passes its bounds, or while writing to Salesforce is
        paused. Polling goes on, so the group membership is kept however long it lasts."""
        s = self._s
        full = (
            len(self._acc) >= s.sync_batch_max_events
            or self._acc.pending_bytes >= s.sync_batch_max_bytes
            or self._book.in_flight() >= s.sync_max_pending_events
            or self._acc.pending_bytes + self._inflight_bytes >= s.sync_max_pending_bytes
            or self.pause_state.active(self._clock())
        )
        assigned = self._consumer.assignment()
        if full:
            fresh = assigned - self._paused
            if fresh:
                self._consumer.pause(*fresh)
                self._paused |= fresh
        elif self._paused:
            resume = self._paused & assigned
            if resume:
                self._consumer.resume(*resume)
            self._paused.clear()

    def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._next_offset.get(tp)
            if high is not None and position is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - position)
                )

    # --- batches -------------------------------------------------------------------------

    def _dispatch(self, taken: list[tuple[Key, InputMessage]]) -> None:
        messages = [m for _, m in taken]
        parsed = [parse_message(m.value, self._rules) for m in messages]
        sourced = [
            Sourced(r.change, m.partition, m.offset, i)
            for i, (m, r) in enumerate(zip(messages, parsed, strict=True))
            if isinstance(r, Accepted)
        ]
        people = merge_by_person(sourced, self._plans)
        prereqs, done = self._sequencer.claim(set(people))
        self._seq += 1
        batch = Batch(
            seq=self._seq,
            messages=messages,
            parsed=parsed,
            trackers=[self._book.track(k) for k, _ in taken],
            people=people,
            prereqs=prereqs,
            done=done,
            started=self._clock(),
            partitions={k for k, _ in taken},
            size=sum(m.size for m in messages),
        )
        self._inflight_bytes += batch.size
        self._metrics.batch_events.observe(len(messages))
        self._metrics.batch_people.observe(len(people))
        task = asyncio.create_task(self._run_batch(batch), name=f"batch-{batch.seq}")
        self._inflight[task] = batch
        self._metrics.batches_in_flight.set(len(self._inflight))
        task.add_done_callback(self._batch_finished)

    def _batch_finished(self, task: asyncio.Task[None]) -> None:
        batch = self._inflight.pop(task, None)
        if batch is not None:
            self._inflight_bytes -= batch.size
        self._metrics.batches_in_flight.set(len(self._inflight))
        if not task.cancelled() and task.exception() is not None:
            logger.error("batch task failed", exc_info=task.exception())

    async def _run_batch(self, batch: Batch) -> None:
        try:
            if batch.prereqs:
                await asyncio.gather(*batch.prereqs)
            results = await self._write(batch)
            publications, dead = assemble(
                batch.messages, batch.parsed, batch.people, results, self._plans, self._wall()
            )
            await self._publish(publications, dead)
            for tracker, message in zip(batch.trackers, batch.messages, strict=True):
                tracker.done(message.offset)
            self._metrics.batch_duration.observe(self._clock() - batch.started)
            self._health.progressed(self._clock())
        finally:
            self._sequencer.release(set(batch.people), batch.done)

    async def _write(self, batch: Batch) -> dict[str, dict[str, PersonResult]]:
        """Write every target; a batch that cannot be written now waits and tries again.

        Only per-record problems end in failed outcomes (and, with
        ``SALESFORCE_ON_RETRY_EXHAUSTED=dead_letter``, a spent retry budget). A spent quota,
        the API budget, a refused login or (by default) a spent retry budget pause writing for
        every batch: partitions are paused, nothing of the batch is acknowledged, and it is
        written when the pause ends.
        """
        results: dict[str, dict[str, PersonResult]] = {}
        people = list(batch.people.values())
        s = self._s
        for writer in self._writers:
            while writer.sobject not in results:
                await self._wait_unpaused()
                try:
                    results[writer.sobject] = await writer.write(people)
                    self._health.salesforce_ok = True
                    self._resume_if_paused()
                except RequestLimitExceededError as exc:
                    self._enter_pause("daily_limit", s.salesforce_limit_pause_seconds, exc)
                except ApiBudgetExceededError as exc:
                    self._enter_pause("api_budget", s.salesforce_budget_pause_seconds, exc)
                except AuthenticationError as exc:
                    self._health.salesforce_ok = False
                    self._enter_pause("authentication", s.salesforce_auth_retry_seconds, exc)
                except RetryBudgetExhaustedError as exc:
                    if s.salesforce_on_retry_exhausted == "dead_letter":
                        results[writer.sobject] = _exhausted(exc)
                        logger.error(
                            "salesforce still failing; events dead-lettered",
                            extra={"error": str(exc), "people": len(exc.pending)},
                        )
                    else:
                        self._enter_pause("unavailable", s.salesforce_retry_max_seconds, exc)
                except Exception as exc:
                    # A bug or an answer nobody foresaw: keep the batch, never lose it.
                    logger.exception("unexpected error writing a batch; will retry")
                    self._enter_pause("unexpected_error", s.salesforce_retry_max_seconds, exc)
        return results

    async def _wait_unpaused(self) -> None:
        # Polled, not an Event: another batch may extend the pause while this one waits.
        while self.pause_state.active(self._clock()):  # noqa: ASYNC110
            await asyncio.sleep(min(1.0, self.pause_state.remaining(self._clock())))

    def _enter_pause(self, reason: str, seconds: float, exc: Exception) -> None:
        started = self.pause_state.pause(reason, self._clock() + seconds)
        if started:
            self._metrics.pauses.labels(reason).inc()
            self._metrics.paused.set(1)
            logger.error(
                "writing to salesforce paused",
                extra={"reason": reason, "pause_s": seconds, "error": str(exc)},
            )

    def _resume_if_paused(self) -> None:
        reason = self.pause_state.clear()
        if reason is not None:
            self._metrics.paused.set(0)
            logger.info("writing to salesforce resumed", extra={"after": reason})

    async def _publish(
        self, publications: Sequence[Publication], dead: Sequence[DeadLetterOut]
    ) -> None:
        """Send dead letters and outcomes and wait until the broker acknowledged all."""
        while True:
            try:
                await self._send_dead_letters(dead)
                futures: list[asyncio.Future[Any]] = []
                for pub in publications:
                    futures.append(
                        await self._producer.send(
                            self._s.kafka_results_topic,
                            value=_outcome_bytes(pub.outcome),
                            key=pub.key,
                        )
                    )
                await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                logger.error("publishing outcomes failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            except Exception:
                logger.exception("unexpected error publishing outcomes; retrying")
                await asyncio.sleep(5.0)
        for letter in dead:
            self._metrics.dead_letters.labels(letter.info.error_class).inc()
        for pub in publications:
            if not pub.outcome.targets:
                self._metrics.outcomes.labels(pub.outcome.status, "").inc()
            for target in pub.outcome.targets:
                self._metrics.outcomes.labels(target.status, target.sobject).inc()

    async def _send_dead_letters(self, dead: Sequence[DeadLetterOut]) -> None:
        """Send dead letters and wait for their acknowledgements.

        A dead letter too large for the producer, or refused by the broker for its size
        (reported on the send's result, not when it is queued), is sent again without its
        value: the headers still say why and where the original is.
        """
        futures = [await self._send_dead_letter(letter) for letter in dead]
        answers = await asyncio.gather(*futures, return_exceptions=True)
        too_large = []
        for letter, answer in zip(dead, answers, strict=True):
            if isinstance(answer, MessageSizeTooLargeError):
                too_large.append(letter)
            elif isinstance(answer, BaseException):
                raise answer
        if too_large:
            await asyncio.gather(
                *[await self._send_dead_letter(letter, omit_value=True) for letter in too_large]
            )

    async def _send_dead_letter(self, letter: DeadLetterOut, *, omit_value: bool = False) -> Any:
        message = letter.message
        kept = [(k, v) for k, v in message.headers if not k.startswith("x-dlq-")]
        headers = kept + letter.info.headers()
        if not omit_value:
            try:
                return await self._producer.send(
                    self._s.kafka_dlq_topic, value=message.value, key=message.key, headers=headers
                )
            except MessageSizeTooLargeError:
                pass
        headers.append(("x-dlq-value-omitted", b"too large for the dead-letter topic"))
        return await self._producer.send(
            self._s.kafka_dlq_topic, value=b"", key=message.key, headers=headers
        )

    # --- commits, rebalance, shutdown ---------------------------------------------------

    async def commit(self, only: set[Key] | None = None) -> None:
        """Commit every owned partition whose done prefix moved."""
        async with self._commit_lock:
            self._last_commit = self._clock()
            assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            positions = {
                k: v
                for k, v in self._book.to_commit().items()
                if k in assigned and (only is None or k in only)
            }
            if not positions:
                return
            offsets = {
                TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in positions.items()
            }
            try:
                await self._consumer.commit(offsets)
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
            self._book.committed(positions)
            self._health.commit_succeeded()
            self._metrics.commits.labels("ok").inc()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move: stop new work on them, finish or abandon what is in
        flight (bounded by ``SYNC_REBALANCE_TIMEOUT_SECONDS``) and commit exactly what is done.

        aiokafka rebalances eagerly (every partition is revoked, then reassigned from its
        committed offset), so whatever is abandoned here is re-read by its next owner, which
        may be this member again.
        """
        keys = {(tp.topic, tp.partition) for tp in revoked}
        if not keys:
            return
        self._acc.drop(keys)
        touching = [t for t, b in self._inflight.items() if b.partitions & keys]
        if touching:
            _, late = await asyncio.wait(touching, timeout=self._s.sync_rebalance_timeout_seconds)
            if late:
                logger.warning(
                    "rebalance: abandoning in-flight batches; their events will be re-read",
                    extra={"batches": len(late)},
                )
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self.commit(only=keys)
        self._book.forget(list(keys))
        self._paused -= revoked
        for tp in revoked:
            self._next_offset.pop(tp, None)
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        logger.info(
            "partitions revoked",
            extra={"partitions": sorted(f"{tp.topic}-{tp.partition}" for tp in revoked)},
        )

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Note the new assignment."""
        self._health.joined = True
        logger.info(
            "partitions assigned",
            extra={"partitions": sorted(f"{tp.topic}-{tp.partition}" for tp in assigned)},
        )

    async def _drain(self) -> None:
        """Shutdown: dispatch what was fetched, wait (bounded) for in-flight, commit."""
        deadline = self._clock() + self._s.sync_shutdown_timeout_seconds
        while len(self._acc) and self._clock() < deadline:
            while len(self._acc) and len(self._inflight) < self._s.sync_concurrency:
                self._dispatch(self._acc.take())
            if self._inflight:
                await asyncio.wait(
                    list(self._inflight),
                    timeout=max(0.0, deadline - self._clock()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=max(0.0, deadline - self._clock()))
        left = list(self._inflight)
        for task in left:
            task.cancel()
        if left:
            logger.warning("abandoned in-flight batches at shutdown", extra={"batches": len(left)})
            await asyncio.gather(*left, return_exceptions=True)
        await self.commit()


def _exhausted(exc: RetryBudgetExhaustedError) -> dict[str, PersonResult]:
    """Results when the retry budget ran out: what was done, and failures for the rest."""
    results = {str(k): v for k, v in exc.done.items() if isinstance(v, PersonResult)}
    info = SalesforceErrorInfo(code=exc.code, message=exc.message)
    for key in exc.pending:
        results[key] = PersonResult("failed", error=info)
    return results


def _outcome_bytes(outcome: Outcome) -> bytes:
    return orjson.dumps(outcome.model_dump(mode="json", exclude_none=True))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline.on_assigned(set(assigned))
