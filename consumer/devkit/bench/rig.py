"""The rig one measurement runs on: an embedded broker, the emulator as its own process, and
the measured process (the service or the passthrough) draining a topic while the bench watches.

Nothing here knows what is measured; :mod:`consumer.devkit.bench.scenarios` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from consumer.devkit.bench.kafka_io import Watch, Watcher
from consumer.devkit.bench.procs import (
    Child,
    Children,
    cpu_seconds,
    machine_cpu,
    memory_kib,
    wait_for_line,
)
from consumer.devkit.broker import EmbeddedBroker, create_topics

CLIENT_ID = "bench-client-id"
CLIENT_SECRET = "bench-client-secret"  # the emulator's; never a real credential
#: High enough that the service's API budget share (90% of the daily limit) never pauses it.
API_LIMIT = 1_000_000_000


class Emulator:
    """``python -m consumer.devkit.emulator --control --journal`` as its own process."""

    def __init__(self, child: Child, url: str) -> None:
        self.child = child
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def start(cls, children: Children, workdir: Path, latency_ms: float) -> Emulator:
        """Start it (a free port) and wait for its URL."""
        log = workdir / f"emulator-{uuid.uuid4().hex[:6]}.log"
        args = ["-m", "consumer.devkit.emulator", "--port", "0", "--control", "--journal"]
        args += ["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
        args += ["--api-limit", str(API_LIMIT), "--latency-ms", f"{latency_ms:g}"]
        child = children.python("emulator", args, env={}, log=log, cwd=workdir)
        found = wait_for_line(child, r"listening on (http://\S+)")
        return cls(child, found.group(1))

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        return self._session

    async def _get(self, path: str, **params: str) -> Any:
        session = await self._http()
        async with session.get(f"{self.url}/_emulator/{path}", params=params) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def seed(self, sobject: str, records: Sequence[dict[str, Any]]) -> None:
        """Insert records (in chunks, so no request is huge)."""
        session = await self._http()
        for start in range(0, len(records), 5000):
            body = {"sobject": sobject, "records": list(records[start : start + 5000])}
            async with session.post(f"{self.url}/_emulator/seed", json=body) as resp:
                resp.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        """Counters, API usage, records per sObject and the journal summary."""
        result: dict[str, Any] = await self._get("stats")
        return result

    async def journal(self, calls: int = 0, writes: int = 0) -> dict[str, Any]:
        """Journal entries from these positions on."""
        result: dict[str, Any] = await self._get("journal", calls=str(calls), writes=str(writes))
        return result

    async def reset(self) -> None:
        """Zero the counters and empty the journal."""
        session = await self._http()
        async with session.post(f"{self.url}/_emulator/reset") as resp:
            resp.raise_for_status()

    async def close(self) -> None:
        """Close the HTTP session (the process is stopped by its :class:`Children`)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class Topics:
    """Topic and group names of one run."""

    input: str
    results: str
    dlq: str
    group: str
    #: What the service remembers of people's recent choices (KAFKA_CHOICES_TOPIC), set
    #: as the deployment sets it.
    choices: str

    @classmethod
    def fresh(cls, label: str) -> Topics:
        """Unique names (runs sharing a broker never meet)."""
        tag = f"{label}-{uuid.uuid4().hex[:6]}"
        return cls(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}", f"choices-{tag}")


async def make_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    """The input topic and the choices topic with ``partitions``; results and dead letters
    with one each (as the demo and the deployment have them)."""
    await create_topics(bootstrap, [topics.input, topics.choices], partitions=partitions)
    await create_topics(bootstrap, [topics.results, topics.dlq], partitions=1)


@dataclass
class CpuWindow:
    """CPU seconds of each process and of the machine between two moments."""

    seconds: float = 0.0
    by_process: dict[str, float] = field(default_factory=dict)
    machine_busy: float = math.nan
    cores: int = 1

    def shares(self) -> dict[str, float]:
        """Each process's CPU as a share of one core over the window."""
        if self.seconds <= 0:
            return {}
        return {k: v / self.seconds for k, v in self.by_process.items() if not math.isnan(v)}

    def machine_share(self) -> float:
        """The machine's busy CPU as a share of all its cores."""
        return self.machine_busy / (self.seconds * self.cores) if self.seconds > 0 else math.nan

    def describe(self) -> str:
        """``service 97%, broker 31%, ... of a core; machine 88% of 2 cores (others 12%)``."""
        shares = self.shares()
        parts = [f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])]
        ours = sum(shares.values())
        machine = self.machine_share()
        others = max(0.0, machine * self.cores - ours)
        return (
            f"CPU (share of one core): {', '.join(parts)}; machine {machine:.0%} of "
            f"{self.cores} cores busy, {others:.0%} of a core by processes outside this run"
        )

    def saturated(self) -> str:
        """Which resource was saturated, in words ("" when none clearly was)."""
        shares = self.shares()
        found = [f"the {k} process ({v:.0%} of a core)" for k, v in shares.items() if v >= 0.85]
        if self.machine_share() >= 0.9:
            found.append(f"the whole machine ({self.machine_share():.0%} of {self.cores} cores)")
        return " and ".join(found)


class CpuMeter:
    """Snapshots of processes' CPU, to measure a window."""

    def __init__(self, processes: dict[str, int | None], cores: int) -> None:
        self._processes = processes
        self._cores = cores
        self._start: tuple[float, dict[str, float], float] | None = None

    def start(self) -> None:
        """Mark the window's start."""
        self._start = (time.monotonic(), self._sample(), machine_cpu()[0])

    def _sample(self) -> dict[str, float]:
        return {k: cpu_seconds(pid) for k, pid in self._processes.items()}

    def stop(self) -> CpuWindow:
        """The window from :meth:`start` to now."""
        if self._start is None:
            return CpuWindow(cores=self._cores)
        began, before, busy = self._start
        after = self._sample()
        return CpuWindow(
            seconds=time.monotonic() - began,
            by_process={k: after[k] - before[k] for k in after},
            machine_busy=machine_cpu()[0] - busy,
            cores=self._cores,
        )


@dataclass
class Drain:
    """What one drain of a backlog gave."""

    label: str
    expected: int
    seen: Watch
    finished: bool
    cpu: CpuWindow
    peak_rss_kib: int | None = None
    exit_code: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    log: Path | None = None
    #: (outputs seen, resident KiB) about once a second while it ran.
    rss: list[tuple[int, int]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """From the first output record's timestamp to the last one's."""
        if self.seen.first_ms is None or self.seen.last_ms is None:
            return math.nan
        return max(1e-3, (self.seen.last_ms - self.seen.first_ms) / 1000)

    @property
    def rate(self) -> float:
        """Messages per second over :attr:`seconds` (NaN when it did not finish)."""
        if not self.finished:
            return math.nan
        return self.seen.count / self.seconds


def service_env(
    bootstrap: str, topics: Topics, emulator: Emulator, mapping: Path, metrics_port: int
) -> dict[str, str]:
    """The service's settings, as environment variables (README, Configuration); everything
    not named here keeps its default."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_INPUT_TOPIC": topics.input,
        "KAFKA_RESULTS_TOPIC": topics.results,
        "KAFKA_DLQ_TOPIC": topics.dlq,
        "KAFKA_CHOICES_TOPIC": topics.choices,
        "KAFKA_GROUP_ID": topics.group,
        "SALESFORCE_TOKEN_URL": emulator.url,
        "SALESFORCE_CLIENT_ID": CLIENT_ID,
        "SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
        "SYNC_MAPPING_FILE": str(mapping),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
    }


async def scrape(port: int) -> dict[str, float]:
    """The service's ``/metrics`` as ``name{label=value,...}`` -> value (empty if down)."""
    out: dict[str, float] = {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


class Rig:
    """One broker (and whatever else a measurement starts), stopped on :meth:`close`."""

    def __init__(self, children: Children, workdir: Path, cores: int) -> None:
        self.children = children
        self.workdir = workdir
        self.cores = cores
        self.broker = EmbeddedBroker(log_path=str(workdir / f"broker-{uuid.uuid4().hex[:6]}.log"))
        self._emulators: list[Emulator] = []

    async def __aenter__(self) -> Rig:
        self.children.watch(self.broker.stop)
        await asyncio.to_thread(self.broker.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def bootstrap(self) -> str:
        """The broker's ``host:port``."""
        return self.broker.bootstrap

    def emulator(self, latency_ms: float) -> Emulator:
        """Start an emulator process for this rig."""
        emu = Emulator.start(self.children, self.workdir, latency_ms)
        self._emulators.append(emu)
        return emu

    async def close(self) -> None:
        """Stop the emulators and the broker."""
        for emu in self._emulators:
            await emu.close()
            self.children.stop(emu.child, timeout=10)
        self._emulators.clear()
        await asyncio.to_thread(self.broker.stop)
        self.children.unwatch(self.broker.stop)

    def write_mapping(self, text: str) -> Path:
        """A mapping file for the service."""
        path = self.workdir / f"mapping-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    async def drain(
        self,
        label: str,
        args: list[str],
        env: dict[str, str],
        topics: Topics,
        expected: int,
        *,
        timeout: float,
        others: dict[str, int | None] | None = None,
        metrics_port: int | None = None,
    ) -> Drain:
        """Start ``python <args>`` to drain ``topics.input``; wait for ``expected`` records on
        ``topics.results``; read its peak memory and metrics; stop it (SIGTERM, drained)."""
        log = self.workdir / f"{label}-{uuid.uuid4().hex[:6]}.log"
        child: Child | None = None
        meter: CpuMeter | None = None

        def first() -> None:
            # CPU is measured over the same window as the rate: first output to last.
            if meter is not None:
                meter.start()

        watcher = Watcher(self.bootstrap, topics.results, on_first=first)
        await watcher.start()
        try:
            child = self.children.python(label, args, env=env, log=log, cwd=self.workdir)
            meter = CpuMeter(
                {label: child.pid, "broker": self.broker.pid, **(others or {})}, self.cores
            )
            rss: list[tuple[int, int]] = []
            sampler = asyncio.create_task(_sample_rss(child.pid, watcher, rss))
            try:
                finished = await watcher.wait_for(expected, timeout=timeout, alive=child.alive)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            cpu = meter.stop()
            peak = memory_kib(child.pid)
            metrics = await scrape(metrics_port) if metrics_port is not None else {}
            code = await asyncio.to_thread(self.children.stop, child)
            child = None
            # Anything published after the count was reached (a duplicate) arrives by now.
            await asyncio.sleep(1.0)
            return Drain(
                label, expected, watcher.seen, finished, cpu, peak, code, metrics, log, rss
            )
        finally:
            if child is not None:
                await asyncio.to_thread(self.children.stop, child)
            await watcher.stop()


async def _sample_rss(pid: int, watcher: Watcher, out: list[tuple[int, int]]) -> None:
    """Note the process's resident memory against the outputs seen, once a second."""
    while True:
        rss = memory_kib(pid, "VmRSS")
        if rss is not None:
            out.append((watcher.seen.count, rss))
        await asyncio.sleep(1.0)
