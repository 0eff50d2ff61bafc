"""``replay`` and ``redrive`` as an operator runs them: subprocesses against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumer.devkit.broker import create_topics
from tests.integration.support import committed_offsets

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

Headers = list[tuple[str, bytes]]


def tag() -> str:
    return uuid.uuid4().hex[:10]


@dataclass(frozen=True)
class Broker:
    """The test broker and the group session timeout to use on it.

    A join on the embedded broker takes about half the session timeout of the group's first
    member, and a group's first member that leaves is only forgotten after its session
    expires: short sessions keep the file fast. Apache Kafka refuses sessions under 6 s.
    """

    bootstrap: str
    session_ms: int

    async def cli(self, *args: str, **env: str) -> tuple[int, str, str]:
        """``python -m consumer ARGS`` with only Kafka settings (no Salesforce, no mapping)."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "SALESFORCE_", "SYNC_", "METRICS_", "LOG_"))
        }
        kafka = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SESSION_TIMEOUT_MS": str(self.session_ms),
            "KAFKA_HEARTBEAT_INTERVAL_MS": str(self.session_ms // 4),
            "LOG_FORMAT": "text",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            *args,
            env={**clean, **kafka, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def commit_as_member(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit as a group member: subscribe, get the assignment, commit, leave."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=self.session_ms,
            heartbeat_interval_ms=self.session_ms // 4,
        )
        await consumer.start()  # returns once the group has given an assignment
        try:
            await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
        finally:
            await consumer.stop()


@pytest.fixture
def broker(kafka_bootstrap: str, real_kafka: bool) -> Broker:
    return Broker(kafka_bootstrap, 6000 if real_kafka else 1000)


async def send(
    bootstrap: str, topic: str, records: Sequence[tuple[int, bytes | None, bytes, Headers]]
) -> None:
    """Produce (partition, key, value, headers) records, batched, and wait for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=v, key=k, partition=p, headers=h)
            for p, k, v, h in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, partitions: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record written to the topic before this call.

    Read until each partition's position reaches the high watermark that a fetch answered
    after the call began (end offsets cannot be asked: the embedded broker answers them
    wrongly).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        out: list[ConsumerRecord[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                out.extend(records)
            ends = [consumer.highwater(tp) for tp in tps]
            if None not in ends:
                positions = [await consumer.position(tp) for tp in tps]
                if all(p >= e for p, e in zip(positions, ends, strict=True)):
                    return out
            assert loop.time() < deadline, f"{topic} not read to its end: {ends}"
    finally:
        await consumer.stop()


# --- replay ------------------------------------------------------------------------------


async def test_replay_plans_then_moves_the_group_offsets(broker: Broker) -> None:
    kafka_bootstrap = broker.bootstrap
    topic, group = f"replay-{tag()}", f"group-{tag()}"
    env = {"KAFKA_INPUT_TOPIC": topic, "KAFKA_GROUP_ID": group}
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    # Ten messages per partition, sent in batches (so that the embedded broker's ListOffsets
    # "latest" is wrong and the fetch high watermark has to be used).
    await send(kafka_bootstrap, topic, [(i % 3, b"k", b"v%d" % i, []) for i in range(30)])
    await broker.commit_as_member(group, topic, {0: 7, 1: 5, 2: 9})

    code, out, err = await broker.cli("replay", "--to-earliest", "--dry-run", **env)
    assert code == 0, err
    assert f"group {group}, topic {topic}" in out
    assert "partition 0: committed 7 -> 0 (-7) [log 0..10]" in out
    assert "partition 1: committed 5 -> 0 (-5)" in out
    assert "partition 2: committed 9 -> 0 (-9)" in out
    assert out.rstrip().endswith("dry run: nothing changed")
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 7, 1: 5, 2: 9}

    code, out, err = await broker.cli("replay", "--to-earliest", **env)
    assert code == 0, err
    assert out.rstrip().endswith("committed")
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 0, 1: 0, 2: 0}

    code, out, err = await broker.cli("replay", "--to-offset", "5", **env)
    assert code == 0, err
    assert "partition 2: committed 0 -> 5 (+5)" in out
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 5, 1: 5, 2: 5}

    code, out, err = await broker.cli("replay", "--shift-by", "-2", "--partition", "1", **env)
    assert code == 0, err
    assert "partition 1: committed 5 -> 3 (-2)" in out
    assert "partition 0" not in out and "partition 2" not in out
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 5, 1: 3, 2: 5}

    # Past the end: clamped to the real end of each partition.
    code, out, err = await broker.cli("replay", "--shift-by", "100", **env)
    assert code == 0, err
    assert "partition 1: committed 3 -> 10 (+7) [log 0..10]; clamped to latest 10" in out
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 10, 1: 10, 2: 10}


@contextlib.asynccontextmanager
async def live_member(broker: Broker, group: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A subscribed consumer that has its assignment and keeps polling (like the service)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=broker.session_ms,
        heartbeat_interval_ms=broker.session_ms // 4,
    )
    await consumer.start()

    async def poll() -> None:
        while True:
            await consumer.getmany(timeout_ms=200)

    task = asyncio.create_task(poll())
    try:
        yield consumer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


async def test_replay_refuses_while_the_group_has_a_live_member(broker: Broker) -> None:
    kafka_bootstrap = broker.bootstrap
    topic, group = f"replay-{tag()}", f"group-{tag()}"
    env = {"KAFKA_INPUT_TOPIC": topic, "KAFKA_GROUP_ID": group}
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    await send(kafka_bootstrap, topic, [(i % 3, None, b"v", []) for i in range(9)])
    everything = {TopicPartition(topic, p) for p in range(3)}
    async with live_member(broker, group, topic) as member:
        assert member.assignment() == everything
        await member.commit({TopicPartition(topic, p): 2 for p in range(3)})

        code, out, err = await broker.cli("replay", "--to-earliest", **env)
        assert code == 3, out + err
        assert f"stop the service first: group {group} has 1 live member" in err
        assert "committed" not in out
        assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 2, 1: 2, 2: 2}

        # The member was disturbed by one brief join only: it gets every partition back.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while member.assignment() != everything:
            assert loop.time() < deadline, f"still {member.assignment()}"
            await asyncio.sleep(0.1)


async def test_replay_to_datetime(broker: Broker, real_kafka: bool) -> None:
    kafka_bootstrap = broker.bootstrap
    if not real_kafka:
        pytest.skip("needs Apache Kafka: the embedded broker answers offsets_for_times wrongly")
    topic, group = f"replay-{tag()}", f"group-{tag()}"
    env = {"KAFKA_INPUT_TOPIC": topic, "KAFKA_GROUP_ID": group}
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    await send(kafka_bootstrap, topic, [(i % 3, None, b"old", []) for i in range(12)])
    await asyncio.sleep(1.0)
    when = datetime.now(UTC)
    await asyncio.sleep(1.0)
    # Partition 2 gets nothing after the time: it goes to its end.
    await send(kafka_bootstrap, topic, [(i % 2, None, b"new", []) for i in range(6)])

    code, out, err = await broker.cli("replay", "--to-datetime", when.isoformat(), **env)
    assert code == 0, err
    assert "no message at or after the time: latest" in out
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == {0: 4, 1: 4, 2: 4}


async def test_replay_to_datetime_refuses_a_wrong_time_index_answer(
    broker: Broker, real_kafka: bool
) -> None:
    kafka_bootstrap = broker.bootstrap
    if real_kafka:
        pytest.skip("Apache Kafka answers offsets_for_times correctly")
    # Asked for a time after the last message, the embedded broker names offset 0 (Kafka
    # answers "none"); replay reads that message, sees it is older and changes nothing.
    topic, group = f"replay-{tag()}", f"group-{tag()}"
    env = {"KAFKA_INPUT_TOPIC": topic, "KAFKA_GROUP_ID": group}
    await create_topics(kafka_bootstrap, [topic], partitions=1)
    await send(kafka_bootstrap, topic, [(0, None, b"old", [])] * 3)
    await asyncio.sleep(0.3)
    when = datetime.now(UTC).replace(tzinfo=None)  # naive: read as UTC

    code, _, err = await broker.cli("replay", "--to-datetime", when.isoformat(), **env)
    assert code == 1, err
    assert "cannot look offsets up by time" in err and "nothing was changed" in err
    assert await committed_offsets(kafka_bootstrap, group, topic, 1) == {0: None}


async def test_replay_bad_arguments_exit_2(broker: Broker) -> None:
    kafka_bootstrap = broker.bootstrap
    topic = f"replay-{tag()}"
    env = {"KAFKA_INPUT_TOPIC": topic, "KAFKA_GROUP_ID": f"group-{tag()}"}
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    code, _, err = await broker.cli("replay", "--to-offset", "3", "--partition", "5", **env)
    assert code == 2
    assert f"topic {topic} has no partition 5" in err
    code, _, err = await broker.cli("replay", "--to-earliest", "--shift-by", "1", **env)
    assert code == 2 and "not allowed with argument" in err
    code, _, err = await broker.cli("replay", "--to-datetime", "yesterday", **env)
    assert code == 2 and "not an ISO-8601 time" in err


# --- redrive -----------------------------------------------------------------------------


def dead_letter(cls: str, offset: int, first_seen: str) -> Headers:
    """Headers of a dead letter as the service writes them, after an original header."""
    return [
        ("trace-id", f"trace-{offset}".encode()),
        ("x-dlq-error-class", cls.encode()),
        ("x-dlq-reason", f"{cls} happened".encode()),
        ("x-dlq-source-topic", b"didomi.consent-events"),
        ("x-dlq-source-partition", b"0"),
        ("x-dlq-source-offset", str(offset).encode()),
        ("x-dlq-first-seen", first_seen.encode()),
        ("x-dlq-event-id", f"event-{offset}".encode()),
    ]


def source_of(record: ConsumerRecord[bytes, bytes]) -> str:
    value: bytes = dict(record.headers)["x-redriven-from"]
    return value.decode()


async def test_redrive_by_error_class(broker: Broker) -> None:
    kafka_bootstrap = broker.bootstrap
    t = tag()
    dlq, target, group = f"dlq-{t}", f"in-{t}", f"group-{t}"
    env = {"KAFKA_DLQ_TOPIC": dlq, "KAFKA_INPUT_TOPIC": target, "KAFKA_GROUP_ID": group}
    await create_topics(kafka_bootstrap, [dlq], partitions=2)
    await create_topics(kafka_bootstrap, [target], partitions=3)
    first_seen = "2026-11-20T09:14:03.512000+00:00"
    # Classes interleaved: partition 0 is B A A B A, partition 1 is A B A.
    layout = {0: "BAABA", 1: "ABA"}
    records = [
        (p, f"key-{p}-{o}".encode(), f"value-{p}-{o}".encode(), dead_letter(cls, o, first_seen))
        for p, classes in layout.items()
        for o, cls in enumerate(classes)
    ]
    await send(kafka_bootstrap, dlq, records)
    originals = {
        f"{dlq}/{p}/{o}": (k, v, h)
        for p, classes in layout.items()
        for o, (_, k, v, h) in enumerate(r for r in records if r[0] == p)
    }

    code, out, err = await broker.cli("redrive", "--error-class", "A", "--dry-run", **env)
    assert code == 0, err
    assert "A: would redrive 5, skipped 0, already redriven 0" in out
    assert "B: would redrive 0, skipped 3, already redriven 0" in out
    assert "dry run: nothing published, nothing committed" in out
    assert await read_all(kafka_bootstrap, target, 3) == []
    assert await committed_offsets(kafka_bootstrap, f"{group}-redrive", dlq, 2) == {
        0: None,
        1: None,
    }

    code, out, err = await broker.cli("redrive", "--error-class", "A", "--limit", "2", **env)
    assert code == 0, err
    assert "A: redriven 2" in out and "stopped at --limit 2" in out
    code, out, err = await broker.cli("redrive", "--error-class", "A", **env)
    assert code == 0, err
    assert "A: redriven 3, skipped 0, already redriven 2" in out
    assert "B: redriven 0, skipped 3" in out
    redriven = await read_all(kafka_bootstrap, target, 3)
    assert sorted(source_of(r) for r in redriven) == sorted(
        f"{dlq}/{p}/{o}" for p, c in layout.items() for o, cls in enumerate(c) if cls == "A"
    )
    for record in redriven:
        key, value, headers = originals[source_of(record)]
        assert (record.key, record.value) == (key, value)
        names = [k for k, _ in record.headers]
        assert names == ["trace-id", "x-dlq-first-seen", "x-redriven-at", "x-redriven-from"]
        got = dict(record.headers)
        assert got["trace-id"] == dict(headers)["trace-id"]
        assert got["x-dlq-first-seen"] == first_seen.encode()
        redriven_at = datetime.fromisoformat(got["x-redriven-at"].decode())
        assert abs((datetime.now(UTC) - redriven_at).total_seconds()) < 120

    # Nothing new for A: nothing is published again.
    code, out, err = await broker.cli("redrive", "--error-class", "A", **env)
    assert code == 0, err
    assert "total: redriven 0, skipped 3, already redriven 4" in out
    assert len(await read_all(kafka_bootstrap, target, 3)) == 5

    # The skipped B's were kept: a run for B redrives them (also those before the A's).
    code, out, err = await broker.cli("redrive", "--error-class", "B", **env)
    assert code == 0, err
    assert "B: redriven 3, skipped 0, already redriven 0" in out
    assert "A: redriven 0, skipped 0, already redriven 4" in out
    after_b = await read_all(kafka_bootstrap, target, 3)
    assert len(after_b) == 8
    assert sorted(source_of(r) for r in after_b) == sorted(originals)

    # New dead letters arrive, one of them without its value (too large for the DLQ); a run
    # without a filter redrives the other one only.
    too_large = [*dead_letter("A", 4, first_seen), ("x-dlq-value-omitted", b"too large")]
    await send(
        kafka_bootstrap,
        dlq,
        [
            (1, b"key-new", b"value-new", dead_letter("C", 3, first_seen)),
            (1, b"key-big", b"", too_large),
        ],
    )
    code, out, err = await broker.cli("redrive", **env)
    assert code == 0, err
    assert "C: redriven 1, skipped 0, already redriven 0" in out
    assert "A: redriven 0, skipped 0, already redriven 0, not redrivable 1" in out
    final = await read_all(kafka_bootstrap, target, 3)
    assert len(final) == 9
    assert {source_of(r) for r in final} - set(originals) == {f"{dlq}/1/3"}
    assert await committed_offsets(kafka_bootstrap, f"{group}-redrive", dlq, 2) == {0: 5, 1: 5}
