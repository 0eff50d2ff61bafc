"""A pause that interrupts a batch keeps what it finished: the retry neither writes those
people again nor reports them stale for finding their own stamps (writer against the
emulator over HTTP)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from consumer.errors import RequestLimitExceededError
from consumer.model.changes import PersonResult, Sourced
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import RecordResult, SalesforceClient
from consumer.salesforce.writer import TargetWriter
from consumer.settings import Settings
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from tests.integration.support import CLIENT_ID, CLIENT_SECRET, example_mapping, make_emulator
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
        s = Settings(
            salesforce_token_url=emulator.url,
            salesforce_client_id=CLIENT_ID,
            salesforce_client_secret=SecretStr(CLIENT_SECRET),
        )
        async with LimitOnSecondUpdate(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            contact = next(p for p in report.plans if p.sobject == "Contact")
            writer = TargetWriter(client, contact, s)
            changes = [change(e, purpose("newsletter", False), minutes=1) for e in emails]
            people = merge_by_person(
                Sourced(c, 0, i, i, map_change(c, [contact])) for i, c in enumerate(changes)
            )
            done: dict[str, PersonResult] = {}
            with pytest.raises(RequestLimitExceededError):
                await writer.write(list(people.values()), done)
            assert len(done) == 200  # the first call's people are finished
            assert {r.status for r in done.values()} == {"updated"}
            updates_before = emulator.stats["update"]
            results = await writer.write(list(people.values()), done)
    assert results is done and len(done) == 250
    assert {r.status for r in done.values()} == {"updated"}  # none reported stale
    assert emulator.stats["update"] == updates_before + 1  # only the 50 left
    assert all(
        emulator.find_by_email("Contact", e)[0]["Newsletter_Consent__c"] is False for e in emails
    )
