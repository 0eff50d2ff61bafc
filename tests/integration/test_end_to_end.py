"""The whole pipeline on the real broker and the Salesforce emulator over HTTP."""

from __future__ import annotations

import math
from collections import Counter

import aiohttp
import pytest

from consumer.engine.lanes import lane_of
from consumer.model.messages import email_key
from consumer.salesforce.soql import in_queries
from tests.integration.scenario import build
from tests.integration.support import (
    assert_final_state,
    assert_outcomes,
    collect,
    committed_offsets,
    make_emulator,
    running_service,
    sample_value,
    scenario_topics,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

PARTITIONS = 3


@pytest.mark.parametrize(
    ("mode", "backlog"),
    [("off", 5_000), ("on", 5_000), ("auto", 2_001), ("auto", 2_000)],
    ids=["off", "on", "auto-caught-up", "auto-behind"],
)
async def test_2000_events_for_300_people_in_one_batch_per_lane_use_the_fewest_calls(
    kafka_bootstrap: str, mode: str, backlog: int
) -> None:
    # auto: the 2,000 messages held at the end (all fetched) are a backlog at 2,000, not at
    # 2,001: each counted once.
    composite = mode == "on" or (mode == "auto" and backlog <= 2_000)
    scenario = build(n_people=300, n_events=2000)
    topics = await scenario_topics(kafka_bootstrap, scenario, PARTITIONS)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            sync_batch_max_events=len(scenario.messages),
            sync_batch_linger_ms=60_000,
            salesforce_composite=mode,
            salesforce_composite_backlog=backlog,
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            # Everything is fetched while every lane lingers; the shutdown then writes each
            # lane's one batch, so the call count is exactly what dedup allows, lane by lane.
            consumed = "consent_sync_messages_consumed_total"
            await wait_for(
                lambda: (
                    sample_value(running.service.metrics, consumed, {"topic": topics.input})
                    >= len(scenario.messages)
                ),
                60,
                "every message fetched",
            )
            assert await running.finish() == 0
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 60, "outcomes")
            rejected = [m for m in scenario.messages if m.kind == "rejected"]
            assert rejected
            await wait_for(lambda: len(dlq.records) >= len(rejected), 10, "dead letters")
        stats = dict(emulator.stats)
    assert_final_state(emulator, scenario)
    outcomes = results.values()
    assert_outcomes(outcomes, scenario, topics.input)
    assert len(dlq.records) == len(rejected)
    assert sorted(r.value for r in dlq.records) == sorted(m.value for m in rejected)
    headers = dict(dlq.records[0].headers)
    assert headers["x-dlq-error-class"] == b"INVALID_JSON"
    assert headers["x-dlq-source-topic"] == topics.input.encode()

    # The API calls are exactly what one deduplicated batch per lane needs.
    def lane(person: int) -> int:
        return lane_of(email_key(scenario.emails[person]), settings.sync_concurrency)

    def queries(people: set[int], sobject: str) -> int:
        return len(
            in_queries(
                path="/services/data/v62.0/query",
                select=("Id", "Email"),
                sobject=sobject,
                field="Email",
                values=[scenario.emails[p] for p in people],
                max_url_bytes=settings.salesforce_max_url_bytes,
            )
        )

    expected = Counter[str]()
    api_calls = 0  # after start-up
    for n in range(settings.sync_concurrency):
        contact_people = {p for p in scenario.expected_contacts() if lane(p) == n}
        lead_people = {p for p in scenario.expected_leads() if lane(p) == n}
        contact_records = sum(len(scenario.contact_seed.get(p, [])) for p in contact_people)
        contact_missing = sum(1 for p in contact_people if p not in scenario.contact_seed)
        lead_records = sum(1 for p in lead_people if p in scenario.lead_seed)
        expected["query"] += queries(contact_people, "Contact") + queries(lead_people, "Lead")
        expected["update"] += math.ceil(contact_records / 200) + math.ceil(lead_records / 200)
        expected["create"] += math.ceil(contact_missing / 200)
        # A lane's batch asks once (its queries), then writes once (every target's writes).
        asks = queries(contact_people, "Contact") + queries(lead_people, "Lead")
        writes = (
            math.ceil(contact_records / 200)
            + math.ceil(lead_records / 200)
            + math.ceil(contact_missing / 200)
        )
        api_calls += math.ceil(asks / 5) + math.ceil(writes / 5) if composite else asks + writes
    assert stats["token"] == 1
    assert stats["describe"] == 2
    assert stats["query"] == expected["query"]
    assert stats["update"] == expected["update"]
    assert stats["create"] == expected["create"]
    assert stats["query_more"] == 0
    assert stats["api_calls"] - stats["describe"] - stats["versions"] == api_calls
    assert stats.get("composite", 0) == (api_calls if composite else 0)

    offsets = await committed_offsets(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
    assert sum(o or 0 for o in offsets.values()) == len(scenario.messages)


async def test_many_small_batches_in_flight_keep_each_persons_order(
    kafka_bootstrap: str,
) -> None:
    scenario = build(n_people=60, n_events=1500, seed=11)
    topics = await scenario_topics(kafka_bootstrap, scenario, PARTITIONS)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=5, jitter_ms=40, seed=3)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            sync_batch_max_events=40,
            sync_batch_linger_ms=20,
            sync_concurrency=4,
            kafka_fetch_max_records=100,
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 120, "outcomes")
            assert await running.finish() == 0
            metrics = running.service.metrics
    assert_final_state(emulator, scenario)
    assert_outcomes(results.values(), scenario, topics.input)
    offsets = await committed_offsets(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
    assert sum(o or 0 for o in offsets.values()) == len(scenario.messages)
    batches = metrics.registry.get_sample_value("consent_sync_batch_events_count")
    assert batches is not None
    assert batches >= len(scenario.messages) / 40


async def test_metrics_and_health_are_served(kafka_bootstrap: str) -> None:
    scenario = build(n_people=5, n_events=20, seed=5, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario, 1)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 20, 60, "outcomes")
            port = running.service.server.port
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    assert resp.status == 200
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    assert resp.status == 200, await resp.text()
            await running.finish()
    for name in (
        "consent_sync_messages_consumed_total",
        "consent_sync_outcomes_total",
        'consent_sync_salesforce_calls_total{operation="update",status="200"}',
        "consent_sync_salesforce_call_duration_seconds_bucket",
        "consent_sync_salesforce_records_per_call_bucket",
        'consent_sync_salesforce_token_grants_total{result="granted"} 1.0',
        "consent_sync_salesforce_api_usage_used",
        "consent_sync_salesforce_api_usage_limit",
        "consent_sync_consumer_lag_messages",
        "consent_sync_batches_in_flight",
    ):
        assert name in text, name
    assert "@" not in text  # no email in any label
