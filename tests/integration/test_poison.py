"""Poison messages on the real broker, through the running service.

Every kind of bad value gets exactly one ``rejected`` outcome and one dead letter carrying its
original bytes and where it came from; the valid events around it are still applied; the group
commits to the end of every partition; the service keeps running until told to stop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumer.devkit.emulator import SalesforceEmulator
from tests.integration.support import (
    SAMPLES,
    Collected,
    RunningService,
    Topics,
    collect,
    committed_offsets,
    make_emulator,
    make_topics,
    running_service,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 3
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
FIVE_MB = 5 * 1024 * 1024
#: Over the service producer's request size (KAFKA_PRODUCER_MAX_REQUEST_BYTES, 16 MiB).
OVERSIZED = 17 * 1024 * 1024
ERROR_CLASSES = {
    "EMPTY_MESSAGE",
    "MESSAGE_TOO_LARGE",
    "INVALID_UTF8",
    "INVALID_JSON",
    "NOT_AN_OBJECT",
    "MISSING_TYPE",
    "UNKNOWN_EVENT_TYPE",
    "SCHEMA_VALIDATION",
    "MISSING_ORGANIZATION_USER_ID",
    "INVALID_EMAIL",
}
DLQ_HEADERS = (
    "x-dlq-error-class",
    "x-dlq-reason",
    "x-dlq-source-topic",
    "x-dlq-source-partition",
    "x-dlq-source-offset",
    "x-dlq-first-seen",
)


@dataclass
class Sent:
    """One produced message and where the broker put it."""

    name: str
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int = -1
    #: For a bad message, the error_class and a fragment of the reason it must get.
    error_class: str | None = None
    fragment: str = ""
    #: For a valid event, its person and what it chose.
    email: str | None = None
    newsletter: bool | None = None


async def produce_at(bootstrap: str, topic: str, sent: list[Sent]) -> None:
    """Produce in order (to ``partition`` when it is >= 0) and record each offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=32 * 1024 * 1024,  # room for the OVERSIZED message
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value=s.value, key=s.key, partition=s.partition if s.partition >= 0 else None
            )
            for s in sent
        ]
        for s, meta in zip(sent, await asyncio.gather(*futures), strict=True):
            s.partition, s.offset = meta.partition, meta.offset
    finally:
        await producer.stop()


def event(event_id: str, email: str, when: datetime, newsletter: bool, **entity: Any) -> bytes:
    """A small valid ``event.created`` (newsletter and analytics choices)."""
    doc: dict[str, Any] = {
        "id": event_id,
        "created_at": when.isoformat().replace("+00:00", "Z"),
        "status": "confirmed",
        "regulation": "gdpr",
        "user": {"organization_user_id": email},
        "consents": {
            "purposes": [
                {"id": "newsletter", "enabled": newsletter},
                {"id": "analytics", "enabled": not newsletter},
            ]
        },
    }
    doc.update(entity)
    return orjson.dumps({"type": "event.created", "parameters": {"entity": doc}})


def malformed_lines() -> list[bytes]:
    """The message values of malformed.txt (the prose lines around them are not messages)."""
    lines = (SAMPLES / "malformed.txt").read_bytes().splitlines()
    return [line for line in lines if line[:1] in (b"{", b"[") or line == b"null"]


MALFORMED_EXPECTED = [
    ("INVALID_JSON", "not valid JSON"),
    ("MISSING_ORGANIZATION_USER_ID", "organization_user_id: Field required"),
    ("SCHEMA_VALIDATION", "organization_user_id: Input should be a valid string"),
    ("UNKNOWN_EVENT_TYPE", "consent.given"),
    ("SCHEMA_VALIDATION", "created_at: Field required"),
    ("NOT_AN_OBJECT", "an array"),
    ("NOT_AN_OBJECT", "null"),
]


def bad_messages() -> list[tuple[str, bytes | None, str, str]]:
    """(name, value, error_class, reason fragment) of every kind of bad message."""
    lines = malformed_lines()
    assert len(lines) == len(MALFORMED_EXPECTED)
    out: list[tuple[str, bytes | None, str, str]] = [
        (f"malformed line {i}", line, cls, frag)
        for i, (line, (cls, frag)) in enumerate(zip(lines, MALFORMED_EXPECTED, strict=True))
    ]
    out += [
        ("zero-length value", b"", "EMPTY_MESSAGE", "empty"),
        ("tombstone", None, "EMPTY_MESSAGE", "tombstone"),
        ("5 MB value", b"x" * FIVE_MB, "MESSAGE_TOO_LARGE", f"{FIVE_MB} bytes"),
        ("17 MiB value", b"y" * OVERSIZED, "MESSAGE_TOO_LARGE", f"{OVERSIZED} bytes"),
        ("not UTF-8", b"\xff\xfe\x00{", "INVALID_UTF8", "not UTF-8"),
        (
            "not UTF-8 inside JSON",
            b'{"type": "event.created", "x": "\xc3\x28"}',
            "INVALID_UTF8",
            "position",
        ),
        ("JSON string", b'"just a string"', "NOT_AN_OBJECT", "a string"),
        ("JSON number", b"42", "NOT_AN_OBJECT", "a number"),
        ("10,000 nested arrays", b"[" * 10_000 + b"]" * 10_000, "INVALID_JSON", "depth limit"),
        (
            "organization_user_id 42",
            event("ev-42", "ignored@example.com", T0, True, user={"organization_user_id": 42}),
            "SCHEMA_VALIDATION",
            "organization_user_id: Input should be a valid string",
        ),
        (
            # Used to raise OverflowError out of parse_message and end the poll loop.
            "timestamp with no UTC equivalent",
            event(
                "ev-year-1", "ignored@example.com", T0, True, created_at="0001-01-01T00:00+01:00"
            ),
            "SCHEMA_VALIDATION",
            "out of range",
        ),
        (
            # Used to put the whole 200,000-character key in the reason. (A malformed part
            # of a purpose alone no longer rejects an event: here its date is wrong too.)
            "huge preference value id",
            event(
                "ev-key",
                "ignored@example.com",
                T0,
                True,
                created_at="yesterday",
                consents={"purposes": [{"id": "newsletter", "values": {"k" * 200_000: 1}}]},
            ),
            "SCHEMA_VALIDATION",
            "Input should be a valid dictionary",
        ),
        ("not an email", event("ev-x", "not-an-email", T0, True), "INVALID_EMAIL", "not an email"),
    ]
    return out


def by_position(records: list[Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    out: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for record in records:
        outcome = orjson.loads(record.value)
        src = outcome["source"]
        out.setdefault((src["partition"], src["offset"]), []).append(outcome)
    return out


def dlq_by_position(records: list[Any]) -> dict[tuple[int, int], list[Any]]:
    out: dict[tuple[int, int], list[Any]] = {}
    for record in records:
        headers = dict(record.headers)
        position = (
            int(headers["x-dlq-source-partition"]),
            int(headers["x-dlq-source-offset"]),
        )
        out.setdefault(position, []).append(record)
    return out


def ends(sent: list[Sent], partitions: int) -> dict[int, int | None]:
    """The end offset of each partition (None for a partition nothing was sent to)."""
    end: dict[int, int | None] = dict.fromkeys(range(partitions))
    for s in sent:
        end[s.partition] = max(end[s.partition] or 0, s.offset + 1)
    return end


async def wait_committed(
    bootstrap: str, topics: Topics, partitions: int, want: dict[int, int | None]
) -> None:
    """Wait until the group's committed offsets are exactly ``want``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        got = await committed_offsets(bootstrap, topics.group, topics.input, partitions)
        if got == want:
            return
        if loop.time() > deadline:
            raise AssertionError(f"committed {got}, expected {want}")
        await asyncio.sleep(0.2)


def assert_dead_letter(record: Any, s: Sent, topic: str, reason_fragment: str) -> None:
    headers = dict(record.headers)
    for name in DLQ_HEADERS:
        assert name in headers, (s.name, name, list(headers))
    assert headers["x-dlq-error-class"] == (s.error_class or "").encode(), s.name
    reason = headers["x-dlq-reason"].decode()
    assert reason_fragment in reason, (s.name, reason[:300])
    assert len(reason) <= 1000, s.name
    assert headers["x-dlq-source-topic"] == topic.encode()
    assert headers["x-dlq-source-partition"] == str(s.partition).encode()
    assert headers["x-dlq-source-offset"] == str(s.offset).encode()
    first_seen = datetime.fromisoformat(headers["x-dlq-first-seen"].decode())
    assert first_seen.tzinfo is not None
    assert abs(datetime.now(UTC) - first_seen) < timedelta(minutes=5)
    assert record.key == s.key, s.name


async def wait_while_running(
    running: RunningService, predicate: Any, timeout: float, what: str
) -> None:
    """``wait_for``, failing at once (with the service's error) if the service ends."""

    def check() -> bool:
        if running.task.done():
            raise AssertionError(f"the service ended while waiting for {what}") from (
                running.task.exception() if not running.task.cancelled() else None
            )
        return bool(predicate())

    await wait_for(check, timeout, what)


SENTINEL_EMAIL = "poison.sentinel@example.com"


async def past_everything_then_stop(
    bootstrap: str,
    topics: Topics,
    partitions: int,
    running: RunningService,
    results: Collected,
    dlq: Collected,
) -> list[Sent]:
    """Send one valid event to each partition after everything else, wait for their outcomes
    (the poll loop is alive and went past every earlier message: anything extra, such as a
    duplicate, would have come before them), then stop the service. Returns the sentinels."""
    sentinels = [
        Sent(
            f"sentinel {p}",
            SENTINEL_EMAIL.encode(),
            event(f"sentinel-{p}", SENTINEL_EMAIL, T0 + timedelta(days=1), True),
            p,
            email=SENTINEL_EMAIL,
            newsletter=True,
        )
        for p in range(partitions)
    ]
    await produce_at(bootstrap, topics.input, sentinels)
    wanted = {(s.partition, s.offset) for s in sentinels}
    await wait_while_running(
        running, lambda: wanted <= set(by_position(results.records)), 30, "the sentinels"
    )
    await dlq.read_to_end()
    assert not running.task.done(), "the service stopped on its own"
    assert await running.finish() == 0
    return sentinels


@pytest.mark.asyncio
async def test_every_kind_of_bad_message_is_dead_lettered_and_nothing_after_it_is_lost(
    kafka_bootstrap: str,
) -> None:
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, PARTITIONS)
    people = [
        "poison.anna@example.com",
        "Poison.Ben@Example.com",
        "poison.chloé@exämple.de",
        "o'poison\\dan@example.com",
        "poison.eve@example.org",
        "POISON.FINN@EXAMPLE.COM",
    ]
    sent: list[Sent] = []
    when = T0
    for n, (name, value, error_class, fragment) in enumerate(bad_messages()):
        partition = n % PARTITIONS
        sent.append(Sent(name, f"bad-{n}".encode(), value, partition, -1, error_class, fragment))
        # After every bad message, a valid event on the same partition. Each person stays on
        # one partition (persons p and p + 3 on partition p): their events keep their order.
        person = partition + PARTITIONS * ((n // PARTITIONS) % 2)
        email = people[person]
        when += timedelta(seconds=10)
        newsletter = (n // len(people)) % 2 == 0
        sent.append(
            Sent(
                f"valid {n}",
                email.lower().encode(),
                event(f"ok-{n}", email, when, newsletter),
                partition,
                email=email,
                newsletter=newsletter,
            )
        )
    await produce_at(kafka_bootstrap, topics.input, sent)
    bad = [s for s in sent if s.error_class is not None]
    valid = [s for s in sent if s.error_class is None]

    async with make_emulator() as emulator:
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_while_running(
                running, lambda: len(results.records) >= len(sent), 60, "every outcome"
            )
            await wait_while_running(
                running, lambda: len(dlq.records) >= len(bad), 20, "every dead letter"
            )
            await wait_committed(kafka_bootstrap, topics, PARTITIONS, ends(sent, PARTITIONS))
            valid += await past_everything_then_stop(
                kafka_bootstrap, topics, PARTITIONS, running, results, dlq
            )

        outcomes = by_position(results.records)
        letters = dlq_by_position(dlq.records)
        assert len(results.records) == len(bad) + len(valid)  # sentinels included
        assert len(dlq.records) == len(bad)

        for s in bad:
            [outcome] = outcomes[(s.partition, s.offset)]
            assert outcome["status"] == "rejected", (s.name, outcome)
            assert outcome["error_class"] == s.error_class, (s.name, outcome)
            assert s.fragment in outcome["reason"], (s.name, outcome["reason"][:300])
            assert len(outcome["reason"]) < 2000, s.name
            [record] = letters[(s.partition, s.offset)]
            assert_dead_letter(record, s, topics.input, s.fragment)
            if s.value is not None and len(s.value) > OVERSIZED - 1:
                # Over the producer's request size: sent without its value, saying so.
                assert record.value == b"", s.name
                assert b"too large" in dict(record.headers)["x-dlq-value-omitted"]
                continue
            # The original bytes, byte for byte: the 5 MB one too (under the producer's 16 MiB,
            # and the embedded broker has no message size limit).
            assert record.value == s.value, (s.name, len(record.value or b""))
            assert "x-dlq-value-omitted" not in dict(record.headers), s.name

        for s in valid:
            [outcome] = outcomes[(s.partition, s.offset)]
            assert outcome["status"] in ("created", "updated"), (s.name, outcome)
            assert outcome["organization_user_id"] == s.email
        assert_final_state(emulator, valid)


def assert_final_state(emulator: SalesforceEmulator, valid: list[Sent]) -> None:
    """Each person's Contact holds their last event's choices (events are in time order)."""
    last: dict[str, Sent] = {}
    for s in valid:
        assert s.email is not None
        last[s.email] = s
    for email, s in last.items():
        [contact] = emulator.find_by_email("Contact", email)
        assert contact["Newsletter_Consent__c"] is s.newsletter, email
        assert contact["Analytics_Consent__c"] is (not s.newsletter), email
        assert emulator.find_by_email("Lead", email) == []  # upsert_mode is off for Lead


# --- hypothesis-driven: random mixes of garbage and valid events --------------------------

HYPOTHESIS_PEOPLE = ("hyp.one@example.com", "Hyp.Two@example.org", "hyp.drei@exämple.de")
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=15,
)
garbage: st.SearchStrategy[bytes | None] = (
    st.binary(max_size=300)
    | st.builds(orjson.dumps, json_values)
    | st.builds(
        lambda params: orjson.dumps({"type": "event.created", "parameters": params}), json_values
    )
    | st.sampled_from([*malformed_lines(), b"", None, b"[" * 5000 + b"]" * 5000])
    # Events that are valid JSON and nearly valid Didomi, broken in one field.
    | st.builds(
        lambda email, stamp: event("hyp-bad", email, T0, True, created_at=stamp),
        st.sampled_from(("a@x.com", "not-an-email", "a b@x.com", "x" * 81 + "@x.com")),
        st.sampled_from(("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "soon", "")),
    )
)


@st.composite
def mixes(draw: st.DrawFn) -> list[tuple[str, bytes | None]]:
    """20-60 messages: ("bad", value) or ("valid", email) in a random order."""
    bad = draw(st.lists(garbage, min_size=5, max_size=40))
    valid = draw(st.lists(st.sampled_from(HYPOTHESIS_PEOPLE), min_size=15, max_size=20))
    items: list[tuple[str, bytes | None]] = [("bad", v) for v in bad]
    items += [("valid", e.encode()) for e in valid]
    draw(st.randoms(use_true_random=True)).shuffle(items)
    return items


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    # One example runs the service for seconds: no shrinking, the example is printed as is.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mix=mixes(), partitions=st.integers(1, 3))
def test_random_mixes_get_one_outcome_each_and_commit_to_the_end(
    kafka_bootstrap: str, mix: list[tuple[str, bytes | None]], partitions: int
) -> None:
    asyncio.run(run_mix(kafka_bootstrap, mix, partitions))


async def run_mix(bootstrap: str, mix: list[tuple[str, bytes | None]], partitions: int) -> None:
    topics = Topics.fresh()
    await make_topics(bootstrap, topics, partitions)
    sent: list[Sent] = []
    key: bytes | None
    for n, (kind, raw) in enumerate(mix):
        if kind == "valid":
            assert raw is not None
            email = raw.decode()
            newsletter = n % 3 != 0
            value = event(f"hyp-{n}", email, T0 + timedelta(seconds=n), newsletter)
            # Keyed by person: one partition each, so their events stay in order.
            key = email.lower().encode()
            sent.append(Sent(f"valid {n}", key, value, -1, email=email, newsletter=newsletter))
        else:
            key = None if n % 4 == 0 else f"junk-{n}".encode()
            sent.append(Sent(f"bad {n}", key, raw, n % partitions, error_class="?"))
    await produce_at(bootstrap, topics.input, sent)
    bad = [s for s in sent if s.error_class is not None]
    valid = [s for s in sent if s.error_class is None]

    async with make_emulator() as emulator:
        settings = settings_for(bootstrap, topics, emulator.url)
        async with (
            collect(bootstrap, topics.results) as results,
            collect(bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_while_running(
                running, lambda: len(results.records) >= len(sent), 60, "every outcome"
            )
            await wait_while_running(
                running, lambda: len(dlq.records) >= len(bad), 20, "every dead letter"
            )
            await wait_committed(bootstrap, topics, partitions, ends(sent, partitions))
            valid += await past_everything_then_stop(
                bootstrap, topics, partitions, running, results, dlq
            )

        outcomes = by_position(results.records)
        letters = dlq_by_position(dlq.records)
        assert sorted(outcomes) == sorted((s.partition, s.offset) for s in bad + valid)
        assert all(len(o) == 1 for o in outcomes.values()), "an input got two outcomes"
        statuses = Counter(outcomes[(s.partition, s.offset)][0]["status"] for s in bad)
        assert statuses == Counter(rejected=len(bad)), statuses
        assert sorted(letters) == sorted((s.partition, s.offset) for s in bad)
        for s in bad:
            [record] = letters[(s.partition, s.offset)]
            [outcome] = outcomes[(s.partition, s.offset)]
            assert outcome["error_class"] in ERROR_CLASSES, outcome
            s.error_class = outcome["error_class"]
            assert_dead_letter(record, s, topics.input, "")
            assert record.value == s.value
        for s in valid:
            [outcome] = outcomes[(s.partition, s.offset)]
            assert outcome["status"] in ("created", "updated"), outcome
        assert_final_state(emulator, valid)
