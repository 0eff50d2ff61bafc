"""Waits that could stall the service silently (review findings), on in-memory ports.

A pause whose waiting batches a rebalance abandoned must not hold the partitions for good:
the poll loop kept every partition paused while the gate held a pause, and the gate held it
until a probe succeeded; a rebalance during the pause (a deploy, KEDA scaling on the lag the
pause grows) abandons every batch waiting at the gate, so nothing was fetched, nothing
probed, and the member stopped consuming for good with /healthz green. A commit the
coordinator does not answer must hold neither the poll loop nor a shutdown.
"""

from __future__ import annotations

import asyncio

import pytest

from consumer.errors import RequestLimitExceededError
from tests.unit.test_engine import Harness, event, tp

pytestmark = pytest.mark.asyncio


async def test_a_pause_whose_waiting_batches_a_rebalance_abandoned_ends() -> None:
    # The daily limit closes the gate; the only batch waiting at it is abandoned by a
    # rebalance (its partition moves to another member). This member keeps partition 1, where
    # a new event arrives: once the pause is over, it is fetched, probes and is written.
    h = Harness(partitions=2, daily_limit_seconds=0.3, rebalance_timeout_seconds=0.05)
    h.contact.errors = [RequestLimitExceededError("limit", status=403)]
    h.consumer.append(0, event("a@x.com", 0, newsletter=None))  # Contact only
    h.start()
    await h.until("paused", h.gate.closed)
    await h.consumer.rebalance({tp(1)})  # eager: both revoked, partition 1 handed back
    h.consumer.append(1, event("b@x.com", 1, newsletter=None))
    await h.until("b's event written after the pause", lambda: len(h.outcomes()) == 1, 5)
    assert not h.gate.holding()
    assert tp(1) not in h.consumer.paused_partitions
    await h.finish()
    assert [o["status"] for o in h.outcomes()] == ["updated"]


async def test_with_the_choices_topic_the_abandoned_event_is_read_again() -> None:
    # As deployed: the read-back after the rebalance runs while the gate holds, and the poll
    # loop marks the partition paused meanwhile; once the pause is over the abandoned event
    # is read again and written.
    h = Harness(partitions=1, choices=True, daily_limit_seconds=0.3, rebalance_timeout_seconds=0.05)
    assert h.log is not None
    h.contact.errors = [RequestLimitExceededError("limit", status=403)]
    h.consumer.append(0, event("a@x.com", 0, newsletter=None))  # Contact only
    h.start()
    await h.until("paused", h.gate.closed)
    h.log.hold = asyncio.Event()  # the read-back takes a moment (a real topic does)
    await h.consumer.rebalance({tp(0)})
    await h.until("a poll during the read-back", lambda: tp(0) in h.pipeline._parts.paused())
    h.log.hold.set()
    await h.until("a's event written after the pause", lambda: len(h.outcomes()) == 1, 5)
    await h.finish()
    assert [o["status"] for o in h.outcomes()] == ["updated"]


async def test_a_commit_the_coordinator_does_not_answer_neither_hangs_the_loop_nor_the_stop() -> (
    None
):
    # Review finding: aiokafka retries a coordinator it cannot reach for ever, and the poll
    # loop (and the drain's last commit) waited for it: a SIGTERM never ended the process.
    h = Harness(commit_timeout_seconds=0.1, shutdown_timeout_seconds=0.2)
    h.consumer.commit_hangs = asyncio.Event()
    h.consumer.append(0, event("a@x.com", 0))
    h.start()
    await h.until("the outcome", lambda: len(h.outcomes()) == 1)
    # The loop goes on polling: a second event is taken in and written meanwhile.
    h.consumer.append(0, event("b@x.com", 1))
    await h.until("the second outcome", lambda: len(h.outcomes()) == 2)
    await h.until("a commit counted as failed", lambda: h.health.commit_failing_since is not None)
    started = asyncio.get_running_loop().time()
    await h.finish()  # the drain's last commit is bounded too
    assert asyncio.get_running_loop().time() - started < 5
    assert h.consumer.committed == {}
    # Once the coordinator answers, what is done is committed.
    h.consumer.commit_hangs = None
    await h.pipeline.commit()
    assert h.consumer.committed == {tp(0): 2}


async def test_waiting_for_a_commit_under_way_counts_in_the_timeout() -> None:
    # Review finding: the drain's last commit could wait a whole commit timeout for one a
    # revocation started, then take its own: past Kubernetes' grace with a silent broker.
    h = Harness(commit_timeout_seconds=30)
    h.consumer.commit_hangs = asyncio.Event()
    h.consumer.append(0, event("a@x.com", 0))
    h.start()
    await h.until("the outcome", lambda: len(h.outcomes()) == 1)
    await h.until("a commit under way", h.pipeline._commit_lock.locked)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await h.pipeline.commit(timeout=0.2)
    assert loop.time() - started < 1.0
    assert h.health.commit_failing_since is not None
    assert h.consumer.committed == {}
    h.consumer.commit_hangs.set()  # the coordinator answers again
    await h.finish()
    assert h.consumer.committed == {tp(0): 1}
