"""The service: wires adapters and the pipeline together and owns their lifecycle.

Start order: metrics server, Salesforce (session, mapping check), producer, consumer.
Stop order (uvicorn/arq style): stop polling, flush in-flight batches, publish their outcomes,
commit, then close the consumer, the producer, Salesforce and the metrics server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError

from consumer.engine.health import Health
from consumer.engine.pipeline import Pipeline
from consumer.errors import AuthenticationError, SalesforceTransientError
from consumer.kafka.clients import make_consumer, make_producer
from consumer.mapping import MappingConfig
from consumer.observability.metrics import Metrics
from consumer.observability.server import MetricsServer
from consumer.salesforce.check import CheckReport, check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter
from consumer.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Exit codes of ``run``.
EXIT_OK = 0
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
        self.client = SalesforceClient(settings, self.metrics)
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
            self.health.salesforce_ok = True
            await self._consume(report, stop)
            return EXIT_OK
        finally:
            await self.client.stop()
            await self.server.stop()

    async def _prepare(self, stop: asyncio.Event) -> CheckReport:
        """Check the mapping against the org, retrying while Salesforce is unreachable."""
        while True:
            try:
                return await check_mapping(self.client, self.mapping)
            except AuthenticationError as exc:
                self.health.salesforce_ok = False
                delay = self.settings.salesforce_auth_retry_seconds
                logger.error("salesforce refused the login", extra={"error": str(exc)})
            except SalesforceTransientError as exc:
                delay = self.settings.salesforce_retry_max_seconds
                logger.warning("salesforce unreachable at start-up", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _consume(self, report: CheckReport, stop: asyncio.Event) -> None:
        s = self.settings
        writers = [TargetWriter(self.client, plan, s) for plan in report.plans]
        producer = make_producer(s)
        consumer = make_consumer(s)
        if not await _start_with_retries(producer.start, stop, "producer"):
            await producer.stop()
            return
        try:
            pipeline = Pipeline(
                s,
                report.plans,
                self.mapping.regulations,
                writers,
                consumer,
                producer,
                self.metrics,
                self.health,
            )
            self.pipeline = pipeline
            consumer.subscribe([s.kafka_input_topic], listener=pipeline.listener())
            try:
                # start() waits for the first assignment, which can take a session timeout;
                # a stop during that wait must still end the process promptly.
                if not await _start_with_retries(consumer.start, stop, "consumer"):
                    return
                await pipeline.run(stop)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()


async def _start_with_retries(
    start: Callable[[], Awaitable[None]], stop: asyncio.Event, what: str
) -> bool:
    """Start a Kafka client, retrying while the brokers are unreachable; False if stopped."""
    while not stop.is_set():
        try:
            await _until_stopped(start(), stop)
        except KafkaError as exc:
            logger.error("kafka %s could not start; retrying", what, extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
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
