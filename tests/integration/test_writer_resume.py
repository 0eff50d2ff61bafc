"""A pause that interrupts a batch keeps what it finished: the retry neither writes those
people again nor reports them stale for finding their own stamps (writer against the
emulator over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.devkit.emulator import SalesforceEmulator
from consumer.devkit.emulator.fields import example_custom_fields
from consumer.devkit.emulator.state import FieldSpec
from consumer.errors import RequestLimitExceededError
from consumer.model import sync_state
from consumer.model.changes import PersonResult, Stamp
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import RecordResult, SalesforceClient
from consumer.salesforce.writer import TargetWriter
from tests.integration.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    batch_of,
    emulator_settings,
    example_mapping,
    make_emulator,
)
from tests.unit.helpers import change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


class LimitOnSecondUpdate(SalesforceClient):
    """The org's daily limit runs out between the batch's two update calls."""

    updates = 0

    async def update(self, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        self.updates += 1
        if self.updates == 2:
            raise RequestLimitExceededError("TotalRequests Limit exceeded.", status=403)
        return await super().update(records)


async def test_a_paused_attempt_keeps_the_people_it_finished() -> None:
    async with make_emulator() as emulator:
        emails = [f"p{i}@example.com" for i in range(250)]
        for email in emails:
            emulator.seed("Contact", {"Email": email, "LastName": "P"})
        s = emulator_settings(emulator)
        async with LimitOnSecondUpdate(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            contact = next(p for p in report.plans if p.sobject == "Contact")
            writer = TargetWriter(client, contact, s)
            changes = [change(e, purpose("newsletter", False), minutes=1) for e in emails]
            people = batch_of(changes, [contact])
            done: dict[str, PersonResult] = {}
            with pytest.raises(RequestLimitExceededError):
                await writer.write(people, done)
            assert len(done) == 200  # the first call's people are finished
            assert {r.status for r in done.values()} == {"updated"}
            updates_before = emulator.stats["update"]
            results = await writer.write(people, done)
    assert results is done and len(done) == 250
    assert {r.status for r in done.values()} == {"updated"}  # none reported stale
    assert emulator.stats["update"] == updates_before + 1  # only the 50 left
    assert all(
        emulator.find_by_email("Contact", e)[0]["Newsletter_Consent__c"] is False for e in emails
    )


async def test_stamps_of_fields_not_mapped_any_more_give_way_when_the_state_is_full() -> None:
    # The state field is exactly as long as the mapping check asks for. A record's state
    # holds, besides its mapped fields, the stamps of 40 fields no longer mapped: written as
    # they were, the state would be too long and Salesforce would refuse the whole record.
    mapping = example_mapping()
    contact_target = next(t for t in mapping.targets if t.sobject == "Contact")
    room = sync_state.capacity(n for _, n in contact_target.mapped_fields())
    fields = example_custom_fields()
    fields["Contact"] = [
        FieldSpec("Didomi_Sync_State__c", "textarea", length=room)
        if f.name == "Didomi_Sync_State__c"
        else f
        for f in fields["Contact"]
    ]
    old = {f"Gone_{i}__c": Stamp(1, 0, i, "x" * 64) for i in range(40)}
    async with SalesforceEmulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, custom_fields=fields
    ) as emulator:
        record_id = emulator.seed(
            "Contact",
            {
                "Email": "p@example.com",
                "LastName": "P",
                "Didomi_Sync_State__c": sync_state.encode(old),
            },
        )
        s = emulator_settings(emulator)
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, mapping)
            assert report.ok, report.render()
            plan = next(p for p in report.plans if p.sobject == "Contact")
            writer = TargetWriter(client, plan, s)
            c = change("p@example.com", purpose("newsletter", False), minutes=1)
            results = await writer.write(batch_of([c], [plan]))
        stored = emulator.get("Contact", record_id)
    assert results["p@example.com"].status == "updated"
    assert stored is not None and stored["Newsletter_Consent__c"] is False
    state = sync_state.decode(stored["Didomi_Sync_State__c"])
    assert "Newsletter_Consent__c" in state and not any(n.startswith("Gone_") for n in state)
    assert len(stored["Didomi_Sync_State__c"]) <= room


class CreatesHangUpdatesHitTheLimit(SalesforceClient):
    """A batch's create is in flight when its update finds the org's daily limit spent."""

    creating = 0
    cancelled = 0

    async def create(self, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        self.creating += 1
        try:
            await asyncio.Event().wait()  # Salesforce takes its time
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.creating -= 1
        raise AssertionError("unreachable")

    async def update(self, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        await asyncio.sleep(0)  # the create is on its way
        raise RequestLimitExceededError("TotalRequests Limit exceeded.", status=403)


async def test_a_failed_operation_leaves_no_other_call_of_its_attempt_in_flight() -> None:
    # The attempt ends with the pause; a create still running behind it could land after the
    # next attempt looked the person up, and the person would be created twice.
    async with make_emulator() as emulator:
        emulator.seed("Contact", {"Email": "old@example.com", "LastName": "P"})
        s = emulator_settings(emulator)
        client = CreatesHangUpdatesHitTheLimit(s, Metrics(CollectorRegistry()))
        async with client:
            report = await check_mapping(client, example_mapping())
            plan = next(p for p in report.plans if p.sobject == "Contact")
            writer = TargetWriter(client, plan, s)
            changes = [
                change(e, purpose("newsletter", False), minutes=1)
                for e in ("old@example.com", "new@example.com")
            ]
            people = batch_of(changes, [plan])
            with pytest.raises(RequestLimitExceededError):
                await writer.write(people)
            assert (client.creating, client.cancelled) == (0, 1)
