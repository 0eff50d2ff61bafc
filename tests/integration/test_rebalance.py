"""Consumer-group membership: members joining and leaving mid-run, long Salesforce stalls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import pytest

from tests.integration.scenario import build
from tests.integration.support import (
    RunningService,
    Topics,
    assert_final_state,
    collect,
    committed_offsets,
    make_emulator,
    make_topics,
    produce,
    running_service,
    scenario_topics,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

PARTITIONS = 6


@pytest.mark.slow
async def test_members_joining_and_leaving_lose_nothing(kafka_bootstrap: str) -> None:
    scenario = build(n_people=150, n_events=6000, seed=71)
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, PARTITIONS)
    total = len(scenario.messages)
    # Produced in four parts, around the membership changes, so that every member joins and
    # leaves while there is work left (however fast the others are).
    parts = [scenario.messages[i * total // 4 : (i + 1) * total // 4] for i in range(4)]

    async def produce_part(n: int) -> None:
        await produce(kafka_bootstrap, topics.input, [(m.key, m.value) for m in parts[n]])

    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=40, jitter_ms=20, seed=4)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            sync_batch_max_events=100,
            sync_batch_linger_ms=20,
            kafka_fetch_max_records=200,
        )
        async with collect(kafka_bootstrap, topics.results) as results:

            def seen() -> int:
                return len(results.positions())

            def consumed(member: RunningService) -> float:
                value = member.service.metrics.registry.get_sample_value(
                    "consent_sync_messages_consumed_total", {"topic": topics.input}
                )
                return value or 0.0

            async with contextlib.AsyncExitStack() as stack:
                await produce_part(0)
                first = await stack.enter_async_context(running_service(settings))
                await wait_for(lambda: len(results.records) >= total * 0.05, 60, "first member")
                second = await stack.enter_async_context(running_service(settings))
                await wait_for(lambda: second.service.health.joined, 60, "second member joins")
                await produce_part(1)
                await wait_for(lambda: consumed(second) > 0, 60, "second member reads")
                third = await stack.enter_async_context(running_service(settings))
                await wait_for(lambda: third.service.health.joined, 60, "third member joins")
                await produce_part(2)
                await wait_for(lambda: consumed(third) > 0, 60, "third member reads")
                await produce_part(3)
                assert await second.finish() == 0  # leaves mid-run
                assert await third.finish() == 0
                await wait_for(lambda: seen() >= total, 90, "every input")
                assert await first.finish() == 0
    assert_final_state(emulator, scenario)
    outcomes = results.values()
    by_position = Counter((o["source"]["partition"], o["source"]["offset"]) for o in outcomes)
    assert len(by_position) == total  # every input has an outcome (duplicates allowed)
    assert all(o["status"] != "failed" for o in outcomes)
    offsets = await committed_offsets(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
    per_partition = Counter(p for p, _ in by_position)
    assert offsets == {p: per_partition[p] for p in range(PARTITIONS)}


async def test_a_salesforce_stall_longer_than_max_poll_interval_keeps_the_member(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.engine.pipeline")
    scenario = build(n_people=20, n_events=200, seed=72, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario, 2)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            kafka_max_poll_interval_ms=3000,
            salesforce_timeout_seconds=30,
            sync_batch_max_events=50,
        )
        emulator.hang_next("update", 4.5, count=2)  # each over max_poll_interval_ms
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 90, "outcomes")
            live, why = running.service.health.live(asyncio.get_running_loop().time())
            assert live, why
            assert await running.finish() == 0
    messages = [r.getMessage() for r in caplog.records]
    # One assignment and no revocation: the member was never evicted while Salesforce stalled.
    assert messages.count("partitions assigned") == 1
    assert messages.count("partitions revoked") == 0
    positions = Counter((o["source"]["partition"], o["source"]["offset"]) for o in results.values())
    assert max(positions.values()) == 1  # nothing was processed twice
    assert_final_state(emulator, scenario)
