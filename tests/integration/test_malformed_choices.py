"""A malformed part of one purpose does not block the event's other choices: a withdrawal
beside it is written (review finding: one unmapped purpose with a ``null`` preference value
rejected the whole event, and the Contact kept saying consent until someone redrove it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from tests.integration.support import example_mapping, make_emulator
from tests.integration.test_consent_order import running
from tests.integration.test_recent_choices import EMAIL, deliver, event, form_contact, target
from tests.integration.test_redrive_order import iso
from tests.unit.helpers import T0

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


async def test_a_malformed_unmapped_purpose_does_not_block_a_withdrawal() -> None:
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            await deliver(run, event("g", 0, {"id": "newsletter", "enabled": True}))
            withdrawal = await deliver(
                run,
                event(
                    "w",
                    5,
                    {"id": "newsletter", "enabled": False},
                    # A purpose nobody mapped, with a preference Didomi sent as null.
                    {"id": "cookies", "enabled": None, "values": {"vendors": {"value": None}}},
                ),
            )
            dead = run.producer.topics["dlq"]
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (withdrawal, record)
    # What no target maps is left out like any key the sync does not use.
    assert withdrawal["status"] == "updated", withdrawal
    assert not dead


async def test_a_malformed_mapped_choice_beside_a_withdrawal_is_partial() -> None:
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            await deliver(run, event("g", 0, {"id": "newsletter", "enabled": True}))
            bad = {"id": "analytics", "enabled": "no"}  # mapped, and not a boolean
            partial = await deliver(run, event("w", 5, {"id": "newsletter", "enabled": False}, bad))
            dead = list(run.producer.topics["dlq"])
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is False, (partial, record)
    assert partial["status"] == "partial", partial
    assert partial["error_class"] == "SCHEMA_VALIDATION"
    assert "purposes.1.enabled" in partial["reason"], partial
    assert target(partial, "Contact")["status"] == "updated", partial
    # Dead-lettered, so that it can be fixed and redriven.
    assert len(dead) == 1


async def test_an_event_whose_only_mapped_choice_is_malformed_is_rejected() -> None:
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            await deliver(run, event("g", 0, {"id": "newsletter", "enabled": True}))
            outcome = await deliver(run, event("w", 5, {"id": "newsletter", "enabled": "no"}))
            dead = list(run.producer.topics["dlq"])
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is True
    assert outcome["status"] == "rejected", outcome
    assert outcome["error_class"] == "SCHEMA_VALIDATION"
    assert "purposes.0.enabled" in outcome["reason"], outcome
    assert len(dead) == 1


def user_updated(minutes: int, old: list[Any], new: list[Any]) -> bytes:
    def user(purposes: list[Any], at: int) -> dict[str, Any]:
        return {
            "id": "user-a",
            "organization_user_id": EMAIL,
            "created_at": iso(T0),
            "updated_at": iso(T0 + timedelta(minutes=at)),
            "consents": {"purposes": purposes},
        }

    params = {
        "source": {"id": f"src-{minutes}", "created_at": iso(T0 + timedelta(minutes=minutes))},
        "old_entity": user(old, 1),
        "new_entity": user(new, minutes),
    }
    return orjson.dumps({"type": "user.updated", "parameters": params})


async def test_a_user_aggregate_with_a_malformed_unmapped_purpose_reasserts_nothing() -> None:
    # Review finding: user A's aggregate changes analytics only; its old and new entity both
    # carry the same malformed unmapped purpose. The new one was salvaged, the old one read
    # strictly: unreadable, so A's whole state applied and re-asserted the newsletter over B's
    # later withdrawal (two Didomi users of one email). The old one is now read without the
    # same parts.
    cookies = {"id": "cookies", "enabled": None, "values": {"vendors": {"value": None}}}
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            await deliver(run, event("b-withdraws", 5, {"id": "newsletter", "enabled": False}))
            newsletter = {"id": "newsletter", "enabled": True}
            update = await deliver(
                run,
                user_updated(
                    10,
                    old=[newsletter, {"id": "analytics", "enabled": False}, cookies],
                    new=[newsletter, {"id": "analytics", "enabled": True}, cookies],
                ),
            )
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Analytics_Consent__c"] is True, update
    assert record["Newsletter_Consent__c"] is False, (update, record)
