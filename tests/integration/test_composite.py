"""Composite calls (SALESFORCE_COMPOSITE) against the emulator over HTTP: calls issued
together go as one API call, each caller gets its own subrequest's answer, classified as if
it had been a call of its own, and errors of the whole call are every caller's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from prometheus_client import CollectorRegistry

from consumer.devkit.emulator import SalesforceEmulator
from consumer.errors import RequestLimitExceededError, SalesforceRequestError
from consumer.model.changes import PersonWrite
from consumer.model.events import Purpose
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.composite import _GROUP, together
from consumer.salesforce.writer import TargetWriter
from tests.integration.support import (
    batch_of,
    emulator_settings,
    example_mapping,
    make_emulator,
)
from tests.integration.test_salesforce_client import client_for
from tests.unit.helpers import change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

#: The group key of one batch's calls (writers use the batch's people).
BATCH = object()


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[SalesforceEmulator]:
    async with make_emulator(page_size=3) as emu:
        for i in range(5):
            emu.seed("Contact", {"Email": f"c{i}@x.com", "LastName": "C"})
        emu.seed("Lead", {"Email": "l0@x.com", "LastName": "L", "Company": "Co"})
        yield emu


def composite(emulator: SalesforceEmulator) -> SalesforceClient:
    return client_for(emulator, salesforce_composite="on")


async def test_calls_issued_together_go_as_one_api_call(emulator: SalesforceEmulator) -> None:
    async with composite(emulator) as client:
        await client.token()
        used = emulator.api_usage[0]
        with together(BATCH):
            contacts, leads, created = await asyncio.gather(
                client.query("SELECT Id, Email FROM Contact WHERE Email = 'c1@x.com'"),
                client.query("SELECT Id FROM Lead"),
                client.create([{"attributes": {"type": "Contact"}, "LastName": "New"}]),
            )
        assert emulator.api_usage[0] == used + 1
        assert emulator.stats["composite"] == 1
        assert [r["Email"] for r in contacts] == ["c1@x.com"]
        assert len(leads) == 1
        assert created[0].success and created[0].id is not None
        # A call alone goes as itself.
        await client.update([{"attributes": {"type": "Contact"}, "id": created[0].id}])
        assert emulator.stats["composite"] == 1
        assert emulator.api_usage[0] == used + 2
    calls = client.metrics.salesforce_calls.labels("composite", "200")._value.get()
    subrequests = client.metrics.salesforce_subrequests.labels("query", "200")._value.get()
    assert (calls, subrequests) == (1, 2)


async def test_calls_of_different_groups_or_of_none_never_share_a_composite_call(
    emulator: SalesforceEmulator,
) -> None:
    # Salesforce runs subrequests one after another: two lanes sharing a call would lose
    # their parallelism, so only one batch's own calls go together.
    other = object()

    async def two(key: object) -> None:
        with together(key):
            await asyncio.gather(
                client.query("SELECT Id FROM Lead"), client.query("SELECT Id FROM Contact")
            )

    async with composite(emulator) as client:
        await client.token()
        await asyncio.gather(
            two(BATCH),
            two(other),
            client.query("SELECT Id FROM Lead"),
            client.query("SELECT Id FROM Lead"),
        )
    assert emulator.stats["composite"] == 2  # one per group; the two without a group alone
    assert emulator.stats["query"] == 6


async def test_more_than_five_calls_go_as_several_composite_calls(
    emulator: SalesforceEmulator,
) -> None:
    async with composite(emulator) as client:
        await client.token()
        used = emulator.api_usage[0]
        with together(BATCH):
            results = await asyncio.gather(
                *(
                    client.query(f"SELECT Id FROM Contact WHERE Email = 'c{i % 5}@x.com'")
                    for i in range(11)
                )
            )
    assert [len(r) for r in results] == [1] * 11
    assert emulator.stats["composite"] == 2  # 5 + 5; the eleventh goes alone
    assert emulator.stats["query"] == 11
    assert emulator.api_usage[0] == used + 3


async def test_query_pages_are_followed_through_composite_calls(
    emulator: SalesforceEmulator,
) -> None:
    async with composite(emulator) as client:
        with together(BATCH):
            contacts, leads = await asyncio.gather(
                client.query("SELECT Id FROM Contact"), client.query("SELECT Id FROM Lead")
            )
    assert len(contacts) == 5 and len(leads) == 1  # pages of 3: one query_more


async def test_each_caller_gets_its_own_error(emulator: SalesforceEmulator) -> None:
    async with composite(emulator) as client:
        await client.token()
        with together(BATCH):
            bad, good, record_error = await asyncio.gather(
                client.query("SELECT Nope FROM Contact"),
                client.query("SELECT Id FROM Lead"),
                client.create([{"attributes": {"type": "Contact"}}]),  # LastName missing
                return_exceptions=True,
            )
    assert isinstance(bad, SalesforceRequestError) and bad.code == "INVALID_FIELD"
    assert isinstance(good, list) and len(good) == 1
    assert not isinstance(record_error, BaseException)
    assert not record_error[0].success
    assert record_error[0].errors[0].code == "REQUIRED_FIELD_MISSING"
    assert emulator.stats["composite"] == 1


async def test_a_subrequest_fault_is_retried_alone(emulator: SalesforceEmulator) -> None:
    async with composite(emulator) as client:
        await client.token()
        emulator.inject_fault("query", 503, count=1)
        with together(BATCH):
            first, second = await asyncio.gather(
                client.query("SELECT Id FROM Lead"), client.query("SELECT Id FROM Lead")
            )
    assert len(first) == len(second) == 1
    assert emulator.stats["query"] == 3  # one of the two answered 503 and was sent again
    assert emulator.stats["composite"] == 1  # ... alone: nothing else was issued with it


async def test_an_error_of_the_whole_call_is_every_callers(emulator: SalesforceEmulator) -> None:
    async with composite(emulator) as client:
        await client.token()
        emulator.set_api_usage(*[emulator.api_usage[1]] * 2)  # the daily limit is reached
        with together(BATCH):
            results = await asyncio.gather(
                client.query("SELECT Id FROM Lead"),
                client.query("SELECT Id FROM Contact"),
                return_exceptions=True,
            )
    assert all(isinstance(r, RequestLimitExceededError) for r in results)


async def test_an_expired_session_is_refreshed_once_for_the_whole_call(
    emulator: SalesforceEmulator,
) -> None:
    async with composite(emulator) as client:
        await client.token()
        emulator.revoke_tokens()
        with together(BATCH):
            contacts, leads = await asyncio.gather(
                client.query("SELECT Id FROM Contact"), client.query("SELECT Id FROM Lead")
            )
    assert len(contacts) == 5 and len(leads) == 1
    assert client.token_grants == 2


async def test_the_emulator_keeps_salesforces_composite_limits(
    emulator: SalesforceEmulator,
) -> None:
    async with composite(emulator) as client:
        token = await client.token()
    path = "/services/data/v62.0/query?q=SELECT+Id+FROM+Lead"
    six = [{"method": "GET", "url": path, "referenceId": f"q{i}"} for i in range(6)]
    headers = {"Authorization": f"Bearer {token.value}"}
    async with ClientSession() as http:
        async with http.post(
            f"{emulator.url}/services/data/v62.0/composite",
            data=orjson.dumps({"compositeRequest": six}),
            headers=headers,
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())[0]["errorCode"] == "LIMIT_EXCEEDED"
        async with http.post(
            f"{emulator.url}/services/data/v62.0/composite",
            data=orjson.dumps({"compositeRequest": six[:2]}),
            headers=headers,
        ) as resp:
            body = await resp.json()
    assert resp.status == 200
    assert [e["referenceId"] for e in body["compositeResponse"]] == ["q0", "q1"]
    assert [e["httpStatusCode"] for e in body["compositeResponse"]] == [200, 200]


async def test_a_batchs_only_writer_sends_lone_calls_at_once_and_two_writers_share() -> None:
    # A lone call of a batch's only writer (its query; its writes when they are all updates)
    # reaches the composer outside any group, so it is not held for company; updates beside
    # creates, and the queries of two writers, still share composite calls.
    async with make_emulator() as emu:
        for i in range(3):
            emu.seed("Contact", {"Email": f"c{i}@x.com", "LastName": "C"})
            emu.seed("Lead", {"Email": f"c{i}@x.com", "LastName": "L", "Company": "Co"})
        s = emulator_settings(emu, salesforce_composite="on")
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, example_mapping())
            plans = {p.sobject: p for p in report.plans}
            composer = client._composer
            assert composer is not None
            grouped: list[tuple[str, bool]] = []
            call = composer.call

            async def noting(*args: Any) -> tuple[int, Any]:
                grouped.append((args[3], _GROUP.get() is not None))
                return await call(*args)

            composer.call = noting  # type: ignore[method-assign,assignment]

            def people(emails: list[str], *choices: Purpose) -> list[PersonWrite]:
                changes = [change(e, *choices, minutes=1) for e in emails]
                return batch_of(changes, list(plans.values()))

            contact = TargetWriter(client, plans["Contact"], s)
            lead = TargetWriter(client, plans["Lead"], s)
            # Analytics is mapped on Contacts only: one writer; updates alone, then updates
            # beside a create.
            only_contacts = people(["c0@x.com", "c1@x.com"], purpose("analytics", True))
            await contact.write(only_contacts, backlog=True, writers=1)
            assert grouped == [("query", False), ("update", False)]
            assert emu.stats.get("composite", 0) == 0
            grouped.clear()
            with_new = people(["c2@x.com", "new@x.com"], purpose("analytics", True))
            await contact.write(with_new, backlog=True, writers=1)
            assert grouped == [("query", False), ("update", True), ("create", True)]
            assert emu.stats["composite"] == 1
            grouped.clear()
            # The newsletter is mapped on both: two writers, whose queries go together.
            both = people(["c0@x.com", "c1@x.com"], purpose("newsletter", False))
            await asyncio.gather(
                contact.write(both, backlog=True, writers=2),
                lead.write(both, backlog=True, writers=2),
            )
            assert sorted(grouped) == [("query", True)] * 2 + [("update", True)] * 2
            assert emu.stats["composite"] == 3
    for email in ("c0@x.com", "c1@x.com"):
        assert emu.find_by_email("Contact", email)[0]["Newsletter_Consent__c"] is False
        assert emu.find_by_email("Lead", email)[0]["Newsletter_Consent__c"] is False
