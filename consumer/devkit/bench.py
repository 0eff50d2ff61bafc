"""``make bench``: speed and memory of the pure pipeline, as ratios to a same-process baseline.

The baseline is ``orjson.loads`` of the same messages: the least any consumer of this topic
must do. Each stage is timed over the same messages (best of several rounds) and reported as
events per second and as a multiple of the baseline, so the figures compare across machines.
Memory is the peak traced allocation while one batch is processed, per event and as a
multiple of the raw message bytes. With ``--e2e`` it also runs the whole service in process
against the embedded broker and the Salesforce emulator and reports events/s and API calls.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consumer.mapping import TargetPlan, parse_mapping, plan_target
from consumer.model.changes import Accepted, PersonResult, Sourced
from consumer.model.messages import InputMessage
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from consumer.stages.parse import ParseRules, parse_message
from consumer.stages.report import assemble

MAPPING = """
targets:
  - sobject: Contact
    upsert_mode: true
    create_defaults: {LastName: Unknown}
    purposes: {newsletter: Newsletter_Consent__c, analytics: Analytics_Consent__c}
    preferences: {topics: Newsletter_Topics__c, frequency: Newsletter_Frequency__c}
    preference_values:
      topics: {product_news: Topic_Product_News__c, offers: Topic_Offers__c}
  - sobject: Lead
    purposes: {newsletter: Newsletter_Consent__c}
"""


def messages(count: int, people: int, seed: int = 1) -> list[bytes]:
    """Didomi-shaped events (partial events and whole-state user updates)."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        email = f"person{rng.randrange(people)}@example.com"
        when = (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
        purposes: list[dict[str, Any]] = [
            {
                "id": "newsletter",
                "enabled": rng.random() < 0.5,
                "values": {
                    "topics": {"value": "product_news,offers"},
                    "frequency": {"value": "weekly"},
                },
            },
            {"id": "analytics", "enabled": rng.random() < 0.5},
        ]
        entity = {
            "id": f"ev-{n}",
            "organization_id": "acme",
            "created_at": when,
            "updated_at": when,
            "status": "confirmed",
            "regulation": "gdpr",
            "user": {"id": f"u-{email}", "organization_user_id": email},
            "consents": {"purposes": purposes, "vendors": {"enabled": [], "disabled": []}},
            "proofs_id": [],
            "metadata": {},
        }
        out.append(orjson.dumps({"type": "event.created", "parameters": {"entity": entity}}))
    return out


def _plans() -> list[TargetPlan]:
    return [plan_target(t, None) for t in parse_mapping(MAPPING).targets]


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def pure_path(values: list[bytes], plans: list[TargetPlan], batch: int) -> None:
    """What the service does to each batch apart from I/O: parse, dedup, map, report."""
    rules = ParseRules()
    now = datetime.now(UTC)
    for start in range(0, len(values), batch):
        chunk = values[start : start + batch]
        msgs = [InputMessage("t", 0, start + i, None, v) for i, v in enumerate(chunk)]
        parsed = [parse_message(v, rules) for v in chunk]
        sourced = [
            Sourced(r.change, 0, m.offset, i, map_change(r.change, plans))
            for i, (m, r) in enumerate(zip(msgs, parsed, strict=True))
            if isinstance(r, Accepted)
        ]
        people = merge_by_person(sourced)
        results = {p.sobject: {k: PersonResult("updated", ["003"]) for k in people} for p in plans}
        publications, _ = assemble(msgs, parsed, people, results, plans, now)
        for pub in publications:
            orjson.dumps(pub.outcome.model_dump(mode="json", exclude_none=True))


def run_pure(count: int, people: int, batch: int, rounds: int) -> None:
    """Print the pure-path table."""
    values = messages(count, people)
    plans = _plans()
    rules = ParseRules()
    base = _best(lambda: [orjson.loads(v) for v in values], rounds)
    stages: list[tuple[str, Callable[[], object]]] = [
        ("orjson.loads (baseline)", lambda: [orjson.loads(v) for v in values]),
        ("parse (validate, normalise)", lambda: [parse_message(v, rules) for v in values]),
        ("parse + dedup + map + report", lambda: pure_path(values, plans, batch)),
    ]
    print(f"{count} events, {people} people, batches of {batch}, best of {rounds} rounds\n")
    print(f"{'stage':32} {'events/s':>12} {'x baseline time':>16}")
    for name, fn in stages:
        took = _best(fn, rounds)
        print(f"{name:32} {count / took:12,.0f} {took / base:16.2f}")
    raw = sum(len(v) for v in values[:batch])
    tracemalloc.start()
    pure_path(values[:batch], plans, batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"\nmemory: peak {peak / batch:,.0f} bytes per event while a batch of {batch} is "
        f"processed; {peak / raw:.1f} x the raw message bytes ({raw / batch:,.0f} per event)"
    )


async def run_e2e(count: int, people: int) -> None:
    """The whole service in process: embedded broker, emulator, real HTTP and Kafka."""
    import uuid

    from prometheus_client import CollectorRegistry

    from consumer.devkit.broker import EmbeddedBroker, create_topics
    from consumer.devkit.emulator import FieldSpec, SalesforceEmulator
    from consumer.observability.metrics import Metrics
    from consumer.service import Service
    from consumer.settings import Settings

    values = messages(count, people)
    tag = uuid.uuid4().hex[:8]
    fields = {
        "Contact": [
            FieldSpec(name, "boolean")
            for name in (
                "Newsletter_Consent__c",
                "Analytics_Consent__c",
                "Topic_Product_News__c",
                "Topic_Offers__c",
            )
        ]
        + [
            FieldSpec(
                "Newsletter_Topics__c", "multipicklist", picklist_values=("product_news", "offers")
            ),
            FieldSpec("Newsletter_Frequency__c", "string"),
        ],
        "Lead": [FieldSpec("Newsletter_Consent__c", "boolean")],
    }
    with EmbeddedBroker() as broker:
        await create_topics(broker.bootstrap, [f"in-{tag}"], partitions=4)
        await create_topics(broker.bootstrap, [f"out-{tag}", f"dlq-{tag}"])
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            futures = [await producer.send(f"in-{tag}", v) for v in values]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        async with SalesforceEmulator(
            client_id="b", client_secret="b", custom_fields=fields
        ) as emu:
            for p in range(0, people, 2):
                emu.seed("Contact", {"Email": f"person{p}@example.com", "LastName": "P"})
            settings = Settings(
                kafka_bootstrap_servers=broker.bootstrap,
                kafka_input_topic=f"in-{tag}",
                kafka_results_topic=f"out-{tag}",
                kafka_dlq_topic=f"dlq-{tag}",
                kafka_group_id=f"bench-{tag}",
                salesforce_token_url=emu.url,
                salesforce_client_id="b",
                salesforce_client_secret="b",  # type: ignore[arg-type]
                metrics_port=0,
                metrics_host="127.0.0.1",
            )
            metrics = Metrics(CollectorRegistry())
            service = Service(settings, parse_mapping(MAPPING), metrics)
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            started = None
            while True:
                await asyncio.sleep(0.1)
                done = (
                    metrics.registry.get_sample_value(
                        "consent_sync_outcomes_total", {"status": "updated", "sobject": "Contact"}
                    )
                    or 0.0
                )
                created = (
                    metrics.registry.get_sample_value(
                        "consent_sync_outcomes_total", {"status": "created", "sobject": "Contact"}
                    )
                    or 0.0
                )
                if started is None and done + created > 0:
                    started = time.perf_counter()
                if done + created >= count or task.done():
                    break
            took = time.perf_counter() - (started or time.perf_counter())
            stop.set()
            await task
            calls = emu.stats["api_calls"]
    print(
        f"\nend to end: {count} events through broker, service and emulator in {took:.1f}s "
        f"after the first outcome ({count / max(took, 1e-9):,.0f} events/s); "
        f"{calls} Salesforce API calls ({count / max(calls, 1):.0f} events per call)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m consumer.devkit.bench``."""
    parser = argparse.ArgumentParser(prog="python -m consumer.devkit.bench", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--people", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e", action="store_true", help="also run the service end to end")
    args = parser.parse_args(argv)
    run_pure(args.events, args.people, args.batch, args.rounds)
    if args.e2e:
        asyncio.run(run_e2e(args.events, args.people))
    return 0


if __name__ == "__main__":
    sys.exit(main())
