"""The targets of one batch gate each other: a grant older than a choice the person's record
of another target holds (for the same purpose or preference) is written to none of them.

The sync state lives on each record. A Lead made after a person's withdrawal was written to
their Contact (a web form, a sales rep) holds no stamp of it; a grant made before the
withdrawal and delivered after it (a Didomi retry, a replay, a redrive) would then make the
new Lead say "consent": mail without consent. Writers against the emulator over HTTP, run as
the engine runs them (both targets at once, sharing one :class:`HeldChoices`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.mapping import MappingConfig, TargetMapping, parse_mapping
from consumer.model import sync_state
from consumer.model.changes import ConsentChange, PersonResult, Stamp, epoch_ms
from consumer.model.held import HeldChoices
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter
from tests.integration.support import (
    batch_of,
    emulator_settings,
    example_mapping,
    make_emulator,
    wait_for,
)
from tests.integration.test_writer_records import stamped
from tests.unit.helpers import T0, change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

EMAIL = "late@example.com"


def leads_created_too() -> MappingConfig:
    """The example mapping with ``upsert_mode`` on for Lead (a Lead is made when none
    matches)."""
    mapping = example_mapping()
    targets: list[TargetMapping] = []
    for t in mapping.targets:
        if t.sobject == "Lead":
            defaults = {"Company": "?", "LastName": "?"}
            t = t.model_copy(update={"upsert_mode": True, "create_defaults": defaults})
        targets.append(t)
    return mapping.model_copy(update={"targets": targets})


async def write_both(
    writers: Sequence[TargetWriter], changes: Sequence[ConsentChange], email: str = EMAIL
) -> dict[str, PersonResult]:
    """``email``'s result per target of one batch, the targets written at once as the
    engine writes them (each leaves the exchange when it ends)."""
    people = batch_of(changes, [w._plan for w in writers])
    held = HeldChoices(w.sobject for w in writers)

    async def one(writer: TargetWriter) -> dict[str, PersonResult]:
        try:
            return await writer.write(people, writers=len(writers), held=held)
        finally:
            held.leave(writer.sobject)

    answers = await asyncio.gather(*(one(w) for w in writers))
    return {w.sobject: a[email] for w, a in zip(writers, answers, strict=True)}


def withdrawn_contact(minutes: int) -> dict[str, object]:
    return {
        "Email": EMAIL,
        "LastName": "C",
        "Newsletter_Consent__c": False,
        "Didomi_Sync_State__c": stamped(minutes),
    }


@pytest.mark.parametrize("composite", [False, True], ids=["calls", "composite"])
@pytest.mark.parametrize("late_minutes", [2, 6], ids=["older-grant", "newer-grant"])
async def test_a_lead_made_after_a_contacts_withdrawal_takes_no_older_grant(
    late_minutes: int, composite: bool
) -> None:
    # The Contact took a withdrawal made at minute 5. A Lead is made afterwards (no stamp).
    # A grant made at minute 2 is delivered late: the Contact's stamp keeps it off both. A
    # grant made at minute 6 is the newest choice: both take it.
    async with make_emulator() as emulator:
        contact = emulator.seed("Contact", withdrawn_contact(5))
        lead = emulator.seed("Lead", {"Email": EMAIL, "LastName": "L", "Company": "C"})
        # With composite calls, the two targets' queries and writes share calls.
        s = emulator_settings(emulator, salesforce_composite="on" if composite else "off")
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            writers = [TargetWriter(client, p, s) for p in report.plans]
            grant = change(EMAIL, purpose("newsletter", True), minutes=late_minutes, event_id="g")
            results = await write_both(writers, [grant])
        # Both queries went in one composite call, then (when newer) both updates in one.
        assert emulator.stats.get("composite", 0) == (composite * (1 + (late_minutes > 5)))
        held_lead, held_contact = emulator.get("Lead", lead), emulator.get("Contact", contact)
    assert held_lead is not None and held_contact is not None
    newer = late_minutes > 5
    assert held_contact["Newsletter_Consent__c"] is newer
    assert held_lead["Newsletter_Consent__c"] is newer  # a checkbox made unticked
    if newer:
        assert results["Lead"].status == "updated", results
        state = sync_state.decode(held_lead["Didomi_Sync_State__c"])
        assert state["Newsletter_Consent__c"].event_id == "g"
    else:
        assert results["Lead"].status == "stale" and results["Lead"].stale_indexes == {0}
        assert results["Contact"].status == "stale", results
        assert held_lead["Didomi_Sync_State__c"] is None  # nothing written there


async def test_no_lead_is_created_for_a_grant_older_than_the_contacts_withdrawal() -> None:
    # upsert_mode on for Lead: a person with no Lead gets one made. The grant (minute 2) is
    # older than the Contact's withdrawal (minute 5): a Lead made for it would hold consent.
    # None is made; the event is older than what the person's records hold.
    async with make_emulator() as emulator:
        emulator.seed("Contact", withdrawn_contact(5))
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, leads_created_too())
            writers = [TargetWriter(client, p, s) for p in report.plans]
            emulator.reset_stats()
            old = change(EMAIL, purpose("newsletter", True), minutes=2, event_id="old")
            results = await write_both(writers, [old])
            assert emulator.find_by_email("Lead", EMAIL) == []
            assert emulator.stats.get("create", 0) == 0 and emulator.stats.get("update", 0) == 0
            assert results["Lead"].status == "stale" and results["Lead"].stale_indexes == {0}
            assert results["Lead"].note is not None and "none is created" in results["Lead"].note
            # The newest choice still makes the Lead, with its stamp.
            new = change(EMAIL, purpose("newsletter", True), minutes=6, event_id="new")
            results = await write_both(writers, [new])
        assert results["Lead"].status == "created", results
        (made,) = emulator.find_by_email("Lead", EMAIL)
    assert made["Newsletter_Consent__c"] is True
    assert sync_state.decode(made["Didomi_Sync_State__c"])["Newsletter_Consent__c"].event_id == (
        "new"
    )


async def test_a_gated_grant_gives_way_to_the_batchs_withdrawal_on_the_new_lead() -> None:
    # One batch: a withdrawal at minute 3 and a grant at minute 4, both older than the
    # Contact's minute-5 choice. The merged grant is kept off the Lead; the batch's
    # withdrawal still reaches it (it holds nothing newer), as separate batches would have.
    async with make_emulator() as emulator:
        emulator.seed("Contact", withdrawn_contact(5))
        lead = emulator.seed(
            "Lead", {"Email": EMAIL, "LastName": "L", "Company": "C", "Newsletter_Consent__c": True}
        )
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            writers = [TargetWriter(client, p, s) for p in report.plans]
            withdraw = change(EMAIL, purpose("newsletter", False), minutes=3, event_id="w")
            grant = change(EMAIL, purpose("newsletter", True), minutes=4, event_id="g")
            results = await write_both(writers, [withdraw, grant])
        held = emulator.get("Lead", lead)
    assert held is not None and held["Newsletter_Consent__c"] is False
    assert sync_state.decode(held["Didomi_Sync_State__c"])["Newsletter_Consent__c"].event_id == "w"
    assert results["Lead"].status == "updated"
    assert results["Lead"].stale_indexes == {1}, results  # the grant; the withdrawal was written


SHAPES = """
regulations: [gdpr]
targets:
  - sobject: Contact
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    preferences: {topics: Newsletter_Topics__c}
  - sobject: Lead
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    preference_values: {topics: {offers: Newsletter_Consent__c}}  # the Lead's only Boolean
"""


async def late_selection_on_a_new_lead(
    mapping: str, contact_held: Sequence[str], topics: str
) -> tuple[dict[str, PersonResult], dict[str, Any] | None]:
    """The Contact took "no topics" at minute 5 (``contact_held`` stamped then); a Lead is
    made; a minute-2 event selecting ``topics`` comes late. The results per target, and the
    Lead as it is after."""
    five = Stamp(epoch_ms(T0 + timedelta(minutes=5)), 0, 1, "w")
    async with make_emulator() as emulator:
        state = sync_state.encode(dict.fromkeys(contact_held, five))
        emulator.seed("Contact", {"Email": EMAIL, "LastName": "C", "Didomi_Sync_State__c": state})
        lead = emulator.seed("Lead", {"Email": EMAIL, "LastName": "L", "Company": "C"})
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, parse_mapping(mapping))
            assert report.ok, report.render()
            writers = [TargetWriter(client, p, s) for p in report.plans]
            late = change(EMAIL, purpose("newsletter", None, topics=topics), minutes=2)
            results = await write_both(writers, [late])
        return results, emulator.get("Lead", lead)


async def test_a_preference_gates_its_values_on_another_target() -> None:
    # The Contact maps the topics selection as text, the Lead one of its values as a
    # Boolean. The Contact's text stamp keeps the late selection off the Lead's "offers"
    # box: the text is the Contact's only record of the selection.
    results, held = await late_selection_on_a_new_lead(SHAPES, ["Newsletter_Topics__c"], "offers")
    assert results["Contact"].status == "stale", results
    assert held is not None and held["Newsletter_Consent__c"] is False
    assert results["Lead"].status == "stale" and results["Lead"].stale_indexes == {0}, results


async def test_a_withdrawal_never_waits_for_a_target_that_cannot_read() -> None:
    # The batch's Contact writer cannot read its records (it never posts). Only grants are
    # gated, so the Lead's withdrawal goes at once; a grant waits for the Contact's stamps.
    async with make_emulator() as emulator:
        lead = emulator.seed(
            "Lead", {"Email": EMAIL, "LastName": "L", "Company": "C", "Newsletter_Consent__c": True}
        )
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            (plan,) = [p for p in report.plans if p.sobject == "Lead"]
            writer = TargetWriter(client, plan, s)
            plans = report.plans
            withdraw = batch_of([change(EMAIL, purpose("newsletter", False), minutes=3)], plans)
            result = await asyncio.wait_for(
                writer.write(withdraw, held=HeldChoices(["Contact", "Lead"])), 5
            )
            assert result[EMAIL].status == "updated"
            grant = batch_of([change(EMAIL, purpose("newsletter", True), minutes=4)], plans)
            queries, updates = emulator.stats["query"], emulator.stats["update"]
            waiting = asyncio.ensure_future(
                writer.write(grant, held=(held := HeldChoices(["Contact", "Lead"])))
            )
            await wait_for(lambda: emulator.stats["query"] > queries, 5, "its query answered")
            for _ in range(20):
                await asyncio.sleep(0)
            # The grant waits for the Contact's stamps: nothing written.
            assert not waiting.done() and emulator.stats["update"] == updates
            held.leave("Contact")
            assert (await asyncio.wait_for(waiting, 5))[EMAIL].status == "updated"
        record = emulator.get("Lead", lead)
    assert record is not None and record["Newsletter_Consent__c"] is True


#: The Contact keeps the selection as text beside one value's field; the Lead keeps another
#: value, which only the Contact's text speaks for.
TEXT_BESIDE_A_VALUE = """
regulations: [gdpr]
targets:
  - sobject: Contact
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    preferences: {topics: Newsletter_Topics__c}
    preference_values: {topics: {offers: Topic_Offers__c}}
  - sobject: Lead
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    preference_values: {topics: {product_news: Newsletter_Consent__c}}
"""


async def test_a_text_speaks_for_the_values_its_target_does_not_map() -> None:
    # The Contact maps the text and the offers value; the Lead product_news. The Contact maps
    # product_news only through its text: that stamp keeps the late selection off the
    # Lead's box (a review found a text beside values gating texts only).
    contact_held = ["Newsletter_Topics__c", "Topic_Offers__c"]
    results, held = await late_selection_on_a_new_lead(
        TEXT_BESIDE_A_VALUE, contact_held, "product_news"
    )
    assert held is not None and held["Newsletter_Consent__c"] is False, results
    assert results["Lead"].status == "stale", results
