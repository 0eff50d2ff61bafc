"""Soak: 20,000 events through random 503s, lock errors, token expiries and latency jitter."""

from __future__ import annotations

import logging

import pytest

from tests.integration.scenario import build
from tests.integration.support import (
    assert_final_state,
    assert_outcomes,
    collect,
    make_emulator,
    running_service,
    sample_value,
    scenario_topics,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration, pytest.mark.slow]


async def test_soak_20000_events_with_faults(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    scenario = build(n_people=2_000, n_events=20_000, seed=41)
    topics = await scenario_topics(kafka_bootstrap, scenario, 4)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_random_faults(http_503_rate=0.05, lock_rate=0.02, seed=7)
        # Composite calls (SALESFORCE_COMPOSITE=auto, a 20,000-message backlog) make few API
        # calls: tokens expire after 100 of them so that expiry still happens mid-run.
        emulator.expire_tokens_after(calls=100)
        emulator.set_latency(base_ms=2, jitter_ms=20, seed=9)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            sync_batch_max_events=500,
            sync_batch_linger_ms=100,
            sync_concurrency=4,
            salesforce_retry_initial_seconds=0.02,
            salesforce_retry_max_seconds=0.2,
            salesforce_retry_budget_seconds=60,
        )
        total = len(scenario.messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= total, 240, "all outcomes")
            assert await running.finish() == 0
            metrics = running.service.metrics
            client = running.service.client
        stats = emulator.stats
        assert_final_state(emulator, scenario)
    assert_outcomes(results.values(), scenario, topics.input)
    assert stats["faults_injected"] > 0
    assert stats["http_5xx"] > 0
    assert stats["http_401"] > 0
    assert stats.get("composite", 0) > 0  # a backlog: auto sends composite calls
    # One new token per expiry: every token but the last served its 100 calls.
    assert client.token_grants == emulator.tokens_issued
    assert client.token_grants <= stats["api_calls"] // 100 + 2
    assert (
        sample_value(
            metrics, "consent_sync_salesforce_retries_total", {"reason": "UNABLE_TO_LOCK_ROW"}
        )
        > 0
    )
    assert (
        sample_value(metrics, "consent_sync_salesforce_pauses_total", {"reason": "unavailable"})
        == 0
    )
