"""The write gate: pauses by each error's reaction; deliberate pauses keep health green."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from consumer.engine.gate import GatePolicy, Verdict, WriteGate
from consumer.engine.health import Health
from consumer.errors import (
    ApiBudgetExceededError,
    AuthenticationError,
    RequestLimitExceededError,
    RetryBudgetExhaustedError,
)
from consumer.observability.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, on_retry_exhausted: str = "pause") -> tuple[WriteGate, Health, Metrics]:
    metrics = Metrics(CollectorRegistry())
    health = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    policy = GatePolicy(
        pause_seconds={"daily_limit": 300, "api_budget": 60, "authentication": 30},
        default_pause_seconds=30,
        on_retry_exhausted=on_retry_exhausted,
    )
    return WriteGate(policy, metrics, health, clock=clock), health, metrics


@pytest.mark.parametrize(
    ("error", "reason", "seconds"),
    [
        (RequestLimitExceededError("x"), "daily_limit", 300),
        (ApiBudgetExceededError("x"), "api_budget", 60),
        (AuthenticationError("x"), "authentication", 30),
        (RetryBudgetExhaustedError("x"), "unavailable", 30),
    ],
)
def test_errors_that_concern_every_batch_close_the_gate_for_their_reason(
    error: Exception, reason: str, seconds: float
) -> None:
    clock = Clock()
    g, health, metrics = gate(clock)
    health.salesforce_ok = True
    assert g.failed(error) is Verdict.RETRY
    assert g.state.reason == reason
    assert g.state.remaining(clock()) == seconds
    assert g.deliberate()
    assert (
        metrics.registry.get_sample_value(
            "consent_sync_salesforce_pauses_total", {"reason": reason}
        )
        == 1
    )
    # Only a refused login makes the service unready.
    assert health.salesforce_ok is not isinstance(error, AuthenticationError)


def test_a_spent_retry_budget_gives_up_under_the_dead_letter_policy() -> None:
    g, _, _ = gate(Clock(), on_retry_exhausted="dead_letter")
    assert g.failed(RetryBudgetExhaustedError("x")) is Verdict.GIVE_UP
    assert not g.closed()


def test_deliberate_pauses_stay_healthy_and_unexpected_ones_turn_red() -> None:
    clock = Clock()
    g, health, _ = gate(clock)
    health.polled(clock(), pending=True, paused=False)
    g.failed(RequestLimitExceededError("x"))
    for _ in range(20):  # a long quota pause: polling goes on, nothing finishes
        clock.now += 100
        health.polled(clock(), pending=True, paused=g.deliberate())
        g.state.pause("daily_limit", clock() + 300)
    assert health.live(clock())[0]
    g.succeeded()
    health.progressed(clock())
    g.failed(RuntimeError("a bug"))  # not a SyncError: unexpected
    assert g.closed() and not g.deliberate()
    for _ in range(7):
        clock.now += 100
        health.polled(clock(), pending=True, paused=g.deliberate())
        g.state.pause("unexpected_error", clock() + 30)
    live, why = health.live(clock())
    assert not live
    assert "no batch finished" in why


@pytest.mark.asyncio
async def test_after_a_pause_one_write_probes_and_the_others_wait_for_its_answer() -> None:
    clock = Clock()
    g, _, _ = gate(clock)
    g.failed(RequestLimitExceededError("x"))
    clock.now += 301  # the pause is over
    first = await g.wait_open()
    assert first is True  # the probe
    waiter = asyncio.ensure_future(g.wait_open())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # waits for the probe's answer
    g.succeeded()
    assert await asyncio.wait_for(waiter, 1) is False
    assert not g.closed()


@pytest.mark.asyncio
async def test_an_abandoned_probe_lets_another_write_probe() -> None:
    clock = Clock()
    g, _, _ = gate(clock)
    g.failed(RequestLimitExceededError("x"))
    clock.now += 301
    assert await g.wait_open() is True
    waiter = asyncio.ensure_future(g.wait_open())
    await asyncio.sleep(0.01)
    g.abandoned()
    assert await asyncio.wait_for(waiter, 1) is True


@pytest.mark.asyncio
async def test_the_probes_batch_goes_with_it_and_other_batches_wait() -> None:
    # The targets of one batch wait for each other's reads before writing: one held at the
    # gate while the other probes would hold the probe for ever.
    clock = Clock()
    g, _, _ = gate(clock)
    g.failed(RequestLimitExceededError("x"))
    clock.now += 301
    batch, other = object(), object()
    assert await g.wait_open(owner=batch) is True  # the probe
    assert await asyncio.wait_for(g.wait_open(owner=batch), 1) is False  # its partner goes
    waiter = asyncio.ensure_future(g.wait_open(owner=other))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # another batch waits for the probe's answer
    g.failed(RequestLimitExceededError("x"), probe=True)
    clock.now += 301
    # The next probe may be the other batch's; the first batch's writers are not partners
    # of it.
    assert await asyncio.wait_for(waiter, 1) is True
    late = asyncio.ensure_future(g.wait_open(owner=batch))
    await asyncio.sleep(0.01)
    assert not late.done()
    g.succeeded()
    assert await asyncio.wait_for(late, 1) is False
