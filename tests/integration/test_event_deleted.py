"""``event.deleted`` with ``on_event_deleted: withdraw``: what earlier versions of the event
granted, and the deleted entity no longer mentions, is withdrawn too, whether those versions
are on the record already or in the same batch; a refusal of such a withdrawal fails the
deletion's outcome and dead-letters it (the writer over HTTP against the emulator, and the
pipeline over in-memory Kafka)."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from prometheus_client import CollectorRegistry

from consumer.model import sync_state
from consumer.model.changes import (
    DELETION_PARTITION,
    Accepted,
    ConsentChange,
    ParseResult,
    Stamp,
    epoch_ms,
)
from consumer.model.messages import InputMessage
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter
from consumer.stages.report import assemble
from tests.integration.support import batch_of, emulator_settings, example_mapping, make_emulator
from tests.integration.test_consent_order import running
from tests.integration.test_redrive_order import feed, iso
from tests.integration.test_targets_gate import write_both
from tests.integration.test_writer_records import contact_writer
from tests.unit.helpers import T0, change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

EMAIL = "versions@example.com"


@pytest.mark.parametrize("together", [False, True], ids=["two-batches", "one-batch"])
async def test_a_deleted_event_withdraws_its_earlier_versions_however_batched(
    together: bool,
) -> None:
    # E's first version granted the newsletter and the "offers" topic; its last version
    # only the newsletter; E is deleted. In two batches the record holds the topic's stamp
    # naming E; in one (a backlog, a replay) the batch itself does: withdrawn either way.
    async with contact_writer(example_mapping()) as (org, writer):
        record_id = org.emulator.seed("Contact", {"Email": EMAIL, "LastName": "V"})
        grant = change(EMAIL, purpose("newsletter", True, topics="offers"), minutes=1, event_id="E")
        deletion = change(EMAIL, purpose("newsletter", False), minutes=2, event_id="E")
        deletion.event_type = "event.deleted"
        if together:
            result = (await writer.write(batch_of([grant, deletion], [org.plan])))[EMAIL]
        else:
            await writer.write(batch_of([grant], [org.plan]))
            result = (await writer.write(batch_of([deletion], [org.plan])))[EMAIL]
        record = org.emulator.get("Contact", record_id)
    assert record is not None and result.status == "updated", result
    assert record["Newsletter_Consent__c"] is False
    assert record["Topic_Offers__c"] is False and record["Newsletter_Topics__c"] is None
    held = sync_state.decode(record["Didomi_Sync_State__c"])
    assert held["Topic_Offers__c"].time_ms == epoch_ms(T0 + timedelta(minutes=2))


async def test_a_refused_withdrawal_of_an_earlier_version_fails_the_deletion() -> None:
    # The record holds the offers topic from E's first version. E (last version: the
    # newsletter only) is deleted; a validation rule refuses the topic's withdrawal. The
    # deletion's outcome must say so and go to the dead letters (a redrive writes it later),
    # not report everything written while the topic stays granted.
    at = T0 + timedelta(minutes=1)
    from_e = Stamp(epoch_ms(at), 0, 1, "E")
    state = dict.fromkeys(("Newsletter_Consent__c", "Topic_Offers__c"), from_e)
    async with make_emulator() as emulator:
        contact = emulator.seed(
            "Contact",
            {
                "Email": EMAIL,
                "LastName": "A",
                "Newsletter_Consent__c": True,
                "Topic_Offers__c": True,
                "Didomi_Sync_State__c": sync_state.encode(state),
            },
        )
        mapping = example_mapping().model_copy(update={"on_event_deleted": "withdraw"})
        async with running(emulator, mapping) as run:
            emulator.inject_record_error(
                "update",
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "Topic changes need a reason",
                fields=["Topic_Offers__c"],
                email=EMAIL,
            )
            entity = {
                "id": "E",
                "created_at": iso(at),
                "user": {"organization_user_id": EMAIL},
                "consents": {"purposes": [{"id": "newsletter", "enabled": True}]},
            }
            doc = orjson.dumps({"type": "event.deleted", "parameters": {"entity": entity}})
            await feed(run, doc, epoch_ms(at) + 60_000, [], email=EMAIL)
            outcome = run.outcomes()[-1]
            dead = run.producer.topics.get("dlq", [])
        record = emulator.get("Contact", contact)
    assert record is not None
    assert (record["Newsletter_Consent__c"], record["Topic_Offers__c"]) == (False, True)
    (contact_target,) = [t for t in outcome["targets"] if t["sobject"] == "Contact"]
    assert outcome["status"] == "partial", outcome
    assert [r["field"] for r in contact_target["fields_refused"]] == ["Topic_Offers__c"]
    assert "Newsletter_Consent__c" in contact_target["fields_written"]
    assert len(dead) == 1


@pytest.mark.parametrize("last_version", ["grants-nothing", "maps-nothing-to-lead"])
async def test_a_deletion_reaches_grants_its_last_version_does_not_mention(
    last_version: str,
) -> None:
    # E's first version granted the newsletter (Contact and Lead hold it under E's id).
    # E's last version either grants nothing at all, or only analytics (which the Lead does
    # not map). Deleting E withdraws the newsletter on both all the same; a Lead record
    # holding another event's grant keeps it.
    at = T0 + timedelta(minutes=1)
    from_e = sync_state.encode({"Newsletter_Consent__c": Stamp(epoch_ms(at), 0, 1, "E")})
    async with make_emulator() as emulator:
        held = {"Newsletter_Consent__c": True, "Didomi_Sync_State__c": from_e}
        contact = emulator.seed("Contact", {"Email": EMAIL, "LastName": "A", **held})
        lead = emulator.seed("Lead", {"Email": EMAIL, "LastName": "L", "Company": "C", **held})
        other = "other@example.com"
        kept = emulator.seed(
            "Lead",
            {
                "Email": other,
                "LastName": "O",
                "Company": "C",
                "Newsletter_Consent__c": True,
                "Didomi_Sync_State__c": sync_state.encode(
                    {"Newsletter_Consent__c": Stamp(epoch_ms(at), 0, 2, "F")}
                ),
            },
        )
        mapping = example_mapping().model_copy(update={"on_event_deleted": "withdraw"})
        async with running(emulator, mapping) as run:
            purposes = (
                [{"id": "newsletter", "enabled": False}]
                if last_version == "grants-nothing"
                else [{"id": "analytics", "enabled": True}]
            )
            for email in (EMAIL, other):
                entity = {
                    "id": "E",
                    "created_at": iso(at),
                    "user": {"organization_user_id": email},
                    "consents": {"purposes": purposes},
                }
                doc = orjson.dumps({"type": "event.deleted", "parameters": {"entity": entity}})
                await feed(run, doc, epoch_ms(at) + 60_000, [], email=email)
            outcomes = run.outcomes()
        records = [emulator.get("Contact", contact), emulator.get("Lead", lead)]
        untouched = emulator.get("Lead", kept)
    assert [r["Newsletter_Consent__c"] for r in records if r is not None] == [False, False]
    assert untouched is not None and untouched["Newsletter_Consent__c"] is True
    mine = {t["sobject"]: t["status"] for t in outcomes[0]["targets"]}
    assert mine == {"Contact": "updated", "Lead": "updated"}, outcomes[0]
    assert outcomes[0]["status"] == "updated"


def deletion_of(event_id: str, minutes: int) -> ConsentChange:
    """The deletion of ``event_id``, whose last version granted only the newsletter."""
    d = change(EMAIL, purpose("newsletter", False), minutes=minutes, event_id=event_id)
    d.event_type = "event.deleted"
    return d


@pytest.mark.parametrize("held_from", ["E", "F"], ids=["record-holds-E", "record-holds-F"])
@pytest.mark.parametrize("together", [False, True], ids=["two-batches", "one-batch"])
async def test_undoing_a_deleted_event_keeps_a_newer_grant_of_another_event(
    together: bool, held_from: str
) -> None:
    # record-holds-E: the record holds analytics from E (minute 1); F grants analytics at
    # minute 2. record-holds-F: the record holds F's minute-2 grant; E's minute-1 version
    # comes late. Either way E (last version: the newsletter only) is then deleted (minute
    # 3), in the same batch or another: F's grant, made after E's, stands.
    async with contact_writer(example_mapping()) as (org, writer):
        stamp = (
            Stamp(epoch_ms(T0 + timedelta(minutes=1)), 0, 1, "E")
            if held_from == "E"
            else Stamp(epoch_ms(T0 + timedelta(minutes=2)), 0, 5, "F")
        )
        record_id = org.emulator.seed(
            "Contact",
            {
                "Email": EMAIL,
                "LastName": "V",
                "Analytics_Consent__c": True,
                "Didomi_Sync_State__c": sync_state.encode({"Analytics_Consent__c": stamp}),
            },
        )
        if held_from == "E":
            other = change(EMAIL, purpose("analytics", True), minutes=2, event_id="F")
        else:
            other = change(EMAIL, purpose("analytics", True), minutes=1, event_id="E")
        if together:
            await writer.write(batch_of([other, deletion_of("E", 3)], [org.plan]))
        else:
            await writer.write(batch_of([other], [org.plan]))
            await writer.write(batch_of([deletion_of("E", 3)], [org.plan]))
        record = org.emulator.get("Contact", record_id)
    assert record is not None and record["Analytics_Consent__c"] is True


async def test_an_earlier_version_delivered_after_the_deletion_grants_nothing() -> None:
    # E's first version (minute 1, analytics) is not written before E is deleted (minute 3;
    # E's last version: the newsletter only): a Didomi retry, or a dead letter redriven
    # later. The deletion's stamp on the newsletter remembers E: the late version is older.
    async with contact_writer(example_mapping()) as (org, writer):
        record_id = org.emulator.seed(
            "Contact", {"Email": EMAIL, "LastName": "V", "Newsletter_Consent__c": True}
        )
        await writer.write(batch_of([deletion_of("E", 3)], [org.plan]))
        late = change(EMAIL, purpose("analytics", True), minutes=1, event_id="E")
        result = (await writer.write(batch_of([late], [org.plan])))[EMAIL]
        after_late = org.emulator.get("Contact", record_id)
        assert after_late is not None and after_late["Analytics_Consent__c"] is False
        # Another event's choice of the same time is not E's: written.
        other = change(EMAIL, purpose("analytics", True), minutes=1, event_id="F")
        written = (await writer.write(batch_of([other], [org.plan])))[EMAIL]
        record = org.emulator.get("Contact", record_id)
    assert result.status == "stale" and result.stale_indexes == {0}, result
    assert written.status == "updated", written
    assert record is not None and record["Newsletter_Consent__c"] is False
    assert record["Analytics_Consent__c"] is True


def deleted_stamp(event_id: str, minutes: int) -> Stamp:
    """The stamp a deletion of ``event_id`` at ``minutes`` leaves on what it withdrew."""
    return Stamp(epoch_ms(T0 + timedelta(minutes=minutes)), DELETION_PARTITION, 1, event_id)


async def test_a_revoked_grant_gives_way_to_another_events_choice_in_the_batch() -> None:
    # The record remembers E's deletion (minute 3). One batch brings F's analytics grant
    # (minute 1) and a late version of E granting analytics (minute 2). E's grant is
    # revoked; F's, the person's latest choice without E, is written, as it would be alone.
    async with contact_writer(example_mapping()) as (org, writer):
        state = {"Newsletter_Consent__c": deleted_stamp("E", 3)}
        record_id = org.emulator.seed(
            "Contact",
            {"Email": EMAIL, "LastName": "V", "Didomi_Sync_State__c": sync_state.encode(state)},
        )
        f = change(EMAIL, purpose("analytics", True), minutes=1, event_id="F")
        e = change(EMAIL, purpose("analytics", True), minutes=2, event_id="E")
        result = (await writer.write(batch_of([f, e], [org.plan])))[EMAIL]
        record = org.emulator.get("Contact", record_id)
    assert record is not None and record["Analytics_Consent__c"] is True
    held = sync_state.decode(record["Didomi_Sync_State__c"])
    assert held["Analytics_Consent__c"].event_id == "F"
    assert result.status == "updated" and result.stale_indexes == {1}, result
    assert result.older == {1: ["Analytics_Consent__c"]}


async def test_a_deletion_one_target_remembers_keeps_a_late_grant_off_the_other() -> None:
    # E's last version granted analytics only (a Contact field): its deletion stamped the
    # Contact, not the Lead. E's first version (the newsletter, mapped on both) comes late:
    # the Contact's memory of the deletion keeps it off the Lead too.
    async with make_emulator() as emulator:
        state = {"Analytics_Consent__c": deleted_stamp("E", 3)}
        emulator.seed(
            "Contact",
            {"Email": EMAIL, "LastName": "C", "Didomi_Sync_State__c": sync_state.encode(state)},
        )
        lead = emulator.seed("Lead", {"Email": EMAIL, "LastName": "L", "Company": "C"})
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            writers = [TargetWriter(client, p, s) for p in report.plans]
            late = change(EMAIL, purpose("newsletter", True), minutes=1, event_id="E")
            results = await write_both(writers, [late], EMAIL)
        record = emulator.get("Lead", lead)
    assert record is not None and record["Newsletter_Consent__c"] is False
    assert results["Lead"].status == "stale" and results["Contact"].status == "stale", results


async def test_a_retry_round_keeps_a_revoked_grant_out() -> None:
    # R1 (plain) and R2 (remembers E's deletion, minute 3) share the email. One batch: a
    # late version of E granting analytics (minute 1) and C granting the newsletter (minute
    # 4, which replaces R2's memory of the deletion). R1's update meets a lock and is
    # retried: the retry round reads R2 without the tombstone, and must still leave E out.
    async with contact_writer(example_mapping()) as (org, writer):
        r1 = org.emulator.seed("Contact", {"Email": EMAIL, "LastName": "A"})
        state = {"Newsletter_Consent__c": deleted_stamp("E", 3)}
        r2 = org.emulator.seed(
            "Contact",
            {"Email": EMAIL, "LastName": "B", "Didomi_Sync_State__c": sync_state.encode(state)},
        )
        org.emulator.inject_record_error("update", "UNABLE_TO_LOCK_ROW", "locked", count=1)
        late = change(EMAIL, purpose("analytics", True), minutes=1, event_id="E")
        c = change(EMAIL, purpose("newsletter", True), minutes=4, event_id="C")
        result = (await writer.write(batch_of([late, c], [org.plan])))[EMAIL]
        records = [org.emulator.get("Contact", r) for r in (r1, r2)]
        retried = org.emulator.stats["update"]
    assert retried >= 2  # the lock made a second round
    assert [r["Newsletter_Consent__c"] for r in records if r] == [True, True]
    assert [r["Analytics_Consent__c"] for r in records if r] == [False, False], result
    assert result.stale_indexes == {0}, result


async def test_a_revoked_grant_is_not_failed_for_the_value_that_took_its_place() -> None:
    # B (minute 1) sets the frequency to a value too long for the field; a late version of
    # E (minute 2) sets a valid one; the record remembers E's deletion (minute 3). E's value
    # is revoked and B's takes the field, which describe refuses: B fails for it, E is
    # stale (older than the deletion), not failed and dead-lettered for B's value.
    async with contact_writer(example_mapping()) as (org, writer):
        state = {"Newsletter_Consent__c": deleted_stamp("E", 3)}
        org.emulator.seed(
            "Contact",
            {"Email": EMAIL, "LastName": "V", "Didomi_Sync_State__c": sync_state.encode(state)},
        )
        long = "x" * 50
        b = change(EMAIL, purpose("newsletter", None, frequency=long), minutes=1, event_id="B")
        e = change(EMAIL, purpose("newsletter", None, frequency="weekly"), minutes=2, event_id="E")
        people = batch_of([b, e], [org.plan])
        result = (await writer.write(people))[EMAIL]
    plans = [org.plan]
    messages = [InputMessage("in", 0, i, None, b"{}") for i in range(2)]
    parsed: list[ParseResult] = [Accepted(b), Accepted(e)]
    outcomes, dead = assemble(
        messages, parsed, {EMAIL: people[0]}, {"Contact": {EMAIL: result}}, plans, T0
    )
    statuses = [o.outcome.status for o in outcomes]
    assert statuses == ["failed", "stale"], (statuses, result)
    assert len(dead) == 1


@pytest.mark.parametrize("late_grant", [False, True], ids=["deletion-alone", "with-late-grant"])
async def test_a_gated_late_grant_does_not_keep_a_deleted_events_grant(late_grant: bool) -> None:
    # Review finding. Minute 1: event E (its first version) granted the newsletter; the
    # Contact holds it, stamped E. Minute 6: the person withdrew (W); the Lead holds it (the
    # Contact did not take it: a validation rule refused it then, W waits in the dead
    # letters). E's last version no longer mentions the newsletter and E is deleted (minute
    # 2, withdraw): the Contact's E grant is withdrawn. In the same batch a grant G of minute
    # 4 arrives late: older than the Lead's W, it is written nowhere, and it must not save
    # E's grant either (its stamp was kept as what the batch held for the field).
    def at(minutes: int) -> int:
        return epoch_ms(T0 + timedelta(minutes=minutes))

    email = "undo@example.com"
    async with make_emulator() as emulator:
        contact = emulator.seed(
            "Contact",
            {
                "Email": email,
                "LastName": "C",
                "Newsletter_Consent__c": True,
                "Didomi_Sync_State__c": sync_state.encode(
                    {"Newsletter_Consent__c": Stamp(at(1), 0, 1, "E")}
                ),
            },
        )
        lead = emulator.seed(
            "Lead",
            {
                "Email": email,
                "LastName": "L",
                "Company": "Co",
                "Newsletter_Consent__c": False,
                "Didomi_Sync_State__c": sync_state.encode(
                    {"Newsletter_Consent__c": Stamp(at(6), 0, 9, "W")}
                ),
            },
        )
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            writers = [TargetWriter(client, p, s) for p in report.plans]
            deletion = change(email, minutes=2, event_id="E")  # its last version: nothing
            deletion.event_type = "event.deleted"
            changes = [deletion]
            if late_grant:
                changes.append(change(email, purpose("newsletter", True), minutes=4, event_id="G"))
            results = await write_both(writers, changes, email)
        held_contact, held_lead = emulator.get("Contact", contact), emulator.get("Lead", lead)
    assert held_lead is not None and held_lead["Newsletter_Consent__c"] is False
    assert held_contact is not None
    assert held_contact["Newsletter_Consent__c"] is False, (results, held_contact)
