"""A mapped field that disappears while the service runs (deleted, or hidden from the
integration user by field-level security) never blocks a withdrawal in another field (writer
against the emulator over HTTP).

Salesforce then refuses any query or write naming the field as a whole (400
``INVALID_FIELD``): without care, every person of the call fails, their withdrawals with them.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.devkit.bench.events import EXTERNAL_ID_MAPPING
from consumer.devkit.emulator import SalesforceEmulator
from consumer.errors import MappingError, Reaction
from consumer.mapping import MappingConfig, TargetPlan, parse_mapping
from consumer.model import sync_state
from consumer.model.changes import PersonResult
from consumer.model.events import Purpose
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter
from tests.integration.support import batch_of, emulator_settings, example_mapping, make_emulator
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


async def write(
    writer: TargetWriter, plan: TargetPlan, *emails: str, minutes: int = 1, **kwargs: Any
) -> dict[str, PersonResult]:
    changes = [change(e, withdrawal(), minutes=minutes, event_id=f"e{minutes}") for e in emails]
    return await writer.write(batch_of(changes, [plan]), **kwargs)


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
    async with make_emulator() as emulator:
        known = seed_subscribed(emulator)
        s = emulator_settings(emulator, salesforce_composite=composite)
        metrics = Metrics(CollectorRegistry())
        async with SalesforceClient(s, metrics) as client:
            plan = await planned(client, example_mapping())
            writer = TargetWriter(client, plan, s)
            emulator.hide_field("Contact", GONE)
            emulator.reset_stats()
            results = await write(writer, plan, KNOWN, NEW)
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
            gauge = metrics.registry.get_sample_value(
                "consent_sync_salesforce_fields_unavailable", {"sobject": "Contact"}
            )
            assert gauge == 1

            # Known gone now: the next batch neither fails nor describes again.
            emulator.reset_stats()
            again = await write(writer, plan, "other@example.com", minutes=2)
            assert emulator.stats.get("describe", 0) == 0
            assert emulator.stats.get("http_400", 0) == 0
            assert_withdrawn_and_refused(again["other@example.com"], "created")


async def test_the_field_is_taken_back_once_it_is_there_again() -> None:
    async with make_emulator() as emulator:
        known = seed_subscribed(emulator)
        # Described again before every batch while a field is gone.
        s = emulator_settings(emulator, salesforce_describe_recheck_seconds=1e-9)
        metrics = Metrics(CollectorRegistry())
        async with SalesforceClient(s, metrics) as client:
            plan = await planned(client, example_mapping())
            writer = TargetWriter(client, plan, s)
            emulator.hide_field("Contact", GONE)
            first = await write(writer, plan, KNOWN)
            assert_withdrawn_and_refused(first[KNOWN], "updated")
            emulator.show_field("Contact", GONE)
            # The redrive of the same event.
            redriven = await write(writer, plan, KNOWN)
            assert redriven[KNOWN].status == "updated", redriven[KNOWN]
            assert redriven[KNOWN].refused == {}
            assert redriven[KNOWN].written == {GONE}  # the withdrawal's stamp already held
            record = emulator.get("Contact", known)
            assert record is not None and record[GONE] == "weekly"
            gauge = metrics.registry.get_sample_value(
                "consent_sync_salesforce_fields_unavailable", {"sobject": "Contact"}
            )
            assert gauge == 0


async def test_blind_upsert_writes_the_withdrawal_and_refuses_the_gone_field() -> None:
    async with make_emulator() as emulator:
        known = seed_subscribed(emulator, Didomi_Id__c=KNOWN)
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            plan = await planned(client, parse_mapping(EXTERNAL_ID_MAPPING))
            writer = TargetWriter(client, plan, s)
            emulator.hide_field("Contact", GONE)
            results = await write(writer, plan, KNOWN, NEW)
        assert_withdrawn_and_refused(results[KNOWN], "updated")
        assert_withdrawn_and_refused(results[NEW], "created")
        record = emulator.get("Contact", known)
        assert record is not None and record["Newsletter_Consent__c"] is False
        (made,) = emulator.find_by_email("Contact", NEW)
        assert made["Newsletter_Consent__c"] is False


async def test_an_event_only_about_the_gone_field_is_refused_not_lost() -> None:
    async with make_emulator() as emulator:
        seed_subscribed(emulator)
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            plan = await planned(client, example_mapping())
            writer = TargetWriter(client, plan, s)
            emulator.hide_field("Contact", GONE)
            only = change(KNOWN, purpose("newsletter", None, frequency="weekly"), minutes=1)
            result = (await writer.write(batch_of([only], [plan])))[KNOWN]
        assert set(result.refused) == {GONE}, result
        assert result.written == set()


@pytest.mark.parametrize("hidden", ["Didomi_Sync_State__c", "Email"])
async def test_a_field_the_service_cannot_order_or_find_without_pauses_writing(
    hidden: str,
) -> None:
    async with make_emulator() as emulator:
        known = seed_subscribed(emulator)
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            plan = await planned(client, example_mapping())
            writer = TargetWriter(client, plan, s)
            emulator.hide_field("Contact", hidden)
            with pytest.raises(MappingError) as caught:
                await write(writer, plan, KNOWN)
        assert caught.value.reaction is Reaction.CONFIGURATION  # paused, kept, retried
        assert hidden in str(caught.value)
        record = emulator.get("Contact", known)
        assert record is not None and record["Newsletter_Consent__c"] is True  # not written
