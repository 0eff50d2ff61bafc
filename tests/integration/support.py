"""Helpers for integration tests: topics, producing, reading outcomes, running the service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from consumer.devkit.broker import EmbeddedBroker, create_topics
from consumer.devkit.emulator import SalesforceEmulator
from consumer.devkit.emulator.fields import example_custom_fields
from consumer.mapping import MappingConfig, TargetPlan, load_mapping
from consumer.model.changes import ConsentChange, PersonWrite, Sourced
from consumer.model.messages import email_key
from consumer.observability.metrics import Metrics
from consumer.service import Service
from consumer.settings import Settings
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from tests.integration.scenario import Scenario

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLES = FIXTURES / "samples"
#: The project's example mapping (Didomi's sample, plus the per-field sync state).
EXAMPLE_MAPPING = FIXTURES / "mapping.example.yaml"
CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret-value-0123456789"


def on_real_kafka() -> bool:
    """True when the tests run on Apache Kafka (``KAFKA_TEST_BOOTSTRAP`` or testcontainers)."""
    return bool(
        os.environ.get("KAFKA_TEST_BOOTSTRAP") or os.environ.get("KAFKA_TEST_TESTCONTAINERS")
    )


def group_timeouts() -> tuple[int, int]:
    """(session timeout, heartbeat interval) in ms for every group member the tests start.

    On the embedded broker a join takes half the session timeout, rounded up to a second (3 s
    at 6 s, 1 s at 2 s), and every service start joins; the first member a group had, once
    gone, delays the next join by about twice its session (11 s at 6 s, 4 s at 2 s). A 2 s
    session still lets a member's event loop stall 1.5 s before it is evicted: the longest
    stall measured in a test, with 4 xdist workers on 2 cores, was 0.4 s (the soak). Apache
    Kafka refuses sessions under 6 s.
    """
    return (6000, 1000) if on_real_kafka() else (2000, 500)


def _listening_socket_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on IPv4 ``port`` (None where /proc is missing)."""
    try:
        lines = Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return None
    inodes = set()
    for line in lines:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _holds_its_port(broker: EmbeddedBroker) -> bool:
    """Whether the socket listening on the broker's port is the broker process's own."""
    inodes = _listening_socket_inodes(broker.port)
    if inodes is None or broker.pid is None:
        return True  # cannot tell without /proc; nothing else to do there
    for fd in Path(f"/proc/{broker.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
                return True
    return False


@contextlib.contextmanager
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """An embedded broker that is surely this process's own.

    Its port is picked free, then bound by the broker a moment later: another pytest-xdist
    worker starting its broker at the same time may pick the same port, and the readiness
    check (a connection) would then succeed on the other worker's broker. Checked, and retried
    on another port.
    """
    for _ in range(5):
        broker = EmbeddedBroker()
        broker.start()
        if _holds_its_port(broker):
            break
        broker.stop()
    else:
        raise RuntimeError("no embedded broker could hold a port of its own")
    try:
        yield broker
    finally:
        broker.stop()


def make_emulator(**kwargs: Any) -> SalesforceEmulator:
    """An emulator with the fields of the example mapping."""
    return SalesforceEmulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        custom_fields=example_custom_fields(),
        **kwargs,
    )


def example_mapping() -> MappingConfig:
    return load_mapping(EXAMPLE_MAPPING)


def emulator_settings(emulator: SalesforceEmulator, **overrides: Any) -> Settings:
    """Settings that log in to ``emulator`` (plus ``overrides``)."""
    return Settings(
        salesforce_token_url=emulator.url,
        salesforce_client_id=CLIENT_ID,
        salesforce_client_secret=SecretStr(CLIENT_SECRET),
        **overrides,
    )


def batch_of(changes: Sequence[ConsentChange], plans: Sequence[TargetPlan]) -> list[PersonWrite]:
    """The people of one batch holding ``changes`` (in this order, partition 0), mapped by
    ``plans``: what the engine hands its writers."""
    merged = merge_by_person(
        Sourced(c, 0, i, i, map_change(c, plans)) for i, c in enumerate(changes)
    )
    return list(merged.values())


@dataclass
class Topics:
    """Unique topic names for one test."""

    input: str
    results: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls) -> Topics:
        tag = uuid.uuid4().hex[:10]
        return cls(f"in-{tag}", f"results-{tag}", f"dlq-{tag}", f"group-{tag}")


async def make_topics(bootstrap: str, topics: Topics, partitions: int = 3) -> None:
    await create_topics(bootstrap, [topics.input], partitions=partitions)
    await create_topics(bootstrap, [topics.results, topics.dlq], partitions=1)


async def scenario_topics(bootstrap: str, scenario: Scenario, partitions: int = 3) -> Topics:
    """Fresh topics with the scenario's messages already on the input topic."""
    topics = Topics.fresh()
    await make_topics(bootstrap, topics, partitions)
    await produce(bootstrap, topics.input, [(m.key, m.value) for m in scenario.messages])
    return topics


def settings_for(bootstrap: str, topics: Topics, emulator_url: str, **overrides: Any) -> Settings:
    session_ms, heartbeat_ms = group_timeouts()
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_input_topic": topics.input,
        "kafka_results_topic": topics.results,
        "kafka_dlq_topic": topics.dlq,
        "kafka_group_id": topics.group,
        "kafka_session_timeout_ms": session_ms,
        "kafka_heartbeat_interval_ms": heartbeat_ms,
        "salesforce_token_url": emulator_url,
        "salesforce_client_id": CLIENT_ID,
        "salesforce_client_secret": CLIENT_SECRET,
        "salesforce_retry_initial_seconds": 0.05,
        "salesforce_retry_max_seconds": 0.5,
        "salesforce_retry_budget_seconds": 30,
        "sync_batch_linger_ms": 200,
        "sync_commit_interval_ms": 200,
        "sync_mapping_file": EXAMPLE_MAPPING,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "log_format": "text",
    }
    values.update(overrides)
    return Settings(**values)


async def produce(
    bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]]
) -> None:
    """Send (key, value) pairs in order and wait for all acknowledgements."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=16 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


#: Header of the marker records ``Collected.read_to_end`` writes; the collector skips them.
MARKER_HEADER = "x-test-read-marker"


@dataclass
class Collected:
    """Records read from an output topic (partition 0, the only one output topics have)."""

    bootstrap: str
    topic: str
    records: list[Any] = field(default_factory=list)
    #: The offset after the last record read (markers included).
    read_to: int = 0
    _positions: set[tuple[int, int]] = field(default_factory=set)
    _parsed: int = 0

    def values(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records]

    def positions(self) -> set[tuple[int, int]]:
        """(partition, offset) of every input with an outcome so far (outcome topics only).

        Parses only what arrived since the last call: cheap to poll in ``wait_for``.
        """
        for record in self.records[self._parsed :]:
            source = orjson.loads(record.value)["source"]
            self._positions.add((source["partition"], source["offset"]))
        self._parsed = len(self.records)
        return self._positions

    async def read_to_end(self, timeout: float = 30.0) -> None:
        """Wait until every record written to the topic before this call has been read.

        Writes a marker record and waits for the collector to pass it: a positive proof,
        where waiting "long enough" is a guess (and the embedded broker's end offsets are
        wrong, so they cannot be asked for).
        """
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            meta = await producer.send_and_wait(
                self.topic, value=b"", partition=0, headers=[(MARKER_HEADER, b"")]
            )
        finally:
            await producer.stop()
        await wait_for(lambda: self.read_to > meta.offset, timeout, f"the end of {self.topic}")


@contextlib.asynccontextmanager
async def collect(bootstrap: str, topic: str) -> AsyncIterator[Collected]:
    """Read a topic from the start in the background while the block runs."""
    out = Collected(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.seek_to_beginning()

    async def pump() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for msg in msgs:
                    if not any(key == MARKER_HEADER for key, _ in msg.headers):
                        out.records.append(msg)
                    out.read_to = msg.offset + 1

    task = asyncio.create_task(pump())
    try:
        yield out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


async def wait_for(predicate: Callable[..., object], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true, polling; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class RunningService:
    service: Service
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def finish(self, timeout: float = 30.0) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, timeout)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, mapping: MappingConfig | None = None
) -> AsyncIterator[RunningService]:
    """The service running in this event loop; stopped (gracefully) at the end."""
    service = Service(settings, mapping or example_mapping(), Metrics(CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    running = RunningService(service, stop, task)
    try:
        yield running
    finally:
        if not task.done():
            stop.set()
            await asyncio.wait_for(task, 60)


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int | None]:
    """The group's committed offsets (read without joining the group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


def sample_value(
    registry_metrics: Metrics, name: str, labels: dict[str, str] | None = None
) -> float:
    """A metric's current value (0 when never set)."""
    value = registry_metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def service_env(bootstrap: str, topics: Topics, emulator_url: str, **extra: str) -> dict[str, str]:
    """Environment for ``python -m consumer run`` as its own process."""
    session_ms, heartbeat_ms = group_timeouts()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "SALESFORCE_", "SYNC_", "METRICS_", "LOG_"))
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_INPUT_TOPIC": topics.input,
            "KAFKA_RESULTS_TOPIC": topics.results,
            "KAFKA_DLQ_TOPIC": topics.dlq,
            "KAFKA_GROUP_ID": topics.group,
            "KAFKA_SESSION_TIMEOUT_MS": str(session_ms),
            "KAFKA_HEARTBEAT_INTERVAL_MS": str(heartbeat_ms),
            "SALESFORCE_TOKEN_URL": emulator_url,
            "SALESFORCE_CLIENT_ID": CLIENT_ID,
            "SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
            "SALESFORCE_RETRY_INITIAL_SECONDS": "0.05",
            "SALESFORCE_RETRY_MAX_SECONDS": "0.5",
            "SYNC_MAPPING_FILE": str(EXAMPLE_MAPPING),
            "SYNC_BATCH_LINGER_MS": "100",
            "SYNC_COMMIT_INTERVAL_MS": "200",
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


class ServiceProcess:
    """``python -m consumer run`` in its own process, its logs in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - before the process runs
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer", "run", env=self._env, stdout=log, stderr=log
            )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


# --- the Salesforce side of a scenario -------------------------------------------------


def by_email(emulator: SalesforceEmulator, sobject: str) -> dict[str, list[dict[str, Any]]]:
    """Every record of ``sobject`` by its case-folded Email, in creation order.

    What ``emulator.find_by_email`` answers for one email, for all of them at once (it copies
    every record on each call, which is quadratic over thousands of people).
    """
    index: dict[str, list[dict[str, Any]]] = {}
    for record in emulator.records(sobject):
        if isinstance(record.get("Email"), str):
            index.setdefault(record["Email"].casefold(), []).append(record)
    return index


def seed(emulator: SalesforceEmulator, scenario: Scenario) -> None:
    for records in scenario.contact_seed.values():
        for record in records:
            emulator.seed("Contact", record)
    for record in scenario.lead_seed.values():
        emulator.seed("Lead", record)


def assert_final_state(emulator: SalesforceEmulator, scenario: Scenario) -> None:
    """Every person's records hold exactly the latest choices; nobody else changed."""
    expected_contacts = scenario.expected_contacts()
    contacts = by_email(emulator, "Contact")
    for person, email in enumerate(scenario.emails):
        records = contacts.get(email.casefold(), [])
        want = expected_contacts.get(person)
        seeded = scenario.contact_seed.get(person, [])
        if want is None:
            assert len(records) == len(seeded), (email, records)
            for r in records:
                assert r["Newsletter_Consent__c"] is False
            continue
        assert len(records) == max(1, len(seeded)), (email, records)
        for record in records:
            for name, value in want.items():
                assert record[name] == value, (email, name, record[name], value)
        if not seeded:
            assert records[0]["LastName"] == "Unknown"
            assert email_key(records[0]["Email"]) == email_key(email)
    expected_leads = scenario.expected_leads()
    all_leads = by_email(emulator, "Lead")
    for person, email in enumerate(scenario.emails):
        leads = all_leads.get(email.casefold(), [])
        if person not in scenario.lead_seed:
            assert leads == [], email  # upsert_mode is off for Lead
            continue
        assert len(leads) == 1
        want_newsletter = expected_leads.get(person, {}).get("Newsletter_Consent__c", False)
        assert leads[0]["Newsletter_Consent__c"] is want_newsletter, email


def assert_outcomes(outcomes: list[dict[str, Any]], scenario: Scenario, topic: str) -> None:
    """One outcome per input message, with the status its kind calls for."""
    by_position: dict[tuple[int, int], dict[str, Any]] = {}
    for o in outcomes:
        src = o["source"]
        assert src["topic"] == topic
        position = (src["partition"], src["offset"])
        assert position not in by_position, f"two outcomes for {position}"
        by_position[position] = o
    assert len(by_position) == len(scenario.messages)
    kinds = Counter(m.kind for m in scenario.messages)
    statuses = Counter(o["status"] for o in outcomes)
    assert statuses["rejected"] == kinds["rejected"]
    assert statuses["ignored"] == kinds["ignored"]
    assert statuses["failed"] == 0
    assert statuses["updated"] + statuses["created"] + statuses["not_found"] == kinds["valid"]
    for o in outcomes:
        for target in o.get("targets", []):
            assert target["status"] in {"updated", "created", "not_found"}
            if target["sobject"] == "Lead" and target["status"] == "not_found":
                assert not target.get("record_ids")
    assert any(
        "share this email" in (t.get("note") or "") for o in outcomes for t in o.get("targets", [])
    )
