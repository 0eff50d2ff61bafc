"""Each Salesforce fault class through the whole pipeline, on the real broker and emulator.

Every test asserts the final Salesforce state, the outcomes (and dead letters), and how
often the service called or retried, so that "survives" means "lost nothing and did not
hammer the org".
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer

from consumer.devkit.bench.events import EXTERNAL_ID_MAPPING
from consumer.engine.lanes import lane_of
from consumer.mapping import parse_mapping
from consumer.model.messages import email_key
from tests.integration.scenario import build
from tests.integration.support import (
    Topics,
    assert_final_state,
    assert_outcomes,
    collect,
    make_emulator,
    make_topics,
    produce,
    running_service,
    sample_value,
    scenario_topics,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


SMALL_BATCHES: dict[str, Any] = {
    "sync_batch_max_events": 50,
    "sync_batch_linger_ms": 20,
    "kafka_fetch_max_records": 100,
}


async def test_daily_limit_pauses_writing_then_resumes(kafka_bootstrap: str) -> None:
    scenario = build(n_people=40, n_events=600, seed=31)
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics)
    pairs = [(m.key, m.value) for m in scenario.messages]
    await produce(kafka_bootstrap, topics.input, pairs[:100])
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=10)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            salesforce_limit_pause_seconds=1.0,
            **SMALL_BATCHES,
        )
        total = len(scenario.messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 100, 60, "first outcomes")
            emulator.set_api_usage(15000, 15000)  # the org's day is spent
            # The rest arrives after the quota ran out: it needs calls, which are refused.
            await produce(kafka_bootstrap, topics.input, pairs[100:])
            metrics = running.service.metrics
            await wait_for(
                lambda: sample_value(metrics, "consent_sync_salesforce_writes_paused") == 1,
                20,
                "pause",
            )
            pipeline = running.service.pipeline
            assert pipeline is not None
            first_until = pipeline.gate.state.until
            kafka = cast(AIOKafkaConsumer, pipeline._consumer)
            # Partitions must be paused while writing is (resumed only for each probe).
            await wait_for(lambda: bool(kafka.paused()), 10, "partitions paused")
            # Each refused probe of the quota extends the pause by one period.
            period = settings.salesforce_limit_pause_seconds
            await wait_for(
                lambda: pipeline.gate.state.until >= first_until + period, 20, "a refused probe"
            )
            stuck_at = len(results.records)
            probed_until = pipeline.gate.state.until
            await wait_for(
                lambda: pipeline.gate.state.until >= probed_until + period,
                20,
                "another refused probe",
            )
            # Nothing is acknowledged while the quota is spent; the service keeps polling.
            assert len(results.records) <= stuck_at + 50
            assert emulator.stats["http_403"] <= 12, "a spent quota must not be hammered"
            emulator.set_api_usage(100, 15000)  # the rolling window moved on
            await wait_for(lambda: len(results.records) >= total, 60, "all outcomes")
            assert await running.finish() == 0
        assert (
            sample_value(metrics, "consent_sync_salesforce_pauses_total", {"reason": "daily_limit"})
            >= 1
        )
        assert sample_value(metrics, "consent_sync_salesforce_writes_paused") == 0
    assert_final_state(emulator, scenario)
    assert_outcomes(results.values(), scenario, topics.input)


async def test_api_budget_share_stops_writes_before_the_limit(kafka_bootstrap: str) -> None:
    scenario = build(n_people=20, n_events=200, seed=32, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_api_usage(9_500, 10_000)  # 95% used by the org's other integrations
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            salesforce_budget_pause_seconds=0.5,
            salesforce_api_budget_share=0.9,
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            metrics = running.service.metrics
            await wait_for(
                lambda: (
                    sample_value(
                        metrics, "consent_sync_salesforce_pauses_total", {"reason": "api_budget"}
                    )
                    >= 1
                ),
                30,
                "budget pause",
            )
            pipeline = running.service.pipeline
            assert pipeline is not None
            first_until = pipeline.gate.state.until
            # Two more probes, both refused (each extends the pause by one period).
            await wait_for(
                lambda: (
                    pipeline.gate.state.until
                    >= first_until + 2 * settings.salesforce_budget_pause_seconds
                ),
                20,
                "two refused probes",
            )
            assert emulator.stats["update"] == 0
            assert emulator.stats["create"] == 0
            assert results.records == []
            used, _ = emulator.api_usage
            assert used < 9_500 + 20, "paused probing must cost few calls"
            emulator.set_api_usage(1_000, 10_000)
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 60, "outcomes")
            assert await running.finish() == 0
    assert_final_state(emulator, scenario)


async def test_refused_login_keeps_the_service_up_and_unready_until_fixed(
    kafka_bootstrap: str,
) -> None:
    scenario = build(n_people=10, n_events=60, seed=33, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_client_secret("rotated-by-an-admin")
        settings = settings_for(
            kafka_bootstrap, topics, emulator.url, salesforce_auth_retry_seconds=0.5
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            loop = asyncio.get_running_loop()
            await wait_for(lambda: emulator.stats["token"] >= 1, 30, "a login")
            first = loop.time()
            await wait_for(lambda: emulator.stats["token"] >= 4, 30, "three more logins")
            took = loop.time() - first
            assert not running.task.done()
            assert running.service.health.ready() == (
                False,
                "salesforce authentication pending or failing",
            )
            assert emulator.tokens_issued == 0
            # Refused logins are retried slowly, not in a loop: three retries take three
            # SALESFORCE_AUTH_RETRY_SECONDS (a lower bound, which a busy machine cannot break).
            assert took >= 2 * settings.salesforce_auth_retry_seconds, took
            emulator.set_client_secret(settings.salesforce_client_secret.get_secret_value())
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 60, "outcomes")
            await wait_for(lambda: running.service.health.salesforce_ok, 10, "ready")
            assert await running.finish() == 0
    assert_final_state(emulator, scenario)


async def test_rest_api_revoked_mid_run_pauses_and_resumes(kafka_bootstrap: str) -> None:
    scenario = build(n_people=30, n_events=400, seed=34)
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics)
    pairs = [(m.key, m.value) for m in scenario.messages]
    await produce(kafka_bootstrap, topics.input, pairs[:100])
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=10)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            salesforce_auth_retry_seconds=0.5,
            **SMALL_BATCHES,
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 100, 60, "first outcomes")
            emulator.rest_api_disabled = True
            # The rest arrives while the integration user has lost API access.
            await produce(kafka_bootstrap, topics.input, pairs[100:])
            health = running.service.health
            await wait_for(lambda: not health.salesforce_ok, 20, "not ready")
            metrics = running.service.metrics
            await wait_for(
                lambda: (
                    sample_value(
                        metrics,
                        "consent_sync_salesforce_calls_total",
                        {"operation": "query", "status": "401"},
                    )
                    >= 2
                ),
                20,
                "a refused probe after the pause",
            )
            emulator.rest_api_disabled = False
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 60, "outcomes")
            await wait_for(lambda: health.salesforce_ok, 10, "ready again")
            assert await running.finish() == 0
            metrics = running.service.metrics
        assert (
            sample_value(
                metrics, "consent_sync_salesforce_pauses_total", {"reason": "authentication"}
            )
            == 1
        )
    assert_final_state(emulator, scenario)
    assert_outcomes(results.values(), scenario, topics.input)


async def test_5xx_html_timeouts_and_concurrency_limits_are_retried(kafka_bootstrap: str) -> None:
    scenario = build(n_people=30, n_events=300, seed=35)
    topics = await scenario_topics(kafka_bootstrap, scenario)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            salesforce_timeout_seconds=1.0,
            **SMALL_BATCHES,
        )
        emulator.inject_fault("query", 503, count=2)  # HTML body
        emulator.inject_fault("update", 500, body="<html><body>Oops</body></html>", count=2)
        emulator.inject_fault("create", 502, count=1)
        emulator.inject_fault(
            "update",
            403,
            body=[
                {
                    "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED",
                }
            ],
            count=1,
        )
        emulator.hang_next("query", 3.0)  # longer than the client's timeout
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 90, "outcomes")
            assert await running.finish() == 0
            metrics = running.service.metrics
        stats = emulator.stats
    assert_final_state(emulator, scenario)
    assert_outcomes(results.values(), scenario, topics.input)
    assert stats["http_5xx"] == 5
    retried = {
        reason: sample_value(metrics, "consent_sync_salesforce_retries_total", {"reason": reason})
        for reason in ("HTTP_503", "CONNECTION_ERROR", "records")
    }
    assert retried["HTTP_503"] == 2
    assert retried["CONNECTION_ERROR"] == 1  # the timed-out query
    assert retried["records"] >= 3  # 500, 500, 502 and 403-concurrency each cost a round
    assert (
        sample_value(metrics, "consent_sync_salesforce_pauses_total", {"reason": "daily_limit"})
        == 0
    )


@pytest.mark.parametrize("policy", ["dead_letter", "pause"])
async def test_spent_retry_budget_follows_the_policy(kafka_bootstrap: str, policy: str) -> None:
    scenario = build(n_people=10, n_events=40, seed=36, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario, 1)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.inject_fault("update", 503, count=10_000)
        emulator.inject_fault("create", 503, count=10_000)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            salesforce_retry_budget_seconds=1.0,
            salesforce_retry_max_seconds=0.2,
            salesforce_on_retry_exhausted=policy,
            sync_batch_linger_ms=300,
        )
        total = len(scenario.messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            if policy == "dead_letter":
                await wait_for(lambda: len(results.records) >= total, 60, "outcomes")
                # Dead letters go out before their outcomes, but the two topics are read by
                # two consumers: the dead-letter one may still be behind.
                expected = sum(1 for o in results.values() if o["status"] == "failed")
                await wait_for(lambda: len(dlq.records) >= expected, 30, "dead letters")
            else:
                metrics = running.service.metrics
                await wait_for(
                    lambda: (
                        sample_value(
                            metrics,
                            "consent_sync_salesforce_pauses_total",
                            {"reason": "unavailable"},
                        )
                        >= 1
                    ),
                    30,
                    "pause",
                )
                pipeline = running.service.pipeline
                assert pipeline is not None
                first_until = pipeline.gate.state.until
                # The probe after the pause spends a whole retry budget again, and pauses again.
                await wait_for(
                    lambda: (
                        pipeline.gate.state.until
                        >= first_until + settings.salesforce_retry_budget_seconds
                    ),
                    30,
                    "another spent retry budget",
                )
                assert results.records == []
                emulator.clear_faults()
                await wait_for(lambda: len(results.records) >= total, 60, "outcomes")
            assert await running.finish() == 0
    statuses = Counter(o["status"] for o in results.values())
    if policy == "dead_letter":
        assert statuses["failed"] > 0
        failed = [o for o in results.values() if o["status"] == "failed"]
        assert {o["error_class"] for o in failed} == {"RETRY_BUDGET_EXHAUSTED"}
        assert len(dlq.records) == len(failed)
    else:
        assert statuses["failed"] == 0
        assert dlq.records == []
        assert_final_state(emulator, scenario)


async def test_external_id_mode_upserts_without_queries(kafka_bootstrap: str) -> None:
    scenario = build(n_people=250, n_events=1000, seed=37, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario)
    async with make_emulator() as emulator:
        existing = {}
        for person, email in enumerate(scenario.emails):
            if person % 2 == 0:
                existing[person] = emulator.seed(
                    "Contact", {"Email": email, "LastName": f"Real {person}", "Didomi_Id__c": email}
                )
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            sync_batch_max_events=len(scenario.messages),
            sync_batch_linger_ms=60_000,
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings, parse_mapping(EXTERNAL_ID_MAPPING)) as running,
        ):
            # Everything is fetched while the lanes linger; the shutdown writes each lane's
            # one batch, so the calls can be counted lane by lane.
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
        stats = emulator.stats
        expected = scenario.expected_contacts()
        for person, email in enumerate(scenario.emails):
            records = emulator.find_by_email("Contact", email)
            if person not in expected:
                assert len(records) == (1 if person in existing else 0)
                continue
            assert len(records) == 1, email
            record = records[0]
            if person in existing:
                assert record["Id"] == existing[person]
                assert record["LastName"] == f"Real {person}"  # defaults never overwrite
            else:
                assert record["LastName"] == "Unknown"
            for name, value in expected[person].items():
                assert record[name] == value, (email, name)
    new_people = sum(1 for p in expected if p not in existing)
    assert stats["query"] == 0
    # One call per 200 people of a lane's batch, plus one for the people Salesforce could only
    # create with create_defaults (a second pass, so that defaults never overwrite records).
    calls = 0
    for n in range(settings.sync_concurrency):
        mine = [p for p in expected if lane_of(email_key(scenario.emails[p]), 4) == n]
        calls += -(-len(mine) // 200) + -(-sum(1 for p in mine if p not in existing) // 200)
    assert stats["upsert"] == calls
    created = Counter(t["status"] for o in results.values() for t in o["targets"])
    assert created["created"] >= new_people
    assert created["failed"] == 0
