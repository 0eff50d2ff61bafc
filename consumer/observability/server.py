"""The HTTP adapter for operations: /metrics, /healthz, /readyz."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.engine.health import Health
from consumer.observability.metrics import Metrics

logger = logging.getLogger(__name__)


class MetricsServer:
    """Serves metrics and health on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        metrics: Metrics,
        health: Health,
        *,
        host: str,
        port: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Start serving (idempotent)."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        logger.info("metrics and health served", extra={"port": self.port})

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _serve_metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        ok, why = self._health.live(self._clock())
        return web.json_response(
            {"status": "ok" if ok else "failing", "detail": why}, status=200 if ok else 503
        )

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self._health.ready()
        self._metrics.ready.set(1 if ok else 0)
        return web.json_response(
            {"status": "ready" if ok else "not ready", "detail": why}, status=200 if ok else 503
        )
