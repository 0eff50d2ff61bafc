"""A pause whose waiting batches a rebalance abandoned must not hold the partitions for good.

Found in review: the poll loop kept every partition paused while the gate held a pause, and
the gate held it until a probe succeeded; a rebalance during the pause (a deploy, KEDA
scaling on the lag the pause grows) abandons every batch waiting at the gate, so nothing was
fetched, nothing probed, and the member stopped consuming for good with /healthz green.
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
