"""``make demo``: the whole sync, end to end, on this machine.

Starts the embedded Kafka-protocol broker and the Salesforce emulator (seeded with a few
Contacts and Leads), creates the topics, produces a mixed set of Didomi events, runs the
service as its own process (``python -m consumer run``, configured by environment variables
exactly as in production) until every event has an outcome, then prints what happened and
stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.devkit.broker import EmbeddedBroker, create_topics, free_port
from consumer.devkit.emulator import SalesforceEmulator
from consumer.devkit.emulator.fields import EXAMPLE_MAPPING, example_custom_fields

CLIENT_ID = "demo-client-id"
CLIENT_SECRET = "demo-client-secret"  # the emulator's; never a real credential

MAPPING = EXAMPLE_MAPPING

SHOWN_FIELDS = (
    "Newsletter_Consent__c",
    "Analytics_Consent__c",
    "Newsletter_Topics__c",
    "Newsletter_Frequency__c",
    "Topic_Product_News__c",
    "Topic_Offers__c",
)


def _event(
    event_id: str,
    when: str,
    email: str,
    purposes: list[dict[str, Any]],
    *,
    status: str = "confirmed",
    regulation: str = "gdpr",
) -> bytes:
    entity = {
        "id": event_id,
        "organization_id": "acme",
        "created_at": when,
        "updated_at": when,
        "status": status,
        "regulation": regulation,
        "user": {"id": f"didomi-{event_id}", "organization_user_id": email},
        "consents": {"purposes": purposes, "vendors": {"enabled": [], "disabled": []}},
    }
    return orjson.dumps({"type": "event.created", "parameters": {"entity": entity}})


def demo_events() -> list[tuple[str, bytes]]:
    """(what it shows, message value) in production order."""
    jane = "Jane.Doe@example.com"
    user_updated = {
        "type": "user.updated",
        "parameters": {
            "source": {"id": "src-jane-4", "created_at": "2026-11-21T17:02:44Z"},
            "new_entity": {
                "id": "didomi-jane",
                "organization_id": "acme",
                "organization_user_id": jane,
                "version": 4,
                "created_at": "2026-10-01T08:00:00Z",
                "updated_at": "2026-11-21T17:02:44Z",
                "consents": {
                    "purposes": [
                        {
                            "id": "newsletter",
                            "enabled": True,
                            "values": {
                                "topics": {"value": "offers"},
                                "frequency": {"value": "monthly"},
                            },
                        },
                        {"id": "analytics", "enabled": True},
                    ]
                },
            },
        },
    }
    return [
        (
            "Jane opts in, picks two topics",
            _event(
                "ev-jane-1",
                "2026-11-20T09:14:03.512Z",
                jane,
                [
                    {
                        "id": "newsletter",
                        "enabled": True,
                        "values": {
                            "topics": {"value": "product_news,offers"},
                            "frequency": {"value": "weekly"},
                        },
                    },
                    {"id": "analytics", "enabled": False},
                ],
            ),
        ),
        ("Jane's user update (whole state)", orjson.dumps(user_updated)),
        (
            "Max: still pending approval",
            _event(
                "ev-max-1",
                "2026-11-22T10:00:00Z",
                "max@example.org",
                [{"id": "newsletter", "enabled": True}],
                status="pending_approval",
            ),
        ),
        (
            "Sam: a CPRA event (not synced)",
            _event(
                "ev-sam-1",
                "2026-11-22T11:00:00Z",
                "sam@example.com",
                [{"id": "newsletter", "enabled": False}],
                regulation="cpra",
            ),
        ),
        (
            "Sam: GDPR opt-in (Contact and Lead)",
            _event(
                "ev-sam-2",
                "2026-11-22T11:05:00Z",
                "SAM@example.com",
                [{"id": "newsletter", "enabled": True}],
            ),
        ),
        (
            "O'Brien (quote and backslash in the email)",
            _event(
                "ev-obrien-1",
                "2026-11-22T12:00:00Z",
                "o'brien\\ops@example.com",
                [{"id": "analytics", "enabled": True}],
            ),
        ),
        (
            "Nora: not in Salesforce yet",
            _event(
                "ev-nora-1",
                "2026-11-22T13:00:00Z",
                "nora.new@example.net",
                [
                    {
                        "id": "newsletter",
                        "enabled": True,
                        "values": {"topics": {"value": "product_news"}},
                    }
                ],
            ),
        ),
        ("a truncated message", b'{"type": "event.created", "parameters": {"entity": {"status": '),
        ("an unknown event type", b'{"type": "consent.given", "parameters": {}}'),
    ]


def late_events() -> list[tuple[str, bytes]]:
    """What arrives after the first wave was written: Didomi's retries and clock trouble."""
    return [
        (
            "Jane's older event, delivered late: stale, nothing written",
            _event(
                "ev-jane-0",
                "2026-11-19T08:00:00Z",
                "jane.doe@example.com",
                [{"id": "analytics", "enabled": False}],
            ),
        ),
        (
            "Sam withdraws, next to a preference value too long for its field: partial",
            _event(
                "ev-sam-3",
                "2026-11-22T11:30:00Z",
                "sam@example.com",
                [
                    {
                        "id": "newsletter",
                        "enabled": False,
                        "values": {"frequency": {"value": "every-day-" * 10}},
                    }
                ],
            ),
        ),
        (
            "an event dated 2206 (a clock gone wrong): rejected",
            _event(
                "ev-max-2206",
                "2206-01-01T00:00:00Z",
                "max@example.org",
                [{"id": "newsletter", "enabled": True}],
            ),
        ),
    ]


def seed(emulator: SalesforceEmulator) -> None:
    """A few records that exist before the sync."""
    emulator.seed(
        "Contact", {"Email": "jane.doe@example.com", "FirstName": "Jane", "LastName": "Doe"}
    )
    emulator.seed("Contact", {"Email": "sam@example.com", "FirstName": "Sam", "LastName": "Lee"})
    emulator.seed("Contact", {"Email": "o'brien\\ops@example.com", "LastName": "O'Brien"})
    emulator.seed("Contact", {"Email": "max@example.org", "FirstName": "Max", "LastName": "Roe"})
    emulator.seed("Lead", {"Email": "sam@example.com", "LastName": "Lee", "Company": "Lee Ltd"})
    emulator.seed(
        "Lead", {"Email": "jane.doe@example.com", "LastName": "Doe", "Company": "Doe plc"}
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _records_table(emulator: SalesforceEmulator) -> str:
    rows = []
    for sobject in ("Contact", "Lead"):
        for r in sorted(emulator.records(sobject), key=lambda r: str(r.get("Email"))):
            values = [r.get(f) for f in SHOWN_FIELDS]
            rows.append([sobject, r.get("Email"), *["-" if v is None else v for v in values]])
    short = ["Newsletter", "Analytics", "Topics", "Frequency", "Topic:news", "Topic:offers"]
    return _table(["sObject", "Email", *short], rows)


async def _produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            key = None
            with contextlib.suppress(Exception):
                doc = orjson.loads(value)
                params = doc["parameters"]
                entity = params.get("entity") or params.get("new_entity")
                user = entity.get("user") or entity
                key = str(user["organization_user_id"]).strip().lower().encode()
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, want: int, timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.seek_to_beginning()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for msgs in batch.values():
                out.extend(msgs)
    finally:
        await consumer.stop()
    return out


async def main() -> int:
    """Run the demo; returns the exit code."""
    started = time.monotonic()
    print("== Didomi -> Salesforce consent sync: demo ==\n")
    workdir = Path(tempfile.mkdtemp(prefix="consent-sync-demo-"))
    broker = EmbeddedBroker(log_path=str(workdir / "broker.log"))
    broker.start()
    proc: asyncio.subprocess.Process | None = None
    try:
        async with SalesforceEmulator(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            custom_fields=example_custom_fields(),
        ) as emulator:
            seed(emulator)
            print(f"Kafka-protocol broker (Tansu): {broker.bootstrap}")
            print(f"Salesforce emulator:           {emulator.url}\n")
            print("Salesforce records BEFORE the sync:")
            print(_records_table(emulator), "\n")
            topics = (
                "didomi.consent-events",
                "didomi.consent-results",
                "didomi.consent-events.dlq",
            )
            # What the service remembers of each person's recent choices: partitioned as the
            # input (compaction is the broker's business; the embedded one keeps all).
            choices = "didomi.consent-sync.choices"
            await create_topics(broker.bootstrap, [topics[0], choices], partitions=3)
            await create_topics(broker.bootstrap, list(topics[1:]), partitions=1)
            events = demo_events()
            await _produce(broker.bootstrap, topics[0], [v for _, v in events])
            print(f"Produced {len(events)} events to {topics[0]}.\n")

            mapping = workdir / "mapping.yaml"
            mapping.write_text(MAPPING, encoding="utf-8")
            metrics_port = free_port()
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "KAFKA_INPUT_TOPIC": topics[0],
                "KAFKA_RESULTS_TOPIC": topics[1],
                "KAFKA_DLQ_TOPIC": topics[2],
                "KAFKA_CHOICES_TOPIC": choices,
                "KAFKA_GROUP_ID": "demo-sync",
                "SALESFORCE_TOKEN_URL": emulator.url,
                "SALESFORCE_CLIENT_ID": CLIENT_ID,
                "SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
                "SYNC_MAPPING_FILE": str(mapping),
                "SYNC_BATCH_LINGER_MS": "300",
                "METRICS_HOST": "127.0.0.1",
                "METRICS_PORT": str(metrics_port),
                "LOG_FORMAT": "json",
            }
            log_path = workdir / "service.log"
            with open(log_path, "wb") as log:  # noqa: ASYNC230 - once, before the service runs
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "consumer", "run", env=env, stdout=log, stderr=log
                )
            print(f"Service started: python -m consumer run (pid {proc.pid}, logs {log_path})")
            await _read_all(broker.bootstrap, topics[1], len(events), timeout=45)
            late = late_events()
            await _produce(broker.bootstrap, topics[0], [v for _, v in late])
            print(f"First wave written; produced {len(late)} late events.\n")
            for what, _ in late:
                print(f"  - {what}")
            events += late
            records = await _read_all(broker.bootstrap, topics[1], len(events), timeout=45)
            metrics_text = ""
            async with aiohttp.ClientSession() as http:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                        metrics_text = await resp.text()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            proc = None
            dead = await _read_all(broker.bootstrap, topics[2], 4, timeout=5)

            outcomes = [orjson.loads(r.value) for r in records]
            outcomes.sort(key=lambda o: (o["source"]["partition"], o["source"]["offset"]))
            rows = []
            for o in outcomes:
                targets = ", ".join(
                    f"{t['sobject']}:{t['status']}"
                    + (f"({len(t['record_ids'])})" if t.get("record_ids") else "")
                    for t in o.get("targets", [])
                )
                rows.append(
                    [
                        f"{o['source']['partition']}/{o['source']['offset']}",
                        o.get("event_type") or "-",
                        o.get("organization_user_id") or "-",
                        o["status"],
                        targets or "-",
                        (o.get("reason") or "")[:70],
                    ]
                )
            print(f"\nOutcomes on {topics[1]} ({len(outcomes)} of {len(events)} events):")
            print(_table(["p/offset", "type", "person", "status", "targets", "reason"], rows))
            print(f"\nDead letters on {topics[2]}: {len(dead)}")
            for r in dead:
                h = dict(r.headers)
                error_class = h.get("x-dlq-error-class", b"").decode()
                print(f"  - {error_class}: {h.get('x-dlq-reason', b'').decode()[:90]}")
            print("\nSalesforce records AFTER the sync:")
            print(_records_table(emulator))
            stats = emulator.stats
            calls = ", ".join(
                f"{k}={v}" for k, v in sorted(stats.items()) if v and not k.startswith("http_")
            )
            print(f"\nSalesforce API calls: {calls}")
            print(
                f"\nMetrics were served at http://127.0.0.1:{metrics_port}/metrics "
                "(also /healthz, /readyz); a few:"
            )
            for line in metrics_text.splitlines():
                if line.startswith(
                    (
                        "consent_sync_outcomes_total",
                        "consent_sync_salesforce_calls_total",
                        "consent_sync_salesforce_api_usage",
                        "consent_sync_offset_commits_total",
                    )
                ):
                    print("  " + line)
            ok = code == 0 and len(outcomes) == len(events)
            print(f"\nService exit code {code}; demo took {time.monotonic() - started:.1f}s.")
            if not ok:
                print(f"DEMO FAILED: see {log_path}", file=sys.stderr)
                return 1
            return 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        broker.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
