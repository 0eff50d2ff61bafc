"""A mapped field that disappears while the service runs (deleted, or hidden from the
integration user by field-level security) never blocks a withdrawal in another field (writer
against the emulator over HTTP).

Salesforce then refuses any query or write naming the field as a whole (400
``INVALID_FIELD``): without care, every person of the call fails, their withdrawals with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.devkit.bench.events import EXTERNAL_ID_MAPPING
from consumer.devkit.emulator import SalesforceEmulator
from consumer.devkit.emulator.fields import CONTACT_CHOICES
from consumer.errors import MappingError, Reaction
from consumer.mapping import MappingConfig, TargetPlan, parse_mapping
from consumer.model import sync_state
from consumer.model.changes import PersonResult
from consumer.model.events import Purpose
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
from tests.unit.helpers import change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

KNOWN = "known@example.com"
NEW = "new@example.com"
GONE = "Newsletter_Frequency__c"


def withdrawal() -> Purpose:
    """Unsubscribed from the newsletter, and a new frequency (the field that goes)."""
    return purpose("newsletter", False, frequency="weekly")


async def planned(client: SalesforceClient, mapping: MappingConfig) -> TargetPlan:
    """The Contact plan, made at start-up while every field is there."""
    report = await check_mapping(client, mapping)
    assert report.ok, report.render()
    return next(p for p in report.plans if p.sobject == "Contact")


@dataclass
class Org:
    """An emulated org, a client logged in to it, and a Contact writer planned on it."""

    emulator: SalesforceEmulator
    client: SalesforceClient
    metrics: Metrics
    plan: TargetPlan
    writer: TargetWriter

    async def write(self, *emails: str, minutes: int = 1) -> dict[str, PersonResult]:
        """One batch: each of ``emails`` withdraws and picks a new frequency."""
        changes = [change(e, withdrawal(), minutes=minutes, event_id=f"e{minutes}") for e in emails]
        return await self.writer.write(batch_of(changes, [self.plan]))

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "consent_sync_salesforce_fields_unavailable", {"sobject": "Contact"}
        )


@asynccontextmanager
async def org(mapping: MappingConfig | None = None, **settings: Any) -> AsyncIterator[Org]:
    async with make_emulator() as emulator:
        s = emulator_settings(emulator, **settings)
        metrics = Metrics(CollectorRegistry())
        async with SalesforceClient(s, metrics) as client:
            plan = await planned(client, mapping or example_mapping())
            yield Org(emulator, client, metrics, plan, TargetWriter(client, plan, s))


def seed_subscribed(emulator: SalesforceEmulator, **extra: Any) -> str:
    return emulator.seed(
        "Contact",
        {
            "Email": KNOWN,
            "LastName": "Known",
            "Newsletter_Consent__c": True,
            GONE: "daily",
            **extra,
        },
    )


def assert_withdrawn_and_refused(result: PersonResult, status: str) -> None:
    assert result.status == status, result
    assert result.written == {"Newsletter_Consent__c"}
    assert set(result.refused) == {GONE}
    assert result.refused[GONE].code == "INVALID_FIELD"
    assert "gone" in result.refused[GONE].message


@pytest.mark.parametrize("composite", ["off", "on"])
async def test_match_mode_writes_the_withdrawal_and_refuses_the_gone_field(
    composite: str,
) -> None:
    async with org(salesforce_composite=composite) as o:
        emulator = o.emulator
        known = seed_subscribed(emulator)
        emulator.hide_field("Contact", GONE)
        emulator.reset_stats()
        results = await o.write(KNOWN, NEW)
        assert emulator.stats["describe"] == 1
        assert_withdrawn_and_refused(results[KNOWN], "updated")
        assert_withdrawn_and_refused(results[NEW], "created")
        record = emulator.get("Contact", known)
        assert record is not None
        assert record["Newsletter_Consent__c"] is False
        assert record[GONE] == "daily"  # hidden, untouched
        # The refused choice keeps no stamp: once the field is back, a redrive of the
        # event is newer than what the record holds, and is written.
        state = sync_state.decode(record["Didomi_Sync_State__c"])
        assert "Newsletter_Consent__c" in state and GONE not in state
        assert o.gauge() == 1

        # Known gone now: the next batch neither fails nor describes again.
        emulator.reset_stats()
        again = await o.write("other@example.com", minutes=2)
        assert emulator.stats.get("describe", 0) == 0
        assert emulator.stats.get("http_400", 0) == 0
        assert_withdrawn_and_refused(again["other@example.com"], "created")


async def test_the_field_is_taken_back_once_it_is_there_again() -> None:
    async with org(salesforce_describe_recheck_seconds=1e-9) as o:
        emulator = o.emulator
        known = seed_subscribed(emulator)
        # Described again before every batch while a field is gone.
        emulator.hide_field("Contact", GONE)
        first = await o.write(KNOWN)
        assert_withdrawn_and_refused(first[KNOWN], "updated")
        emulator.show_field("Contact", GONE)
        # The redrive of the same event.
        redriven = await o.write(KNOWN)
        assert redriven[KNOWN].status == "updated", redriven[KNOWN]
        assert redriven[KNOWN].refused == {}
        assert redriven[KNOWN].written == {GONE}  # the withdrawal's stamp already held
        record = emulator.get("Contact", known)
        assert record is not None and record[GONE] == "weekly"
        assert o.gauge() == 0


async def test_blind_upsert_writes_the_withdrawal_and_refuses_the_gone_field() -> None:
    async with org(parse_mapping(EXTERNAL_ID_MAPPING)) as o:
        emulator = o.emulator
        known = seed_subscribed(emulator, Didomi_Id__c=KNOWN)
        emulator.hide_field("Contact", GONE)
        results = await o.write(KNOWN, NEW)
        assert_withdrawn_and_refused(results[KNOWN], "updated")
        assert_withdrawn_and_refused(results[NEW], "created")
        record = emulator.get("Contact", known)
        assert record is not None and record["Newsletter_Consent__c"] is False
        (made,) = emulator.find_by_email("Contact", NEW)
        assert made["Newsletter_Consent__c"] is False


async def test_an_event_only_about_the_gone_field_is_refused_not_lost() -> None:
    async with org() as o:
        emulator = o.emulator
        seed_subscribed(emulator)
        emulator.hide_field("Contact", GONE)
        only = change(KNOWN, purpose("newsletter", None, frequency="weekly"), minutes=1)
        result = (await o.writer.write(batch_of([only], [o.plan])))[KNOWN]
        assert result.status == "stale", result  # nothing written; the record is as it was
        assert set(result.refused) == {GONE}
        assert result.written == set()


@pytest.mark.parametrize("hidden", ["Didomi_Sync_State__c", "Email"])
async def test_a_field_the_service_cannot_order_or_find_without_pauses_writing(
    hidden: str,
) -> None:
    async with org() as o:
        emulator = o.emulator
        known = seed_subscribed(emulator)
        emulator.hide_field("Contact", hidden)
        with pytest.raises(MappingError) as caught:
            await o.write(KNOWN)
        assert caught.value.reaction is Reaction.CONFIGURATION  # paused, kept, retried
        assert hidden in str(caught.value)
        record = emulator.get("Contact", known)
        assert record is not None and record["Newsletter_Consent__c"] is True  # not written


SYNCED = "Consent_Synced_At__c"
WITH_SYNCED = (
    "regulations: [gdpr]\ntargets:\n"
    "  - sobject: Contact\n"
    "    upsert_mode: true\n"
    "    match_field: Email\n"
    "    sync_state_field: Didomi_Sync_State__c\n"
    f"    last_synced_field: {SYNCED}\n"
    '    create_defaults: {LastName: "Unknown"}\n' + CONTACT_CHOICES
)


async def test_a_gone_last_synced_field_is_left_out_and_another_cause_is_reported() -> None:
    # The last-synced mark goes, and the creates also meet an INVALID_FIELD that no field of
    # the mapping explains (a field a trigger writes, say): the mark is left out and the
    # calls sent again; the create is reported failed after a second describe, which finds
    # nothing more gone (it used to describe and resend until the stack ran out).
    async with org(parse_mapping(WITH_SYNCED)) as o:
        emulator = o.emulator
        known = seed_subscribed(emulator)
        emulator.hide_field("Contact", SYNCED)
        unexplained = [{"errorCode": "INVALID_FIELD", "message": "No such column 'Region__c'"}]
        emulator.inject_fault("create", 400, unexplained, count=2)
        emulator.reset_stats()
        results = await o.write(KNOWN, NEW)
        # The update and the create fail together: one describe; the create once more.
        assert emulator.stats["describe"] == 2, emulator.stats
        assert results[KNOWN].status == "updated", results[KNOWN]
        assert results[KNOWN].refused == {}
        record = emulator.get("Contact", known)
        assert record is not None and record["Newsletter_Consent__c"] is False
        assert record[SYNCED] is None  # hidden: not written
        failed = results[NEW]
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.code == "INVALID_FIELD" and "Region__c" in failed.error.message


WITH_FIRST_NAME = (
    "regulations: [gdpr]\ntargets:\n"
    "  - sobject: Contact\n"
    "    upsert_mode: true\n"
    "    match_field: Email\n"
    "    sync_state_field: Didomi_Sync_State__c\n"
    '    create_defaults: {LastName: "Unknown", FirstName: "Didomi"}\n' + CONTACT_CHOICES
)


async def test_a_gone_create_default_is_left_out_of_creates_until_it_is_back() -> None:
    # FirstName, set on creates by create_defaults, is taken from the integration user
    # (field-level security). Creates, a new person's withdrawal among them, go without it
    # (a field gone requires nothing) instead of failing whole; once it is back (the target
    # is described again), creates carry it again.
    async with org(parse_mapping(WITH_FIRST_NAME), salesforce_describe_recheck_seconds=0.001) as o:
        emulator = o.emulator
        emulator.hide_field("Contact", "FirstName")
        emulator.reset_stats()
        first = (await o.write(NEW))[NEW]
        assert first.status == "created", first
        assert emulator.stats["describe"] == 1  # the failed create described once
        emulator.show_field("Contact", "FirstName")
        again = (await o.write("later@example.com", minutes=2))["later@example.com"]
        assert again.status == "created", again
        (made,) = emulator.find_by_email("Contact", NEW)
        (later,) = emulator.find_by_email("Contact", "later@example.com")
    assert made["Newsletter_Consent__c"] is False and made["LastName"] == "Unknown"
    assert made.get("FirstName") is None
    assert later["FirstName"] == "Didomi"


async def test_later_chunks_leave_a_field_found_gone_out_before_sending() -> None:
    # 450 people: three upsert calls planned before the first one failed for the field.
    async with org(parse_mapping(EXTERNAL_ID_MAPPING)) as o:
        emulator = o.emulator
        emulator.hide_field("Contact", GONE)
        emulator.reset_stats()
        emails = [f"p{i}@example.com" for i in range(450)]
        results = await o.write(*emails)
        assert {r.status for r in results.values()} == {"created"}
        # One call failed and was sent again; the two after it went without the field. Then
        # the 450 new people get create_defaults: three calls more.
        assert (emulator.stats["describe"], emulator.stats["upsert"]) == (1, 3 + 1 + 3)


async def test_a_describe_answered_before_the_failure_is_not_taken_as_fresh() -> None:
    # Lane A's call fails for one gone field and describes. The answer is taken; then a
    # second field goes and lane B's call fails for it while A's describe is still in flight.
    # B must describe again rather than trust A's older answer (and fail its withdrawal).
    async with org(parse_mapping(EXTERNAL_ID_MAPPING)) as o:
        emulator = o.emulator
        b_id = seed_subscribed(emulator, Email="b@example.com", Didomi_Id__c="b@example.com")
        described = o.client.describe
        b_may_go = asyncio.Event()

        async def describe_then_lose_another(sobject: str) -> dict[str, Any]:
            answer = await described(sobject)
            if not b_may_go.is_set():
                emulator.hide_field("Contact", GONE)
                b_may_go.set()
                # Held until B's call has failed for the field this answer still lists.
                await wait_for(lambda: emulator.stats["upsert"] >= 2, 10, "B's call")
            return answer

        o.client.describe = describe_then_lose_another  # type: ignore[method-assign]
        emulator.hide_field("Contact", "Analytics_Consent__c")
        emulator.reset_stats()
        a = change("a@example.com", purpose("analytics", False), minutes=1, event_id="a")
        b = change("b@example.com", withdrawal(), minutes=1, event_id="b")

        async def lane_b() -> dict[str, PersonResult]:
            await b_may_go.wait()
            return await o.writer.write(batch_of([b], [o.plan]))

        _, results_b = await asyncio.gather(o.writer.write(batch_of([a], [o.plan])), lane_b())
        assert_withdrawn_and_refused(results_b["b@example.com"], "updated")
        record = emulator.get("Contact", b_id)
        assert record is not None and record["Newsletter_Consent__c"] is False


async def test_a_default_already_left_out_does_not_explain_another_failure() -> None:
    # FirstName (a create default) is gone and known to be; then creates meet an
    # INVALID_FIELD it cannot have caused (the call went without it): reported failed after
    # one more describe, not described and resent over and over.
    async with org(parse_mapping(WITH_FIRST_NAME)) as o:
        emulator = o.emulator
        emulator.hide_field("Contact", "FirstName")
        assert (await o.write(NEW))[NEW].status == "created"
        unexplained = [{"errorCode": "INVALID_FIELD", "message": "No such column 'Region__c'"}]
        emulator.inject_fault("create", 400, unexplained, count=10)
        emulator.reset_stats()
        failed = (await o.write("other@example.com", minutes=2))["other@example.com"]
        calls = (emulator.stats["create"], emulator.stats["describe"])
    assert failed.status == "failed" and failed.error is not None, failed
    assert "Region__c" in failed.error.message
    assert calls == (1, 1), calls
