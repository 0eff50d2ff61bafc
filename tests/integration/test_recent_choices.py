"""The choices the service took in lately keep a late older grant off a record that holds no
stamp of the newer choice (``SYNC_RECENT_CHOICES_*``, engine/recent.py).

The sync state lives on the records. When a person withdrew, the record that later takes a
grant may not have held the withdrawal: it did not exist yet (match mode: the withdrawal was
``not_found``; a web form or a sales rep made it afterwards), or the batch did not read it
(a choice only another target maps). Didomi retries for minutes, so a grant made before the
withdrawal can arrive after the record was made: written, it says "consent" the person took
back. The same holds for a version of a deleted event delivered after its deletion.

Each test fails with ``SYNC_RECENT_CHOICES_SECONDS=0`` (the consent is written). Pipeline
over in-memory Kafka (tests/unit/fakes.py), writers over HTTP against the emulator.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import orjson
import pytest

from consumer.devkit.emulator import SalesforceEmulator
from consumer.mapping import MappingConfig, parse_mapping
from consumer.model import sync_state
from tests.integration.support import example_mapping, make_emulator
from tests.integration.test_consent_order import Run, running
from tests.integration.test_redrive_order import iso
from tests.unit.helpers import T0

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

EMAIL = "late@example.com"


def event(event_id: str, minutes: int, *purposes: dict[str, Any], kind: str = "created") -> bytes:
    """An ``event.<kind>`` of EMAIL made at minute ``minutes`` with ``purposes``."""
    entity = {
        "id": event_id,
        "created_at": iso(T0 + timedelta(minutes=minutes)),
        "user": {"organization_user_id": EMAIL},
        "consents": {"purposes": list(purposes)},
    }
    return orjson.dumps({"type": f"event.{kind}", "parameters": {"entity": entity}})


def user_deleted(minutes: int) -> bytes:
    user = {
        "id": "u1",
        "organization_user_id": EMAIL,
        "created_at": iso(T0),
        "updated_at": iso(T0 + timedelta(minutes=minutes)),
    }
    return orjson.dumps({"type": "user.deleted", "parameters": {"entity": user}})


def grants(*ids: str) -> list[dict[str, Any]]:
    return [{"id": pid, "enabled": True} for pid in ids]


async def deliver(run: Run, value: bytes) -> dict[str, Any]:
    """Append one record to partition 0 (read now) and return its outcome."""
    before = len(run.outcomes())
    run.consumer.append(0, value, EMAIL.encode(), timestamp=int(time.time() * 1000))
    await run.until(lambda: len(run.outcomes()) > before, "its outcome")
    (outcome,) = run.outcomes()[before:]
    return outcome


def target(outcome: dict[str, Any], sobject: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in outcome["targets"] if t["sobject"] == sobject)
    return found


def match_only(mapping: MappingConfig, *, lead: bool = True) -> MappingConfig:
    """``mapping`` with no target creating records (match mode), the Lead left out unless
    ``lead``."""
    targets = [
        t.model_copy(update={"upsert_mode": False, "create_defaults": {}})
        for t in mapping.targets
        if lead or t.sobject != "Lead"
    ]
    return mapping.model_copy(update={"targets": targets})


def form_contact(emulator: SalesforceEmulator) -> str:
    """A Contact made in Salesforce (a web form): no consent ticked, no sync state."""
    return emulator.seed("Contact", {"Email": EMAIL, "LastName": "Form"})


@pytest.mark.parametrize("lead", [True, False], ids=["contact-and-lead", "contact-alone"])
async def test_a_record_made_after_a_withdrawal_nobody_found_takes_no_older_grant(
    lead: bool,
) -> None:
    # Match mode: the person has no record when they withdraw (minute 5): not_found. A web
    # form makes their Contact. A grant made at minute 3, delivered late, must not say
    # consent there; the newest choice (minute 7) still goes through.
    async with make_emulator() as emulator:
        async with running(emulator, match_only(example_mapping(), lead=lead)) as run:
            withdrawal = await deliver(run, event("w", 5, {"id": "newsletter", "enabled": False}))
            assert target(withdrawal, "Contact")["status"] == "not_found", withdrawal
            contact = form_contact(emulator)
            late = await deliver(run, event("late", 3, *grants("newsletter")))
            record = emulator.get("Contact", contact)
            assert record is not None and record["Newsletter_Consent__c"] is not True, late
            assert record["Didomi_Sync_State__c"] is None  # nothing was written
            assert late["status"] == "stale", late
            assert "took in lately" in (target(late, "Contact")["note"] or ""), late
            newer = await deliver(run, event("new", 7, *grants("newsletter")))
        record = emulator.get("Contact", contact)
    assert newer["status"] == "updated", newer
    assert record is not None and record["Newsletter_Consent__c"] is True
    assert sync_state.decode(record["Didomi_Sync_State__c"])["Newsletter_Consent__c"].event_id == (
        "new"
    )


#: Contact and Lead mapping different purposes (nothing in common to exchange).
DISJOINT = """\
regulations: [gdpr]
on_user_deleted: withdraw
targets:
  - sobject: Contact
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    purposes:
      analytics: Analytics_Consent__c
  - sobject: Lead
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    purposes:
      newsletter: Newsletter_Consent__c
"""


async def test_a_lead_made_after_a_user_deletion_takes_no_older_grant_of_a_lead_only_choice() -> (
    None
):
    # The person has a Contact and no Lead. They are deleted at minute 5 (every field
    # withdrawn: the Contact's analytics). A Lead is made. A newsletter grant from minute 3
    # arrives late: only the Lead maps it, so the Contact is not even read for it.
    async with make_emulator() as emulator:
        emulator.seed("Contact", {"Email": EMAIL, "LastName": "C", "Analytics_Consent__c": True})
        async with running(emulator, parse_mapping(DISJOINT)) as run:
            deletion = await deliver(run, user_deleted(5))
            assert target(deletion, "Contact")["status"] == "updated", deletion
            assert target(deletion, "Lead")["status"] == "not_found", deletion
            lead = emulator.seed("Lead", {"Email": EMAIL, "LastName": "L", "Company": "C"})
            late = await deliver(run, event("late", 3, *grants("newsletter")))
        record = emulator.get("Lead", lead)
    assert record is not None and record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late


async def test_a_late_version_of_an_event_deleted_before_its_record_existed_grants_nothing() -> (
    None
):
    # E's first version (minute 3) granted the newsletter and analytics; its last version
    # only the newsletter; E is deleted. The person had no record then (match mode): the
    # deletion withdrew nothing anywhere. A Contact is made, then E's first version arrives
    # late: its analytics grant belongs to a deleted event.
    mapping = match_only(example_mapping(), lead=False).model_copy(
        update={"on_event_deleted": "withdraw"}
    )
    async with make_emulator() as emulator:
        async with running(emulator, mapping) as run:
            deletion = await deliver(run, event("E", 4, *grants("newsletter"), kind="deleted"))
            assert target(deletion, "Contact")["status"] == "not_found", deletion
            contact = form_contact(emulator)
            late = await deliver(run, event("E", 3, *grants("newsletter", "analytics")))
        record = emulator.get("Contact", contact)
    assert record is not None, late
    assert record["Analytics_Consent__c"] is not True, late
    assert record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late


#: Contact with a preference's values only (no text): each value is a choice of its own.
VALUES = """\
regulations: [gdpr]
targets:
  - sobject: Contact
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    purposes:
      newsletter: Newsletter_Consent__c
    preference_values:
      topics:
        product_news: Topic_Product_News__c
        offers: Topic_Offers__c
"""


def topics(*values: str) -> dict[str, Any]:
    return {"id": "newsletter", "values": {"topics": {"value": ",".join(values)}}}


def user_updated(minutes: int, old: list[Any], new: list[Any]) -> bytes:
    def user(purposes: list[Any], at: int) -> dict[str, Any]:
        return {
            "id": "u1",
            "organization_user_id": EMAIL,
            "created_at": iso(T0),
            "updated_at": iso(T0 + timedelta(minutes=at)),
            "consents": {"purposes": purposes},
        }

    when = iso(T0 + timedelta(minutes=minutes))
    parameters = {
        "source": {"id": f"src-{minutes}", "created_at": when},
        "old_entity": user(old, 0),
        "new_entity": user(new, minutes),
    }
    return orjson.dumps({"type": "user.updated", "parameters": parameters})


@pytest.mark.parametrize("lead", [False, True], ids=["contact-alone", "contact-and-lead"])
async def test_a_value_left_unchanged_by_a_user_update_still_takes_its_late_grant(
    lead: bool,
) -> None:
    # Minute 3: product_news selected (delivered late). Minute 5: a user.updated adds offers;
    # product_news was and stays selected, so only Topic_Offers__c is stamped. The late
    # grant is product_news's newest choice (Didomi's state at minute 5 has it): a stamp of
    # another value (remembered, or the Lead's) must not hold it back.
    mapping = VALUES + (
        "  - sobject: Lead\n    match_field: Email\n    sync_state_field: Didomi_Sync_State__c\n"
        "    purposes:\n      newsletter: Newsletter_Consent__c\n"
        if lead
        else ""
    )
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        if lead:
            emulator.seed("Lead", {"Email": EMAIL, "LastName": "L", "Company": "C"})
        async with running(emulator, parse_mapping(mapping)) as run:
            added = topics("product_news", "offers")
            update = await deliver(run, user_updated(5, [topics("product_news")], [added]))
            assert target(update, "Contact")["status"] == "updated", update
            late = await deliver(run, event("late", 3, {**topics("product_news"), "enabled": True}))
        record = emulator.get("Contact", contact)
    assert record is not None and record["Topic_Offers__c"] is True
    assert record["Topic_Product_News__c"] is True, late


async def test_a_revoked_late_version_is_not_remembered_as_a_choice() -> None:
    # W (minute 1) withdraws analytics. E's last version (minute 4) grants the newsletter;
    # E is deleted. E's first version (minute 3: newsletter and analytics) arrives late and
    # is revoked (the record remembers the deletion): as if it had never come. G (minute 2)
    # grants analytics, delivered late: without E, G is the newest analytics choice.
    mapping = match_only(example_mapping(), lead=False).model_copy(
        update={"on_event_deleted": "withdraw"}
    )
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, mapping) as run:
            await deliver(run, event("w", 1, {"id": "analytics", "enabled": False}))
            await deliver(run, event("E", 4, *grants("newsletter")))
            await deliver(run, event("E", 4, *grants("newsletter"), kind="deleted"))
            first = await deliver(run, event("E", 3, *grants("newsletter", "analytics")))
            assert first["status"] == "stale", first
            late = await deliver(run, event("g", 2, *grants("analytics")))
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is False
    assert record["Analytics_Consent__c"] is True, late
