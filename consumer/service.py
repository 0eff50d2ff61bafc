"""The service: wires adapters and the pipeline together and owns their lifecycle.

Start order: metrics server, Salesforce (session, mapping check), producer, consumer.
Stop order (uvicorn/arq style): stop polling, flush in-flight batches, publish their outcomes,
commit, then close the consumer, the producer, Salesforce and the metrics server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiokafka.errors import KafkaError, KafkaTimeoutError

from consumer.engine.gate import GatePolicy, WriteGate
from consumer.engine.health import Health
from consumer.engine.pipeline import EngineConfig, Pipeline, Writer
from consumer.engine.ports import ChoicesLogPort, ConsumerPort, ProducerPort
from consumer.engine.publisher import Publisher
from consumer.errors import Reaction, SalesforceError
from consumer.kafka.choices import ChoicesLog
from consumer.kafka.clients import make_consumer, make_producer
from consumer.mapping import MappingConfig, TargetPlan
from consumer.observability.metrics import Metrics
from consumer.observability.server import MetricsServer
from consumer.salesforce.check import CheckReport, check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter, calls_at_once
from consumer.settings import Settings
from consumer.stages.parse import ParseRules
from consumer.stop import sleep_unless_stopped

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Exit codes of ``run``: done; stopped by an error nobody classified (restart me); the
#: settings or the mapping need an operator.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class Service:
    """One running instance of the sync."""

    def __init__(
        self, settings: Settings, mapping: MappingConfig, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        self.metrics = metrics or Metrics()
        self.health = Health(
            poll_stall_seconds=settings.health_poll_stall_seconds,
            progress_stall_seconds=settings.health_progress_stall_seconds,
        )
        self.server = MetricsServer(
            self.metrics, self.health, host=settings.metrics_host, port=settings.metrics_port
        )
        self.client = SalesforceClient(
            settings, self.metrics, pool_size=pool_size(settings, mapping)
        )
        self.pipeline: Pipeline | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        await self.server.start()
        await self.client.start()
        try:
            report = await _until_stopped(self._prepare(stop), stop)
            if report is None:
                return EXIT_OK
            if not report.ok:
                logger.error("the mapping does not fit the org:\n%s", report.render())
                return EXIT_CONFIG
            for warning in report.warnings:
                logger.warning("mapping: %s", warning)
            self.health.salesforce_ok = True
            return await self._consume(report, stop)
        finally:
            await self.client.stop()
            await self.server.stop()

    async def _prepare(self, stop: asyncio.Event) -> CheckReport | None:
        """Check the mapping against the org, retrying while Salesforce is unreachable or
        refuses the login; None when a stop came first."""
        while not stop.is_set():
            try:
                return await check_mapping(self.client, self.mapping)
            except SalesforceError as exc:
                if exc.reaction is Reaction.CONFIGURATION:
                    self.health.salesforce_ok = False
                    delay = self.settings.salesforce_auth_retry_seconds
                    logger.error("salesforce refused the login", extra={"error": str(exc)})
                elif exc.retriable or exc.reaction is Reaction.EXHAUSTED:
                    delay = self.settings.salesforce_retry_max_seconds
                    logger.warning("salesforce unreachable at start-up", extra={"error": str(exc)})
                else:
                    raise
            await sleep_unless_stopped(stop, delay)
        return None

    async def _consume(self, report: CheckReport, stop: asyncio.Event) -> int:
        s = self.settings
        writers = [TargetWriter(self.client, plan, s) for plan in report.plans]
        producer = make_producer(s)
        remembers = s.sync_recent_choices_seconds > 0 and s.sync_recent_choices_people > 0
        log = ChoicesLog(s, s.kafka_choices_topic) if s.kafka_choices_topic and remembers else None
        if not await _start_with_retries(producer.start, stop, "producer"):
            await _close(producer.stop(), "producer", _producer_abort(producer))
            return EXIT_OK
        try:
            if log is not None:
                if not await _start_with_retries(log.start, stop, "choices reader"):
                    return EXIT_OK
                problem = await _choices_topic_problem(log, producer, s.kafka_input_topic)
                if problem is not None:
                    logger.error("KAFKA_CHOICES_TOPIC: %s", problem)
                    return EXIT_CONFIG
            consumer = make_consumer(s)
            pipeline = build_pipeline(
                s,
                self.mapping,
                report.plans,
                writers,
                consumer,
                producer,
                self.metrics,
                self.health,
                choices=log,
            )
            self.pipeline = pipeline
            consumer.subscribe([s.kafka_input_topic], listener=pipeline.listener())
            joined = False
            try:
                # start() waits for the first assignment, which can take a session timeout;
                # a stop during that wait must still end the process promptly.
                joined = await _start_with_retries(consumer.start, stop, "consumer")
                if not joined:
                    return EXIT_OK
                await pipeline.run(stop)
            finally:
                try:
                    await pipeline.close()
                finally:
                    await _close_consumer(consumer, joined=joined)
        finally:
            try:
                if log is not None:
                    await _close(log.stop(), "choices reader")
            finally:
                await _close(producer.stop(), "producer", _producer_abort(producer))
        return EXIT_FAILED if pipeline.failure is not None else EXIT_OK


#: Connections beyond the lanes' calls: a token grant, a describe at start-up.
POOL_SPARE = 2


def pool_size(s: Settings, mapping: MappingConfig) -> int:
    """Connections for the service's HTTP session: every call the lanes can have in flight
    at once (each lane's batch writes its targets concurrently), plus :data:`POOL_SPARE`.

    ``SALESFORCE_POOL_SIZE`` wins when set; below that need, calls queue for a connection and
    the wait counts in their latency (``make bench`` (e) measured writes at 160-190 ms instead
    of 110 with 10 connections for 12 calls), so it is said at start-up.
    """
    need = s.sync_concurrency * sum(calls_at_once(t) for t in mapping.targets) + POOL_SPARE
    if s.salesforce_pool_size is None:
        return need
    if s.salesforce_pool_size < need:
        logger.warning(
            "SALESFORCE_POOL_SIZE is below the calls the lanes can have in flight at once "
            "plus %d spare: some calls will wait for a connection",
            POOL_SPARE,
            extra={"pool_size": s.salesforce_pool_size, "needed": need},
        )
    return s.salesforce_pool_size


def build_pipeline(
    s: Settings,
    mapping: MappingConfig,
    plans: Sequence[TargetPlan],
    writers: Sequence[Writer],
    consumer: ConsumerPort,
    producer: ProducerPort,
    metrics: Metrics,
    health: Health,
    *,
    clock: Callable[[], float] = time.monotonic,
    choices: ChoicesLogPort | None = None,
) -> Pipeline:
    """The engine with its gate and publisher, from the settings (one place for the wiring).

    ``choices``: the choices topic's reader (``KAFKA_CHOICES_TOPIC``), when set."""
    gate = WriteGate(
        GatePolicy(
            pause_seconds={
                "daily_limit": s.salesforce_limit_pause_seconds,
                "api_budget": s.salesforce_budget_pause_seconds,
                "authentication": s.salesforce_auth_retry_seconds,
                "mapping": s.salesforce_auth_retry_seconds,
                "unavailable": s.salesforce_retry_max_seconds,
            },
            default_pause_seconds=s.salesforce_retry_max_seconds,
            on_retry_exhausted=s.salesforce_on_retry_exhausted,
        ),
        metrics,
        health,
        clock=clock,
    )
    publisher = Publisher(
        producer,
        results_topic=s.kafka_results_topic,
        dlq_topic=s.kafka_dlq_topic,
        metrics=metrics,
        max_record_bytes=s.kafka_producer_max_request_bytes,
        choices_topic=s.kafka_choices_topic if choices is not None else None,
    )
    return Pipeline(
        EngineConfig.from_settings(s),
        ParseRules(
            regulations=tuple(mapping.regulations),
            max_message_bytes=s.sync_max_message_bytes,
            max_future_skew_seconds=s.sync_max_future_skew_seconds,
            on_user_deleted=mapping.on_user_deleted,
            on_event_deleted=mapping.on_event_deleted,
            mapped_purposes=frozenset(p for t in mapping.targets for p in t.purposes),
            mapped_preferences=frozenset(
                p for t in mapping.targets for p in (*t.preferences, *t.preference_values)
            ),
        ),
        plans,
        writers,
        consumer,
        publisher,
        gate,
        metrics,
        health,
        clock=clock,
        choices=choices,
    )


async def _choices_topic_problem(
    log: ChoicesLog, producer: ProducerPort, input_topic: str
) -> str | None:
    """Why the choices topic cannot serve (None: it can): it must exist with the input's
    partitions, since a person's entry goes to the partition of the input they come from and
    is read back by whoever is assigned that input partition."""
    theirs = await log.partitions()
    if not theirs:
        return (
            f"topic {log.topic!r} does not exist (create it compacted, with as many "
            "partitions as the input)"
        )
    mine = await producer.partitions_for(input_topic)
    if theirs != mine:
        return (
            f"topic {log.topic!r} has {len(theirs)} partitions and the input {len(mine)}: "
            "they must be the same"
        )
    return None


#: How long closing a Kafka client may take: its requests (leaving the group, the
#: producer's last sends) wait for a broker that may not answer; what is not acknowledged by
#: then was not committed either, and is read again after the restart. Three of them after
#: the drain's SYNC_SHUTDOWN_TIMEOUT_SECONDS (20 s) stay within Kubernetes' 30 s of grace.
CLOSE_SECONDS = 2.0
_NO_ANSWER = (
    "the broker does not answer; what it did not acknowledge is read again after the restart"
)


async def _close(
    closing: Awaitable[None],
    what: str,
    abort: Callable[[], Awaitable[None]] | None = None,
    *,
    why: str = _NO_ANSWER,
) -> None:
    """Close a Kafka client within :data:`CLOSE_SECONDS`; past it, say ``why`` and
    ``abort`` it (drop its connections without waiting for any answer), so that no socket
    or task is left behind the stop."""
    try:
        await asyncio.wait_for(closing, CLOSE_SECONDS)
    except TimeoutError:
        logger.warning(
            "kafka %s not closed in time: %s", what, why, extra={"wait_s": CLOSE_SECONDS}
        )
        if abort is not None:
            # Nothing is sent any more; a failure here has nothing left to lose.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(abort(), CLOSE_SECONDS)


def _producer_abort(producer: Any) -> Callable[[], Awaitable[None]]:
    """How to drop an aiokafka producer whose ``stop()`` did not end: aiokafka has no
    forced close, so its parts are reached directly (the pinned version's): what it still
    holds is failed (the flush ends), its sender task cancelled, its connections closed."""

    async def abort() -> None:
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is not None:
            accumulator.fail_all(KafkaTimeoutError())
        sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender is not None:
            sender.cancel()
        # The connections first: the sender may end only once its requests are answered.
        await producer.client.close()
        if sender is not None:
            await asyncio.wait({sender}, timeout=CLOSE_SECONDS)

    return abort


async def _close_consumer(consumer: Any, *, joined: bool) -> None:
    """Close the consumer; without a join there is nothing to wait for (the broker forgets
    the member after its session timeout), so a stop during a long join ends promptly."""
    client = getattr(consumer, "_client", None)  # aiokafka's: closed if stop() hangs
    # Never joined: its JoinGroup may be held by the broker for a whole rebalance, and
    # there is nothing of this member's to commit.
    why = _NO_ANSWER if joined else "stopped while joining the group; the join is left to expire"
    await _close(consumer.stop(), "consumer", client.close if client is not None else None, why=why)


async def _start_with_retries(
    start: Callable[[], Awaitable[None]], stop: asyncio.Event, what: str
) -> bool:
    """Start a Kafka client, retrying while the brokers are unreachable; False if stopped."""
    while not stop.is_set():
        try:
            await _until_stopped(start(), stop)
        except KafkaError as exc:
            logger.error("kafka %s could not start; retrying", what, extra={"error": repr(exc)})
            await sleep_unless_stopped(stop, 5.0)
            continue
        return not stop.is_set()
    return False


async def _until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await ``work`` unless ``stop`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None
