"""Records that share an email: what one of them refuses is reported, even when another took
it (writer against the emulator over HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from consumer.devkit.bench.events import EXTERNAL_ID_MAPPING
from consumer.devkit.emulator import SalesforceEmulator
from consumer.errors import RequestLimitExceededError
from consumer.mapping import MappingConfig, TargetPlan, parse_mapping
from consumer.model import sync_state
from consumer.model.changes import ConsentChange, PersonResult, Stamp, epoch_ms
from consumer.model.events import Purpose
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter
from tests.integration.support import batch_of, emulator_settings, example_mapping, make_emulator
from tests.unit.helpers import T0, change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

EMAIL = "p@example.com"


def refuse_the_withdrawal(emulator: SalesforceEmulator, email: str = EMAIL) -> None:
    """A validation rule on the next record updated for ``email`` refuses the newsletter
    field."""
    emulator.inject_record_error(
        "update",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Consent changes need a reason",
        fields=["Newsletter_Consent__c"],
        email=email,
    )


async def write(
    emulator: SalesforceEmulator,
    sobject: str,
    *choices: Purpose,
    mapping: MappingConfig | None = None,
) -> PersonResult:
    """EMAIL's result of one batch holding one event with ``choices``, on ``sobject``."""
    s = emulator_settings(emulator)
    async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
        report = await check_mapping(client, mapping or example_mapping())
        plan = next(p for p in report.plans if p.sobject == sobject)
        writer = TargetWriter(client, plan, s)
        c = change(EMAIL, *choices, minutes=1)
        return (await writer.write(batch_of([c], [plan])))[EMAIL]


async def test_a_withdrawal_one_record_refused_is_reported_though_another_took_it() -> None:
    # Two Contacts share the email, both subscribed. A validation rule on one of them refuses
    # the newsletter withdrawal; the other takes it. That record still says true: the outcome
    # must say the withdrawal was refused (it is dead-lettered for an operator), not that
    # everything was written.
    async with make_emulator() as emulator:
        ids = [
            emulator.seed("Contact", {"Email": EMAIL, "LastName": n, "Newsletter_Consent__c": True})
            for n in ("A", "B")
        ]
        refuse_the_withdrawal(emulator)
        result = await write(
            emulator, "Contact", purpose("newsletter", False), purpose("analytics", True)
        )
        records = [emulator.get("Contact", i) for i in ids]
    newsletter = sorted(r["Newsletter_Consent__c"] for r in records if r is not None)
    assert newsletter == [False, True]  # one record refused the withdrawal
    assert all(r is not None and r["Analytics_Consent__c"] is True for r in records)
    assert set(result.refused) == {"Newsletter_Consent__c"}
    assert result.refused["Newsletter_Consent__c"].code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"


@pytest.mark.parametrize("other", ["updated", "refused"])
async def test_a_lead_converted_meanwhile_does_not_hide_what_the_others_came_to(
    other: str,
) -> None:
    # Two Leads share the email; one is converted between the query and the update (it is
    # read-only now). The person is not "not found": the other Lead was updated, or refused
    # the withdrawal, and that is the result (a refusal is dead-lettered).
    async with make_emulator() as emulator:
        for n in ("A", "B"):
            emulator.seed(
                "Lead",
                {"Email": EMAIL, "LastName": n, "Company": "Co", "Newsletter_Consent__c": True},
            )
        emulator.inject_record_error(
            "update", "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", email=EMAIL
        )
        if other == "refused":
            refuse_the_withdrawal(emulator)
        result = await write(emulator, "Lead", purpose("newsletter", False))
    if other == "updated":
        assert result.status == "updated"
        assert result.note is not None and "converted" in result.note
    else:
        assert result.status == "failed"
        assert "Newsletter_Consent__c" in result.refused


async def test_a_required_field_the_write_empties_is_refused_not_filled_with_defaults() -> None:
    # Blind upsert by the external id. The event clears a preference that a rule makes
    # required: Salesforce answers REQUIRED_FIELD_MISSING naming it. Defaults cannot fill a
    # field the write itself sends, and a second pass with them would rename the existing
    # record "Unknown": the field is refused, the rest written.
    async with make_emulator() as emulator:
        record_id = emulator.seed(
            "Contact", {"Email": EMAIL, "LastName": "Real", "Didomi_Id__c": EMAIL}
        )
        emulator.inject_record_error(
            "upsert",
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [Newsletter_Frequency__c]",
            fields=["Newsletter_Frequency__c"],
            email=EMAIL,
        )
        result = await write(
            emulator,
            "Contact",
            purpose("newsletter", False, frequency=""),
            mapping=parse_mapping(EXTERNAL_ID_MAPPING),
        )
        record = emulator.get("Contact", record_id)
    assert record is not None
    assert record["LastName"] == "Real" and record["Newsletter_Consent__c"] is False
    assert set(result.refused) == {"Newsletter_Frequency__c"}


KNOWN = "known@example.com"


def erased(email: str) -> ConsentChange:
    """A deleted user (``on_user_deleted: withdraw``)."""
    c = change(email, minutes=1, event_id=f"del-{email}", full=True)
    c.event_type, c.withdraw_all = "user.deleted", True
    return c


@asynccontextmanager
async def contact_writer(mapping: MappingConfig) -> AsyncIterator[tuple[Org, TargetWriter]]:
    """An org holding KNOWN (subscribed, its external id set) and a Contact writer on it."""
    async with make_emulator() as emulator:
        known = emulator.seed(
            "Contact",
            {"Email": KNOWN, "LastName": "K", "Didomi_Id__c": KNOWN, "Newsletter_Consent__c": True},
        )
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, mapping)
            plan = next(p for p in report.plans if p.sobject == "Contact")
            yield Org(emulator, plan, known), TargetWriter(client, plan, s)


@dataclass
class Org:
    emulator: SalesforceEmulator
    plan: TargetPlan
    known: str

    def newsletter(self, record_id: str) -> object:
        record = self.emulator.get("Contact", record_id)
        assert record is not None
        return record["Newsletter_Consent__c"]


async def test_a_blind_upsert_writer_withdraws_erased_people_without_creating_them() -> None:
    # External-id mode upserts blindly, which creates whoever is missing: a deleted user's
    # withdrawal is found first and updated instead, so no record is made for the erased.
    unknown = "unknown@example.com"
    async with contact_writer(parse_mapping(EXTERNAL_ID_MAPPING)) as (org, writer):
        org.emulator.reset_stats()
        results = await writer.write(batch_of([erased(KNOWN), erased(unknown)], [org.plan]))
        assert results[KNOWN].status == "updated", results[KNOWN]
        assert results[unknown].status == "not_found", results[unknown]
        assert org.emulator.stats.get("upsert", 0) == 0
        assert org.newsletter(org.known) is False
        assert org.emulator.find_by_email("Contact", unknown) == []


@pytest.mark.parametrize("together", [False, True], ids=["two-batches", "one-batch"])
async def test_a_deleted_event_later_in_a_batch_does_not_stop_an_unrelated_grant(
    together: bool,
) -> None:
    # A new person grants analytics (minute 1); another of their events, which granted the
    # newsletter (minute 2), is deleted. Batched together or apart, the Contact is created
    # with analytics true: only fields whose newest choice is a deletion's create nothing.
    new = "new@example.com"
    async with contact_writer(example_mapping()) as (org, writer):
        grant = change(new, purpose("analytics", True), minutes=1, event_id="e1")
        deletion = change(new, purpose("newsletter", False), minutes=2, event_id="d")
        deletion.event_type = "event.deleted"
        if together:
            await writer.write(batch_of([grant, deletion], [org.plan]))
        else:
            await writer.write(batch_of([grant], [org.plan]))
            await writer.write(batch_of([deletion], [org.plan]))
        (record,) = org.emulator.find_by_email("Contact", new)
    assert record["Analytics_Consent__c"] is True
    assert record["Newsletter_Consent__c"] is False


async def test_a_blind_writer_withdraws_erased_people_before_a_pause_of_the_upserts() -> None:
    new = "new@example.com"
    async with contact_writer(parse_mapping(EXTERNAL_ID_MAPPING)) as (org, writer):
        grant = change(new, purpose("newsletter", True), minutes=1, event_id="g")
        people = batch_of([erased(KNOWN), grant], [org.plan])
        org.emulator.inject_fault(
            "upsert", 403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests"}]
        )
        done: dict[str, PersonResult] = {}
        with pytest.raises(RequestLimitExceededError):
            await writer.write(people, done)
        # The withdrawal went first and is final; the grant waits for the next attempt.
        assert list(done) == [KNOWN] and done[KNOWN].status == "updated"
        assert org.newsletter(org.known) is False
        results = await writer.write(people, done)
    assert results[new].status == "created", results


async def test_a_record_made_after_a_withdrawal_does_not_take_an_older_grant() -> None:
    # The stamps live on the records. A user deleted with no record gets a suppression
    # Contact; someone then makes a second Contact with the email (no consent ticked); a
    # grant made before the deletion is delivered after it. A grant older than what any of
    # the person's records holds is written to none of them.
    gone = "gone@example.com"
    async with contact_writer(example_mapping()) as (org, writer):
        first = await writer.write(batch_of([erased(gone)], [org.plan]))
        assert first[gone].status == "created"
        second = org.emulator.seed("Contact", {"Email": gone, "LastName": "Sales"})
        late = change(gone, purpose("newsletter", True, topics="offers"), event_id="g")
        result = (await writer.write(batch_of([late], [org.plan])))[gone]
        made = org.emulator.get("Contact", second)
    assert made is not None
    assert made["Newsletter_Consent__c"] is False and made["Topic_Offers__c"] is False
    assert made["Newsletter_Topics__c"] is None
    # What it granted was written nowhere; its "not product news" (no consent) reached the
    # new Contact, which held nothing newer.
    assert result.older == {
        0: ["Newsletter_Consent__c", "Newsletter_Topics__c", "Topic_Offers__c"]
    }, result
    assert result.status == "updated" and result.stale_indexes == set()
    held = sync_state.decode(made["Didomi_Sync_State__c"])
    assert set(held) == {"Topic_Product_News__c"}  # the only choice written there


def stamped(minutes: int) -> str:
    """A sync state holding a newsletter choice made at ``minutes``."""
    at = epoch_ms(T0 + timedelta(minutes=minutes))
    return sync_state.encode({"Newsletter_Consent__c": Stamp(at, 0, 1, "x")})


async def test_an_older_withdrawal_still_reaches_a_record_that_holds_nothing_newer() -> None:
    # A holds a withdrawal made at minute 7; B, a second Contact, holds a consent ticked in
    # Salesforce (no stamp). A batch withdraws at minute 6: older than A's, yet no consent
    # is never the wrong side, and B holds nothing newer: B takes it. A consent ticked on A
    # by hand since is never copied to B.
    async with contact_writer(example_mapping()) as (org, writer):
        a = org.emulator.seed(
            "Contact",
            {
                "Email": "two@example.com",
                "LastName": "A",
                "Newsletter_Consent__c": True,  # ticked by hand after our minute-7 withdrawal
                "Didomi_Sync_State__c": stamped(7),
            },
        )
        b = org.emulator.seed(
            "Contact", {"Email": "two@example.com", "LastName": "B", "Newsletter_Consent__c": True}
        )
        grant = change("two@example.com", purpose("newsletter", True), minutes=4, event_id="g")
        withdraw = change("two@example.com", purpose("newsletter", False), minutes=6, event_id="w")
        result = (await writer.write(batch_of([grant, withdraw], [org.plan])))["two@example.com"]
        assert org.newsletter(b) is False
        assert org.newsletter(a) is True  # A's newer stamp keeps the batch out; nothing copied
        record_b = org.emulator.get("Contact", b)
        assert record_b is not None
        held = sync_state.decode(record_b["Didomi_Sync_State__c"])["Newsletter_Consent__c"]
        assert held.event_id == "w"  # the batch's own minute-6 withdrawal, not A's stamp
    assert result.status == "updated" and result.stale_indexes == set()


async def test_a_replay_older_than_every_record_costs_nothing_when_a_sibling_refuses() -> None:
    # A took a withdrawal at minute 5; B refused it (a validation rule) and kept its minute-3
    # stamp and its consent. A replay of a minute-2 grant is older than both: stale, no write.
    email = "refuses@example.com"
    async with contact_writer(example_mapping()) as (org, writer):
        for name, held, stamp in (("A", False, 5), ("B", True, 3)):
            org.emulator.seed(
                "Contact",
                {
                    "Email": email,
                    "LastName": name,
                    "Newsletter_Consent__c": held,
                    "Didomi_Sync_State__c": stamped(stamp),
                },
            )
        refuse_the_withdrawal(org.emulator, email)
        org.emulator.reset_stats()
        old = change(email, purpose("newsletter", True), minutes=2, event_id="g2")
        result = (await writer.write(batch_of([old], [org.plan])))[email]
        assert org.emulator.stats.get("update", 0) == 0
    assert result.status == "stale" and result.stale_indexes == {0}, result


async def test_a_converted_leads_stamp_keeps_an_older_grant_off_a_new_lead() -> None:
    # A Lead took a withdrawal at minute 5 and was converted (read-only; still found). A new
    # Lead is made with the email; a grant made at minute 2 is delivered late. The converted
    # Lead's stamp still says what the person chose last: the new Lead stays unsubscribed.
    email = "converted@example.com"
    async with make_emulator() as emulator:
        old = emulator.seed(
            "Lead",
            {
                "Email": email,
                "LastName": "Old",
                "Company": "C",
                "Newsletter_Consent__c": False,
                "Didomi_Sync_State__c": stamped(5),
            },
        )
        emulator.convert_lead(old)
        new = emulator.seed("Lead", {"Email": email, "LastName": "New", "Company": "C"})
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            plan = next(p for p in report.plans if p.sobject == "Lead")
            writer = TargetWriter(client, plan, s)
            late = change(email, purpose("newsletter", True), minutes=2, event_id="g")
            result = (await writer.write(batch_of([late], [plan])))[email]
        lead = emulator.get("Lead", new)
    assert lead is not None and lead["Newsletter_Consent__c"] is False
    assert result.stale_indexes == {0}, result


def seed_two(org: Org, email: str) -> str:
    """Two Contacts of ``email``: A withdrawn at minute 7 (stamped), B subscribed by hand (no
    stamp); B's id."""
    org.emulator.seed(
        "Contact",
        {
            "Email": email,
            "LastName": "A",
            "Newsletter_Consent__c": False,
            "Didomi_Sync_State__c": stamped(7),
        },
    )
    return org.emulator.seed(
        "Contact", {"Email": email, "LastName": "B", "Newsletter_Consent__c": True}
    )


async def test_a_gated_grant_leaves_the_batchs_older_withdrawal_to_a_lagging_record() -> None:
    # A holds a choice made at minute 7; B, a second Contact, a consent ticked by hand (no
    # stamp). One batch withdraws at minute 4 and grants at minute 6. The grant is older than
    # A's: written nowhere. The withdrawal still reaches B, as separate batches would have.
    email = "merged@example.com"
    async with contact_writer(example_mapping()) as (org, writer):
        b = seed_two(org, email)
        withdraw = change(email, purpose("newsletter", False), minutes=4, event_id="w")
        grant = change(email, purpose("newsletter", True), minutes=6, event_id="g")
        result = (await writer.write(batch_of([withdraw, grant], [org.plan])))[email]
        assert org.newsletter(b) is False
    assert result.status == "updated"
    assert result.stale_indexes == {1}  # the grant; the withdrawal was written to B


async def test_a_fallback_withdrawal_no_record_took_is_not_reported_written() -> None:
    # As above, but a validation rule on B refuses the withdrawal: it reached no record, so
    # the withdrawal event is older than what the person's records hold, and refused.
    email = "refused-fallback@example.com"
    async with contact_writer(example_mapping()) as (org, writer):
        b = seed_two(org, email)
        refuse_the_withdrawal(org.emulator, email)
        withdraw = change(email, purpose("newsletter", False), minutes=4, event_id="w")
        grant = change(email, purpose("newsletter", True), minutes=6, event_id="g")
        result = (await writer.write(batch_of([withdraw, grant], [org.plan])))[email]
        assert org.newsletter(b) is True  # refused there
    assert set(result.refused) == {"Newsletter_Consent__c"}
    assert result.older.get(0) == ["Newsletter_Consent__c"], result


@pytest.mark.parametrize("regranted", [False, True], ids=["alone", "granted-again-after"])
async def test_a_deleted_event_withdraws_what_its_earlier_versions_granted(
    regranted: bool,
) -> None:
    # Event E granted the newsletter and the "offers" topic (minute 1); a later version of
    # E no longer mentions the topic, and E is then deleted (minute 2, on_event_deleted:
    # withdraw). The deleted entity only says what E holds now; the record's stamps say the
    # topic's consent came from E: it is withdrawn as well. Analytics, granted by another
    # event, stays; so does a topic granted again after the deletion.
    email = "versions@example.com"
    at = epoch_ms(T0 + timedelta(minutes=1))
    state = {
        name: Stamp(at, 0, 1, "E")
        for name in ("Newsletter_Consent__c", "Newsletter_Topics__c", "Topic_Offers__c")
    }
    state["Analytics_Consent__c"] = Stamp(at, 0, 2, "F")
    async with contact_writer(example_mapping()) as (org, writer):
        record_id = org.emulator.seed(
            "Contact",
            {
                "Email": email,
                "LastName": "V",
                "Newsletter_Consent__c": True,
                "Analytics_Consent__c": True,
                "Newsletter_Topics__c": "offers",
                "Topic_Offers__c": True,
                "Didomi_Sync_State__c": sync_state.encode(state),
            },
        )
        deletion = change(email, purpose("newsletter", False), minutes=2, event_id="E")
        deletion.event_type = "event.deleted"
        changes = [deletion]
        if regranted:
            changes.append(
                change(email, purpose("newsletter", None, topics="offers"), minutes=3, event_id="G")
            )
        result = (await writer.write(batch_of(changes, [org.plan])))[email]
        record = org.emulator.get("Contact", record_id)
    assert record is not None and result.status == "updated", result
    assert record["Newsletter_Consent__c"] is False
    assert record["Analytics_Consent__c"] is True  # another event's grant
    held = sync_state.decode(record["Didomi_Sync_State__c"])
    if regranted:
        assert record["Topic_Offers__c"] is True and record["Newsletter_Topics__c"] == "offers"
        assert held["Topic_Offers__c"].event_id == "G"
    else:
        assert record["Topic_Offers__c"] is False and record["Newsletter_Topics__c"] is None
        assert held["Topic_Offers__c"].event_id == "E"  # stamped with the deletion
        assert held["Topic_Offers__c"].time_ms == epoch_ms(T0 + timedelta(minutes=2))


@pytest.mark.parametrize("named", ["Region__c", "Email", "LastName", "LastName,Email"])
async def test_a_defaults_pass_sends_only_the_defaults_salesforce_asked_for(named: str) -> None:
    # Blind upsert by the external id. Region__c: a rule on the existing record requires a
    # field the mapping has no default for: a second pass with create_defaults could not
    # succeed, and would rename the record "Unknown". No second pass; the error is the
    # person's. Email: the existing record lacks the match field (made required since): the
    # second pass sends it and no default. LastName: a new person; the second pass sends
    # that default and creates them, also when Salesforce names the match field too.
    async with make_emulator() as emulator:
        record_id = None
        if named == "LastName,Email":
            emulator.require_field("Contact", "Email")  # the match field, required
        elif named != "LastName":
            existing = {"Email": EMAIL, "LastName": "Real", "Didomi_Id__c": EMAIL}
            record_id = emulator.seed("Contact", existing)
            emulator.inject_record_error(
                "upsert",
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{named}]",
                fields=[named],
                email=EMAIL,
            )
        # (A new Contact without them: the emulator's own REQUIRED_FIELD_MISSING.)
        emulator.reset_stats()
        mapping = parse_mapping(EXTERNAL_ID_MAPPING)
        result = await write(emulator, "Contact", purpose("newsletter", False), mapping=mapping)
        upserts = emulator.stats["upsert"]
        records = emulator.find_by_email("Contact", EMAIL)
    assert len(records) == 1, (result, records)
    record = records[0]
    if named.startswith("LastName"):
        assert result.status == "created" and upserts == 2, result
        assert record["LastName"] == "Unknown"
    elif named == "Email":
        assert result.status == "updated" and upserts == 2, result
        assert record["Id"] == record_id and record["LastName"] == "Real"
    else:
        assert result.status == "failed" and upserts == 1, result
        assert result.error is not None and result.error.fields == ["Region__c"]
        assert record["Id"] == record_id and record["LastName"] == "Real"
