"""HeldChoices: what the targets of one batch tell each other about the stamps their records
hold, and the wait that never outlasts a writer."""

from __future__ import annotations

import asyncio

import pytest

from consumer.model.changes import Stamp
from consumer.model.held import HeldChoices

pytestmark = pytest.mark.asyncio

NEWSLETTER = ("purposes", "newsletter")
ANALYTICS = ("purposes", "analytics")


async def test_a_writer_waits_until_every_other_posted_or_left() -> None:
    held = HeldChoices(["Contact", "Lead", "Account"])
    held.post("Lead", {"p": {NEWSLETTER: Stamp(5, 0, 1)}})
    waiting = asyncio.create_task(held.settled())
    await asyncio.sleep(0)
    assert not waiting.done()
    held.leave("Account")  # no sync state, or done: posts nothing
    await asyncio.sleep(0)
    assert not waiting.done()
    held.post("Contact", {"p": {NEWSLETTER: Stamp(3, 0, 9)}, "q": {NEWSLETTER: Stamp(1, 0, 0)}})
    await asyncio.wait_for(waiting, 1)
    # The newest stamp per person and choice, whichever target posted it.
    assert held.of("p") == {NEWSLETTER: Stamp(5, 0, 1)}
    assert held.of("q") == {NEWSLETTER: Stamp(1, 0, 0)}
    assert held.of("nobody") == {}


async def test_posting_again_only_adds_newer_stamps_and_leaving_twice_is_harmless() -> None:
    held = HeldChoices(["Contact"])
    assert held.alone("Contact") and not HeldChoices(["Contact", "Lead"]).alone("Contact")
    held.post("Contact", {"p": {NEWSLETTER: Stamp(5, 0, 1)}})
    held.post("Contact", {"p": {NEWSLETTER: Stamp(4, 1, 1), ANALYTICS: Stamp(2, 0, 0)}})
    held.leave("Contact")
    held.leave("Contact")
    await asyncio.wait_for(held.settled(), 1)
    assert held.of("p") == {NEWSLETTER: Stamp(5, 0, 1), ANALYTICS: Stamp(2, 0, 0)}


async def test_no_writer_means_nothing_to_wait_for() -> None:
    await asyncio.wait_for(HeldChoices([]).settled(), 1)
