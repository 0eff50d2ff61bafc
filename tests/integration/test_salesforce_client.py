"""The Salesforce client against the emulator over HTTP: sessions, queries, collections."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from consumer.devkit.emulator import SalesforceEmulator
from consumer.errors import (
    AuthenticationError,
    RequestLimitExceededError,
    RetryBudgetExhaustedError,
    SalesforceRequestError,
)
from consumer.observability.metrics import Metrics
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.soql import quote_literal
from consumer.settings import Settings
from tests.integration.support import CLIENT_ID, CLIENT_SECRET, make_emulator

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[SalesforceEmulator]:
    async with make_emulator(page_size=3) as emu:
        yield emu


def client_for(emulator: SalesforceEmulator, **overrides: object) -> SalesforceClient:
    values: dict[str, object] = {
        "salesforce_token_url": emulator.url,
        "salesforce_client_id": CLIENT_ID,
        "salesforce_client_secret": CLIENT_SECRET,
        "salesforce_retry_initial_seconds": 0.01,
        "salesforce_retry_max_seconds": 0.05,
        "salesforce_retry_budget_seconds": 2,
    }
    values.update(overrides)
    return SalesforceClient(Settings(**values), Metrics(CollectorRegistry()))  # type: ignore[arg-type]


async def test_concurrent_calls_after_an_expiry_share_one_new_token(
    emulator: SalesforceEmulator,
) -> None:
    for i in range(5):
        emulator.seed("Contact", {"Email": f"c{i}@x.com", "LastName": "C"})
    async with client_for(emulator) as client:
        await client.query("SELECT Id FROM Contact")
        assert client.token_grants == 1
        emulator.revoke_tokens()
        emulator.set_latency(base_ms=20)
        results = await asyncio.gather(*(client.query("SELECT Id FROM Contact") for _ in range(8)))
    assert all(len(r) == 5 for r in results)
    assert client.token_grants == 2
    assert emulator.tokens_issued == 2


async def test_a_401_loop_is_not_followed_forever(emulator: SalesforceEmulator) -> None:
    async with client_for(emulator) as client:
        await client.token()
        emulator.inject_fault("query", 401, count=10)
        with pytest.raises(AuthenticationError) as info:
            await client.query("SELECT Id FROM Contact")
    assert info.value.code == "SESSION_REFUSED"
    assert emulator.tokens_issued == 2  # one retry with one new token, then give up
    assert emulator.stats["query"] == 2


async def test_rest_api_disabled_is_a_configuration_error(emulator: SalesforceEmulator) -> None:
    emulator.rest_api_disabled = True
    async with client_for(emulator) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.query("SELECT Id FROM Contact")
    assert info.value.code == "API_DISABLED_FOR_USER"
    assert emulator.tokens_issued == 1


@pytest.mark.parametrize(
    ("client_id", "secret", "code"),
    [("wrong", CLIENT_SECRET, "INVALID_CLIENT"), (CLIENT_ID, "wrong-secret", "INVALID_CLIENT")],
)
async def test_refused_credentials_say_what_to_fix_without_the_secret(
    emulator: SalesforceEmulator,
    client_id: str,
    secret: str,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(
        emulator, salesforce_client_id=client_id, salesforce_client_secret=secret
    ) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.token()
    assert info.value.code == code
    assert "SALESFORCE_CLIENT_SECRET" in str(info.value)
    assert secret not in str(info.value) and secret not in caplog.text


async def test_token_never_appears_in_logs_or_errors(
    emulator: SalesforceEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(emulator) as client:
        token = await client.token()
        emulator.inject_fault("query", 500, count=100)
        with pytest.raises(RetryBudgetExhaustedError) as info:
            await client.query("SELECT Id FROM Contact")
    assert token.value not in str(info.value)
    assert token.value not in repr(token)
    assert token.value not in caplog.text
    assert CLIENT_SECRET not in caplog.text


async def test_query_follows_next_records_url(emulator: SalesforceEmulator) -> None:
    for i in range(10):
        emulator.seed("Lead", {"Email": f"l{i}@x.com", "LastName": "L", "Company": "C"})
    async with client_for(emulator) as client:
        rows = await client.query("SELECT Id, Email FROM Lead")
    assert sorted(r["Email"] for r in rows) == sorted(f"l{i}@x.com" for i in range(10))
    assert emulator.stats["query_more"] == 3  # pages of 3: 3 + 3 + 3 + 1


async def test_escaped_quote_and_backslash_match_and_injection_does_not(
    emulator: SalesforceEmulator,
) -> None:
    odd = "o'brien\\x@example.com"
    emulator.seed("Contact", {"Email": odd, "LastName": "O"})
    emulator.seed("Contact", {"Email": "other@example.com", "LastName": "P"})
    async with client_for(emulator) as client:
        rows = await client.query(
            f"SELECT Id, Email FROM Contact WHERE Email IN ({quote_literal(odd.upper())})"
        )
        assert [r["Email"] for r in rows] == [odd]
        hostile = "x') OR Email != null OR Email IN ('y"
        rows = await client.query(
            f"SELECT Id FROM Contact WHERE Email IN ({quote_literal(hostile)})"
        )
        assert rows == []
        with pytest.raises(SalesforceRequestError) as info:
            await client.query("SELECT Id FROM Contact WHERE Email IN ('a\\qb')")
    assert info.value.code == "MALFORMED_QUERY"


async def test_transient_errors_are_retried_then_succeed(emulator: SalesforceEmulator) -> None:
    emulator.seed("Contact", {"Email": "a@x.com", "LastName": "A"})
    async with client_for(emulator) as client:
        await client.token()
        emulator.inject_fault("query", 503, count=2)
        emulator.inject_fault(
            "query",
            403,
            body=[
                {
                    "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED",
                }
            ],
            count=1,
        )
        rows = await client.query("SELECT Id FROM Contact")
    assert len(rows) == 1
    assert emulator.stats["query"] == 4


async def test_calls_are_labelled_and_accept_gzip(emulator: SalesforceEmulator) -> None:
    emulator.seed("Contact", {"Email": "a@x.com", "LastName": "A" * 80})
    async with client_for(emulator, salesforce_client_name="consent-sync-test") as client:
        rows = await client.query("SELECT Id, LastName FROM Contact")
    assert rows[0]["LastName"] == "A" * 80
    seen = emulator.seen_headers
    assert seen["Sforce-Call-Options: client=consent-sync-test"] >= 1
    assert any(h.startswith("Accept-Encoding: gzip") for h in seen)


async def test_daily_limit_is_its_own_error(emulator: SalesforceEmulator) -> None:
    emulator.set_api_usage(15000, 15000)
    async with client_for(emulator) as client:
        with pytest.raises(RequestLimitExceededError):
            await client.query("SELECT Id FROM Contact")
        assert client.api_usage == (15000, 15000)


async def test_collections_results_come_back_in_order(emulator: SalesforceEmulator) -> None:
    a = emulator.seed("Contact", {"Email": "a@x.com", "LastName": "A"})
    async with client_for(emulator) as client:
        results = await client.update(
            [
                {"attributes": {"type": "Contact"}, "id": a, "Newsletter_Consent__c": True},
                {
                    "attributes": {"type": "Contact"},
                    "id": "003000000000000AAA",
                    "Newsletter_Consent__c": True,
                },
            ]
        )
        created = await client.create(
            [
                {"attributes": {"type": "Contact"}, "Email": "n@x.com", "LastName": "N"},
                {"attributes": {"type": "Contact"}, "Email": "m@x.com"},
            ]
        )
    assert results[0].success and results[0].id == a
    assert not results[1].success and results[1].errors
    assert created[0].success and created[0].id
    assert not created[1].success
    assert created[1].errors[0].code == "REQUIRED_FIELD_MISSING"
    assert created[1].errors[0].fields == ["LastName"]
    assert emulator.get("Contact", a)["Newsletter_Consent__c"] is True  # type: ignore[index]
