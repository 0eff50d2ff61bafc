"""The service as a real process: SIGTERM drains and commits, a second signal exits at once,
a stop during start-up is prompt, and SIGKILL at random points loses nothing."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scenario import build
from tests.integration.support import (
    ServiceProcess,
    Topics,
    assert_final_state,
    collect,
    committed_offsets,
    make_emulator,
    make_topics,
    scenario_topics,
    seed,
    service_env,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


def positions(outcomes: list[dict[str, Any]]) -> Counter[tuple[int, int]]:
    return Counter((o["source"]["partition"], o["source"]["offset"]) for o in outcomes)


async def test_sigterm_finishes_in_flight_work_then_commits_exactly_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    scenario = build(n_people=100, n_events=3000, seed=81)
    topics = await scenario_topics(kafka_bootstrap, scenario, 3)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=30, jitter_ms=20, seed=2)
        env = service_env(
            kafka_bootstrap,
            topics,
            emulator.url,
            SYNC_BATCH_MAX_EVENTS="100",
            SYNC_SHUTDOWN_TIMEOUT_SECONDS="15",
            # Little fetched ahead, so the stop lands mid-way: the drain finishes what was
            # fetched and the rest stays for the next run.
            SYNC_MAX_PENDING_EVENTS="300",
            KAFKA_FETCH_MAX_RECORDS="100",
        )
        async with collect(kafka_bootstrap, topics.results) as results:
            service = ServiceProcess(env, tmp_path / "service.log")
            await service.start()
            try:
                await wait_for(lambda: len(results.records) >= 600, 60, "some outcomes")
                service.signal(signal.SIGTERM)
                code = await service.wait(30)
            finally:
                await service.kill()
            assert code == 0, service.logs()[-3000:]
            assert "stopping" in service.logs()
            # A real run at INFO names nobody: no email of the 100 people in any line.
            assert "@example.com" not in service.logs()
            # Every in-flight batch finished inside SYNC_SHUTDOWN_TIMEOUT_SECONDS: none was cut.
            assert "abandoned in-flight batches" not in service.logs()
            await results.read_to_end()  # the exited service's last outcomes
            outcomes = results.values()
        committed = await committed_offsets(kafka_bootstrap, topics.group, topics.input, 3)
        done = positions(outcomes)
        assert max(done.values()) == 1
        for partition, offset in committed.items():
            # Exactly what has outcomes is committed: nothing lost, nothing half-done.
            assert {o for p, o in done if p == partition} == set(range(offset or 0))
        assert 600 <= sum(o or 0 for o in committed.values()) < len(scenario.messages)


async def test_a_second_signal_exits_at_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    scenario = build(n_people=10, n_events=100, seed=82, noise=False)
    topics = await scenario_topics(kafka_bootstrap, scenario, 1)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.hang_next("query", 60.0, count=100)  # Salesforce never answers
        env = service_env(
            kafka_bootstrap,
            topics,
            emulator.url,
            SYNC_SHUTDOWN_TIMEOUT_SECONDS="25",
            SALESFORCE_TIMEOUT_SECONDS="120",
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        await service.start()
        try:
            await wait_for(lambda: emulator.stats["query"] >= 1, 60, "a hanging query")
            service.signal(signal.SIGTERM)
            await wait_for(lambda: '"stopping"' in service.logs(), 10, "the first signal taken")
            assert service.proc is not None and service.proc.returncode is None  # draining
            service.signal(signal.SIGINT)
            code = await service.wait(5)
        finally:
            await service.kill()
        assert code == 128 + signal.SIGINT
    committed = await committed_offsets(kafka_bootstrap, topics.group, topics.input, 1)
    assert committed[0] in (None, 0)  # nothing was done, so nothing was committed


async def test_sigterm_while_joining_the_group_stops_promptly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 1)
    async with make_emulator() as emulator:
        env = service_env(kafka_bootstrap, topics, emulator.url)
        service = ServiceProcess(env, tmp_path / "service.log")
        await service.start()
        try:
            await wait_for(lambda: emulator.stats["describe"] >= 2, 30, "start-up check done")
            service.signal(signal.SIGTERM)
            started = time.monotonic()
            code = await service.wait(10)
        finally:
            await service.kill()
        assert code == 0
        assert time.monotonic() - started < 5


async def test_sigterm_during_a_long_join_stops_before_the_join_ends(
    kafka_bootstrap: str, tmp_path: Path, real_kafka: bool
) -> None:
    if real_kafka:
        pytest.skip("makes a join long by the embedded broker's join delay")
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 1)
    async with make_emulator() as emulator:
        # A join on the embedded broker takes half the session timeout: 30 s here (like a join
        # waiting for a killed member's session to expire), far longer than the wait below.
        env = service_env(kafka_bootstrap, topics, emulator.url, KAFKA_SESSION_TIMEOUT_MS="60000")
        service = ServiceProcess(env, tmp_path / "service.log")
        await service.start()
        try:
            await wait_for(lambda: emulator.stats["describe"] >= 2, 30, "start-up check done")
            # Not a wait for something: the signal's timing. The join starts milliseconds
            # after the check and lasts 30 s; 3 s in, the service is surely inside it.
            await asyncio.sleep(3)
            service.signal(signal.SIGTERM)
            code = await service.wait(5)
        finally:
            await service.kill()
        assert code == 0, service.logs()[-3000:]
        assert "partitions assigned" not in service.logs()  # it stopped mid-join


@pytest.mark.slow
async def test_sigkill_at_random_points_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    scenario = build(n_people=500, n_events=10_000, seed=83)
    topics = await scenario_topics(kafka_bootstrap, scenario, 3)
    total = len(scenario.messages)
    rng = random.Random(83)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=5, jitter_ms=25, seed=5)
        # A killed member holds its partitions until its session times out: the short
        # sessions of group_timeouts() keep this test short.
        env = service_env(kafka_bootstrap, topics, emulator.url, SYNC_BATCH_MAX_EVENTS="200")
        async with collect(kafka_bootstrap, topics.results) as results:

            def seen() -> int:
                return len(results.positions())

            kills = 0
            for run in range(4):
                service = ServiceProcess(env, tmp_path / f"service-{run}.log")
                await service.start()
                try:
                    # Kill the new member mid-work, after a random amount of progress.
                    target = min(total, seen() + rng.randint(200, 1500))
                    await wait_for(lambda t=target: seen() >= t, 90, f"progress in run {run}")
                    if seen() >= total:
                        break
                finally:
                    await service.kill()
                kills += 1
            assert kills >= 3
            final = ServiceProcess(env, tmp_path / "service-final.log")
            described = emulator.stats["describe"]
            await final.start()
            try:
                await wait_for(lambda: seen() >= total, 120, "every input")
                # The last killed run may have finished everything: the final one must be
                # past its start-up (signals handled) before it is asked to stop.
                await wait_for(
                    lambda: emulator.stats["describe"] >= described + 2, 30, "its start-up"
                )
                final.signal(signal.SIGTERM)
                assert await final.wait(30) == 0
            finally:
                await final.kill()
        assert_final_state(emulator, scenario)
    outcomes = results.values()
    assert len(positions(outcomes)) == total  # at least one outcome each; duplicates allowed
    assert all(o["status"] != "failed" for o in outcomes)
