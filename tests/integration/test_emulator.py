"""The Salesforce emulator over real HTTP: tokens, SOQL, describe, collections, limits, faults."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from multidict import CIMultiDictProxy
from yarl import URL

from consumer.devkit.emulator import EmulatorError, FieldSpec, SalesforceEmulator

pytestmark = pytest.mark.integration

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret"
VERSION = "62.0"
SF_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")


def custom_fields() -> dict[str, list[FieldSpec]]:
    """Roughly what the demo mapping configures, plus an external id for upserts."""
    return {
        "Contact": [
            FieldSpec("Newsletter_Consent__c", "boolean"),
            FieldSpec(
                "Newsletter_Topics__c",
                "multipicklist",
                length=4099,
                picklist_values=("product_news", "offers", "events"),
                restricted_picklist=True,
            ),
            FieldSpec(
                "Newsletter_Frequency__c",
                "picklist",
                picklist_values=("daily", "weekly"),
                restricted_picklist=True,
            ),
            FieldSpec("Didomi_User_Id__c", "string", length=64, external_id=True),
        ],
        "Lead": [FieldSpec("Newsletter_Consent__c", "boolean")],
    }


@dataclass
class Reply:
    """What a test needs from one HTTP exchange."""

    status: int
    headers: CIMultiDictProxy[str]
    text: str
    body: Any


@dataclass
class Api:
    """A tiny client over aiohttp: just enough to speak to the emulator."""

    session: aiohttp.ClientSession
    base: str
    token: str = ""

    def data_path(self, tail: str, version: str = VERSION) -> str:
        return f"/services/data/v{version}/{tail}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        url: URL | None = None,
    ) -> Reply:
        all_headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        all_headers.update(headers or {})
        data = orjson.dumps(body) if body is not None else None
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        target = url if url is not None else URL(self.base + path)
        async with self.session.request(
            method, target, params=params, data=data, headers=all_headers
        ) as resp:
            text = await resp.text()
            parsed: Any = None
            if resp.content_type == "application/json":
                parsed = orjson.loads(text)
            return Reply(resp.status, resp.headers, text, parsed)

    async def query(self, soql: str) -> Reply:
        return await self.request("GET", self.data_path("query"), params={"q": soql})

    async def collections(
        self,
        method: str,
        records: list[dict[str, Any]],
        *,
        all_or_none: bool = False,
        tail: str = "",
    ) -> Reply:
        path = self.data_path("composite/sobjects" + tail)
        return await self.request(method, path, body={"allOrNone": all_or_none, "records": records})


async def fetch_token(session: aiohttp.ClientSession, base: str) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    async with session.post(f"{base}/services/oauth2/token", data=form) as resp:
        assert resp.status == 200
        payload = await resp.json()
    token = payload["access_token"]
    assert isinstance(token, str)
    return token


def contact(**fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Contact"}, **fields}


def lead(**fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Lead"}, **fields}


def codes(result: dict[str, Any]) -> list[str]:
    return [e["statusCode"] for e in result["errors"]]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    emulator = SalesforceEmulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        custom_fields=custom_fields(),
        api_limit=1000,
        page_size=3,
    )
    async with emulator:
        yield emulator


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest_asyncio.fixture
async def api(emu: SalesforceEmulator, session: aiohttp.ClientSession) -> Api:
    return Api(session, emu.url, await fetch_token(session, emu.url))


# ---- OAuth ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_token_success_has_salesforce_shape(
    emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    async with session.post(f"{emu.url}/services/oauth2/token", data=form) as resp:
        assert resp.status == 200
        assert "Sforce-Limit-Info" not in resp.headers
        payload = await resp.json()
    assert re.fullmatch(r"00D[0-9A-Za-z]{12}![A-Za-z0-9._]+", payload["access_token"])
    assert payload["access_token"].split("!")[1].startswith("AQ")
    assert payload["instance_url"] == emu.url
    assert payload["token_type"] == "Bearer"
    assert payload["scope"] == "api"
    assert isinstance(payload["issued_at"], str)
    assert abs(int(payload["issued_at"]) - time.time() * 1000) < 60_000
    assert payload["id"].startswith(f"{emu.url}/id/00D")
    assert payload["signature"]
    assert "expires_in" not in payload
    assert "refresh_token" not in payload
    assert emu.tokens_issued == 1
    assert emu.stats["token"] == 1
    assert emu.stats["api_calls"] == 0
    assert emu.api_usage == (0, 1000)


@pytest.mark.asyncio
async def test_token_with_http_basic_credentials(
    emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth(CLIENT_ID, CLIENT_SECRET)},
    ) as resp:
        assert resp.status == 200
        token = (await resp.json())["access_token"]
    reply = await Api(session, emu.url, token).request("GET", f"/services/data/v{VERSION}/limits")
    assert reply.status == 200


@pytest.mark.parametrize(
    ("form", "basic", "error", "description"),
    [
        (
            {"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            None,
            "unsupported_grant_type",
            "grant type not supported",
        ),
        (
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            None,
            "unsupported_grant_type",
            "grant type not supported",
        ),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "nope"},
            None,
            "invalid_client",
            "invalid client credentials",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "nope",
                "client_secret": CLIENT_SECRET,
            },
            None,
            "invalid_client",
            "invalid client credentials",
        ),
        (
            {"grant_type": "client_credentials"},
            None,
            "invalid_client",
            "invalid client credentials",
        ),
        (
            {"grant_type": "client_credentials"},
            aiohttp.encode_basic_auth(CLIENT_ID, "wrong"),
            "invalid_client",
            "invalid client credentials",
        ),
    ],
)
@pytest.mark.asyncio
async def test_token_errors(
    emu: SalesforceEmulator,
    session: aiohttp.ClientSession,
    form: dict[str, str],
    basic: str | None,
    error: str,
    description: str,
) -> None:
    headers = {"Authorization": basic} if basic else {}
    async with session.post(f"{emu.url}/services/oauth2/token", data=form, headers=headers) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": error, "error_description": description}
    assert emu.tokens_issued == 0
    assert emu.stats["token"] == 1


@pytest.mark.asyncio
async def test_token_refused_on_shared_login_host(
    emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    async with session.post(
        f"{emu.url}/services/oauth2/token", data=form, headers={"Host": "login.salesforce.com"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_grant"


# ---- authentication ---------------------------------------------------------------------

SESSION_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


@pytest.mark.asyncio
async def test_missing_or_unknown_token_is_401(api: Api, emu: SalesforceEmulator) -> None:
    path = api.data_path("limits")
    for token in ("", "00Dxx!AQnot-a-real-token"):
        reply = await api.request("GET", path, token=token)
        assert reply.status == 401
        assert reply.body == SESSION_EXPIRED
        assert reply.headers["Sforce-Limit-Info"] == "api-usage=0/1000"
    assert emu.stats["http_401"] == 2
    assert emu.api_usage == (0, 1000)


@pytest.mark.asyncio
async def test_token_expires_after_n_calls_and_new_token_works(
    api: Api, emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    emu.expire_tokens_after(calls=2)
    path = api.data_path("limits")
    assert (await api.request("GET", path)).status == 200
    assert (await api.request("GET", path)).status == 200
    third = await api.request("GET", path)
    assert third.status == 401
    assert third.body == SESSION_EXPIRED
    api.token = await fetch_token(session, emu.url)
    assert (await api.request("GET", path)).status == 200
    assert emu.tokens_issued == 2


@pytest.mark.asyncio
async def test_token_expires_after_seconds_and_on_revoke(
    api: Api, emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    path = api.data_path("limits")
    emu.expire_tokens_after(seconds=0.05)
    await asyncio.sleep(0.08)
    assert (await api.request("GET", path)).status == 401
    emu.expire_tokens_after()  # off again
    api.token = await fetch_token(session, emu.url)
    assert (await api.request("GET", path)).status == 200
    emu.revoke_tokens()
    assert (await api.request("GET", path)).status == 401
    api.token = await fetch_token(session, emu.url)
    assert (await api.request("GET", path)).status == 200


@pytest.mark.asyncio
async def test_rest_api_disabled_is_a_distinct_401(api: Api, emu: SalesforceEmulator) -> None:
    emu.rest_api_disabled = True
    reply = await api.request("GET", api.data_path("limits"))
    assert reply.status == 401
    assert reply.body == [
        {
            "message": "This session is not valid for use with the REST API",
            "errorCode": "INVALID_SESSION_ID",
        }
    ]


# ---- versions and describe --------------------------------------------------------------


@pytest.mark.asyncio
async def test_versions_and_unsupported_version(api: Api) -> None:
    listing = await api.request("GET", "/services/data/")
    assert listing.status == 200
    assert listing.body[0] == {
        "label": "Spring '24",
        "url": "/services/data/v60.0",
        "version": "60.0",
    }
    assert [v["version"] for v in listing.body] == ["60.0", "61.0", "62.0"]
    old = await api.request("GET", api.data_path("limits", version="45.0"))
    assert old.status == 404
    assert old.body == [
        {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
    ]
    nowhere = await api.request("GET", api.data_path("no/such/thing"))
    assert nowhere.status == 404
    assert nowhere.body[0]["errorCode"] == "NOT_FOUND"


@pytest.mark.asyncio
async def test_describe_reports_standard_and_custom_fields(api: Api) -> None:
    reply = await api.request("GET", api.data_path("sobjects/Contact/describe"))
    assert reply.status == 200
    assert reply.body["name"] == "Contact"
    assert reply.body["createable"]
    assert reply.body["updateable"]
    assert reply.body["queryable"]
    fields = {f["name"]: f for f in reply.body["fields"]}
    assert fields["Id"]["type"] == "id"
    assert fields["Email"]["type"] == "email"
    assert fields["Email"]["length"] == 80
    assert fields["Email"]["idLookup"] is True
    assert fields["Email"]["externalId"] is False
    assert fields["LastName"]["nillable"] is False
    assert fields["LastName"]["length"] == 80
    assert fields["LastModifiedDate"]["createable"] is False
    assert fields["LastModifiedDate"]["updateable"] is False
    consent = fields["Newsletter_Consent__c"]
    assert consent["type"] == "boolean"
    assert consent["nillable"] is False
    assert consent["defaultedOnCreate"] is True
    topics = fields["Newsletter_Topics__c"]
    assert topics["type"] == "multipicklist"
    assert topics["restrictedPicklist"] is True
    assert [p["value"] for p in topics["picklistValues"]] == ["product_news", "offers", "events"]
    assert fields["Didomi_User_Id__c"]["externalId"] is True
    for field in reply.body["fields"]:
        assert set(field) >= {
            "name",
            "type",
            "length",
            "nillable",
            "createable",
            "updateable",
            "defaultedOnCreate",
            "externalId",
            "idLookup",
            "unique",
            "picklistValues",
            "restrictedPicklist",
        }

    lead_reply = await api.request("GET", api.data_path("sobjects/Lead/describe"))
    lead_fields = {f["name"]: f for f in lead_reply.body["fields"]}
    status = lead_fields["Status"]
    assert status["type"] == "picklist"
    assert status["defaultedOnCreate"] is True
    assert [p["value"] for p in status["picklistValues"]] == [
        "Open - Not Contacted",
        "Working - Contacted",
        "Closed - Converted",
    ]
    assert lead_fields["Company"]["nillable"] is False
    assert lead_fields["IsConverted"]["updateable"] is False

    unknown = await api.request("GET", api.data_path("sobjects/Opportunityx/describe"))
    assert unknown.status == 404
    assert unknown.body == [
        {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
    ]


# ---- SOQL ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_query_in_list_with_escapes_is_case_insensitive(
    api: Api, emu: SalesforceEmulator
) -> None:
    plain = emu.seed("Contact", {"Email": "Alice@Example.com", "LastName": "A"})
    quoted = emu.seed("Contact", {"Email": "o'brien\\x@example.com", "LastName": "O"})
    accented = emu.seed("Contact", {"Email": "zoë@example.com", "LastName": "Z"})
    emu.seed("Contact", {"Email": "other@example.com", "LastName": "X"})

    soql = (
        "SELECT Id, Email, Newsletter_Consent__c FROM Contact WHERE Email IN "
        "('alice@example.COM', 'o\\'brien\\\\x@example.com', 'zo\\u00eb@example.com', "
        "'nobody@x.com')"
    )
    reply = await api.query(soql)
    assert reply.status == 200, reply.text
    assert reply.body["totalSize"] == 3
    assert reply.body["done"] is True
    assert "nextRecordsUrl" not in reply.body
    assert {r["Id"] for r in reply.body["records"]} == {plain, quoted, accented}
    first = reply.body["records"][0]
    assert first == {
        "attributes": {
            "type": "Contact",
            "url": f"/services/data/v{VERSION}/sobjects/Contact/{plain}",
        },
        "Id": plain,
        "Email": "Alice@Example.com",
        "Newsletter_Consent__c": False,
    }

    single = await api.query("SELECT Id FROM Contact WHERE Email = 'O\\'BRIEN\\\\X@example.com'")
    assert [r["Id"] for r in single.body["records"]] == [quoted]


@pytest.mark.asyncio
async def test_query_boolean_null_and_not_equal_conditions(
    api: Api, emu: SalesforceEmulator
) -> None:
    yes = emu.seed("Contact", {"Email": "y@x.com", "LastName": "Y", "Newsletter_Consent__c": True})
    no = emu.seed("Contact", {"Email": "n@x.com", "LastName": "N", "FirstName": "Nina"})
    reply = await api.query(
        "select Id from CONTACT where newsletter_consent__c = TRUE and FirstName = null"
    )
    assert [r["Id"] for r in reply.body["records"]] == [yes]
    reply = await api.query("SELECT Id FROM Contact WHERE Email != 'y@x.com' LIMIT 5")
    assert [r["Id"] for r in reply.body["records"]] == [no]
    reply = await api.query(f"SELECT Id FROM Contact WHERE Id IN ('{no[:15]}')")
    assert [r["Id"] for r in reply.body["records"]] == [no]


@pytest.mark.parametrize(
    ("soql", "error_code"),
    [
        # an escape SOQL does not define
        ("SELECT Id FROM Contact WHERE Email IN ('a\\x@example.com')", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email = 'a\\u00zz'", "MALFORMED_QUERY"),
        # an unescaped quote turning data into SOQL
        ("SELECT Id FROM Contact WHERE Email IN ('a@x.com') OR Id != null --')", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email IN ('a@x.com' OR '1'='1')", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email = 'unterminated", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email = 'a' extra", "MALFORMED_QUERY"),
        ("SELECT Id, Id FROM Contact", "MALFORMED_QUERY"),
        ("SELECT FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email IN ()", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email = '" + "a" * 4001 + "'", "MALFORMED_QUERY"),
        ("SELECT Id, Shoe_Size__c FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE Newsletter_Consent__c = 'true'", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE Email = true", "INVALID_FIELD"),
        ("SELECT Id FROM Contactx", "INVALID_TYPE"),
    ],
)
@pytest.mark.asyncio
async def test_query_errors(api: Api, soql: str, error_code: str) -> None:
    reply = await api.query(soql)
    assert reply.status == 400
    assert len(reply.body) == 1
    assert reply.body[0]["errorCode"] == error_code
    assert "ERROR at Row:1:Column:" in reply.body[0]["message"]


@pytest.mark.asyncio
async def test_query_bad_escape_message_names_the_sequence(api: Api) -> None:
    reply = await api.query("SELECT Id FROM Contact WHERE Email = 'a\\x'")
    message = reply.body[0]["message"]
    assert "Illegal character sequence '\\x' in string literal" in message
    assert "Column:40" in message


@pytest.mark.asyncio
async def test_literal_of_exactly_4000_characters_is_accepted(api: Api) -> None:
    reply = await api.query("SELECT Id FROM Contact WHERE Email = '" + "a" * 4000 + "'")
    assert reply.status == 200
    assert reply.body["totalSize"] == 0


@pytest.mark.asyncio
async def test_query_pages_follow_next_records_url(api: Api, emu: SalesforceEmulator) -> None:
    ids = [emu.seed("Contact", {"Email": f"p{i}@x.com", "LastName": "P"}) for i in range(8)]
    reply = await api.query("SELECT Id, Email FROM Contact")
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        assert reply.status == 200
        assert reply.body["totalSize"] == 8
        seen += [r["Id"] for r in reply.body["records"]]
        if reply.body["done"]:
            assert "nextRecordsUrl" not in reply.body
            break
        next_url = reply.body["nextRecordsUrl"]
        assert re.fullmatch(rf"/services/data/v{VERSION}/query/01g[0-9A-Za-z]{{15}}-\d+", next_url)
        assert len(reply.body["records"]) == 3
        reply = await api.request("GET", next_url)
    assert pages == 3
    assert seen == ids
    assert emu.stats["query"] == 1
    assert emu.stats["query_more"] == 2

    limited = await api.query("SELECT Id FROM Contact ORDER BY Email DESC LIMIT 3")
    assert limited.body["done"] is True
    assert [r["Id"] for r in limited.body["records"]] == ids[::-1][:3]

    bad = await api.request("GET", api.data_path("query/01gDn0000000000AAA-3"))
    assert bad.status == 400
    assert bad.body[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


# ---- request size -------------------------------------------------------------------------


async def raw_status(host: str, port: int, lines: list[str]) -> tuple[int, bytes]:
    """Send a request head exactly as given (each line + CRLF, then a blank line)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write("".join(f"{line}\r\n" for line in lines).encode() + b"\r\n")
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(response.split(b" ", 2)[1]), response


@pytest.mark.asyncio
async def test_request_head_over_16384_bytes_is_414(api: Api, emu: SalesforceEmulator) -> None:
    url = URL(emu.url)
    assert url.host is not None
    assert url.port is not None
    headers = [
        f"Host: {url.host}:{url.port}",
        f"Authorization: Bearer {api.token}",
        "Connection: close",
    ]
    prefix = f"/services/data/v{VERSION}/query?q=SELECT+Id+FROM+Contact"

    def head(total: int) -> list[str]:
        # Pad the query with "+" (spaces once decoded) to make the head exactly `total` bytes.
        fixed = sum(len(h) + 2 for h in headers) + len(f"GET {prefix} HTTP/1.1") + 2
        return [f"GET {prefix}{'+' * (total - fixed)} HTTP/1.1", *headers]

    status, _ = await raw_status(url.host, url.port, head(16_384))
    assert status == 200
    status, response = await raw_status(url.host, url.port, head(16_385))
    assert status == 414
    assert b"Content-Type: text/html" in response
    assert b"414 URI Too Long" in response
    assert emu.stats["http_414"] == 1


@pytest.mark.asyncio
async def test_long_in_list_over_the_cap_is_414_and_just_under_is_200(
    api: Api, emu: SalesforceEmulator
) -> None:
    emu.seed("Contact", {"Email": "u0@example.com", "LastName": "U"})

    def query_url(n: int) -> URL:
        literals = ",".join(f"'u{i}@example.com'" for i in range(n))
        soql = f"SELECT Id FROM Contact WHERE Email IN ({literals})"
        return URL(f"{emu.url}{api.data_path('query')}").with_query(q=soql)

    n = 1
    while len(str(query_url(n + 1))) < 15_900:
        n += 1
    under = await api.request("GET", "", url=query_url(n))
    assert under.status == 200, under.text
    assert under.body["totalSize"] == 1

    over = await api.request("GET", "", url=query_url(n + 30))
    assert len(str(query_url(n + 30))) > 16_384
    assert over.status == 414
    assert over.headers["Content-Type"].startswith("text/html")
    assert "URI Too Long" in over.text


# ---- collections: create ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_create_returns_results_in_order_with_per_record_errors(
    api: Api, emu: SalesforceEmulator
) -> None:
    records = [
        contact(Email="ok@example.com", LastName="Ok", Newsletter_Topics__c="offers;events"),
        contact(Email="nolast@example.com"),
        contact(Email="long@example.com", LastName="L", FirstName="x" * 41),
        contact(Email="not an email", LastName="Bad"),
        contact(Email="pick@example.com", LastName="P", Newsletter_Frequency__c="hourly"),
        contact(Email="multi@example.com", LastName="M", Newsletter_Topics__c="offers;cats"),
        contact(Email="ro@example.com", LastName="R", CreatedDate="2020-01-01T00:00:00.000+0000"),
        contact(Email="second-ok@example.com", LastName="Ok2", Newsletter_Consent__c=True),
    ]
    reply = await api.collections("POST", records)
    assert reply.status == 200
    results = reply.body
    assert len(results) == 8
    assert results[0]["success"] is True
    assert results[0]["errors"] == []
    assert results[0]["id"].startswith("003")
    assert len(results[0]["id"]) == 18
    assert results[1] == {
        "success": False,
        "errors": [
            {
                "statusCode": "REQUIRED_FIELD_MISSING",
                "message": "Required fields are missing: [LastName]",
                "fields": ["LastName"],
            }
        ],
    }
    assert codes(results[2]) == ["STRING_TOO_LONG"]
    assert results[2]["errors"][0]["fields"] == ["FirstName"]
    assert codes(results[3]) == ["INVALID_EMAIL_ADDRESS"]
    assert codes(results[4]) == ["INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"]
    assert codes(results[5]) == ["INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"]
    assert codes(results[6]) == ["INVALID_FIELD_FOR_INSERT_UPDATE"]
    assert results[6]["errors"][0]["fields"] == ["CreatedDate"]
    assert results[7]["success"] is True
    for failed in results[1:7]:
        assert "id" not in failed

    stored = emu.get("Contact", results[0]["id"])
    assert stored is not None
    assert stored["Newsletter_Consent__c"] is False  # booleans default to false
    assert stored["FirstName"] is None  # unset fields are null
    assert stored["Newsletter_Topics__c"] == "offers;events"
    assert SF_DATETIME.match(stored["CreatedDate"])
    assert stored["LastModifiedDate"] == stored["CreatedDate"]
    assert [r["Email"] for r in emu.records("Contact")] == [
        "ok@example.com",
        "second-ok@example.com",
    ]
    assert emu.stats["records_created"] == 2


@pytest.mark.asyncio
async def test_create_lead_requires_company_and_defaults_status(
    api: Api, emu: SalesforceEmulator
) -> None:
    reply = await api.collections(
        "POST",
        [lead(Email="l1@example.com", LastName="L", Company="Acme"), lead(Email="l2@example.com")],
    )
    ok, missing = reply.body
    assert ok["id"].startswith("00Q")
    assert missing["errors"][0]["fields"] == ["LastName", "Company"]
    stored = emu.get("Lead", ok["id"])
    assert stored is not None
    assert stored["Status"] == "Open - Not Contacted"
    assert stored["IsConverted"] is False


@pytest.mark.asyncio
async def test_all_or_none_rolls_everything_back(api: Api, emu: SalesforceEmulator) -> None:
    reply = await api.collections(
        "POST",
        [contact(Email="a@example.com", LastName="A"), contact(Email="b@example.com")],
        all_or_none=True,
    )
    assert reply.status == 200
    rolled, failed = reply.body
    assert rolled == {
        "success": False,
        "errors": [
            {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the "
                "request was using AllOrNone header",
                "fields": [],
            }
        ],
    }
    assert codes(failed) == ["REQUIRED_FIELD_MISSING"]
    assert emu.records("Contact") == []


@pytest.mark.parametrize(
    ("record", "status", "error_code", "message_part"),
    [
        (
            contact(Email="a@example.com", LastName="A", Shoe_Size__c=42),
            400,
            "INVALID_FIELD",
            "No such column 'Shoe_Size__c' on sobject of type Contact",
        ),
        (
            contact(Email="a@example.com", LastName="A", Newsletter_Consent__c="true"),
            400,
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of boolean from VALUE_STRING value true",
        ),
        (
            contact(Email="a@example.com", LastName=42),
            400,
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of string from VALUE_NUMBER_INT value 42",
        ),
        (
            contact(Email="a@example.com", LastName="A", Newsletter_Topics__c=["offers"]),
            400,
            "JSON_PARSER_ERROR",
            "START_ARRAY",
        ),
        (
            {"attributes": {"type": "Opportunity"}, "Name": "x"},
            400,
            "INVALID_TYPE",
            "Opportunity",
        ),
    ],
)
@pytest.mark.asyncio
async def test_whole_request_errors_write_nothing(
    api: Api,
    emu: SalesforceEmulator,
    record: dict[str, Any],
    status: int,
    error_code: str,
    message_part: str,
) -> None:
    good = contact(Email="good@example.com", LastName="G")
    reply = await api.collections("POST", [good, record])
    assert reply.status == status
    assert reply.body[0]["errorCode"] == error_code
    assert message_part in reply.body[0]["message"]
    assert emu.records("Contact") == []


@pytest.mark.asyncio
async def test_record_count_limits_and_bad_json(api: Api) -> None:
    empty = await api.collections("POST", [])
    assert empty.status == 400
    assert empty.body == [
        {"message": "At least 1 record is required", "errorCode": "REQUIRED_FIELD_MISSING"}
    ]
    too_many = await api.collections("POST", [contact(LastName=f"n{i}") for i in range(201)])
    assert too_many.status == 400
    assert too_many.body[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    async with api.session.post(
        api.base + api.data_path("composite/sobjects"),
        data=b'{"records": [',
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())[0]["errorCode"] == "JSON_PARSER_ERROR"


# ---- collections: update, upsert, delete ----------------------------------------------------


@pytest.mark.asyncio
async def test_update_results_in_order(api: Api, emu: SalesforceEmulator) -> None:
    first = emu.seed("Contact", {"Email": "one@example.com", "LastName": "One"})
    twice = emu.seed("Contact", {"Email": "two@example.com", "LastName": "Two"})
    third = emu.seed("Contact", {"Email": "three@example.com", "LastName": "Three"})
    gone = emu.seed("Contact", {"Email": "gone@example.com", "LastName": "Gone"})
    delete = await api.request("DELETE", api.data_path("composite/sobjects"), params={"ids": gone})
    assert delete.body[0]["success"] is True
    before = emu.get("Contact", first)
    assert before is not None
    await asyncio.sleep(0.002)  # so LastModifiedDate moves on by at least a millisecond

    unknown = "003Dn00000000ZZ"
    reply = await api.collections(
        "PATCH",
        [
            contact(id=first[:15], Newsletter_Consent__c=True, Email="ONE@example.com"),
            contact(Id=twice, FirstName="T"),
            contact(Id=twice, FirstName="U"),
            contact(Id=unknown, FirstName="X"),
            contact(Id="garbage!", FirstName="X"),
            contact(Id=gone, FirstName="X"),
            contact(Id=third, LastName=None),
            contact(FirstName="no id"),
        ],
    )
    assert reply.status == 200
    results = reply.body
    assert results[0] == {"id": first, "success": True, "errors": []}
    assert codes(results[1]) == ["DUPLICATE_VALUE"]
    assert codes(results[2]) == ["DUPLICATE_VALUE"]
    assert codes(results[3]) == ["INVALID_CROSS_REFERENCE_KEY"]
    assert results[3]["errors"][0]["message"] == "invalid cross reference id"
    assert codes(results[4]) == ["MALFORMED_ID"]
    assert codes(results[5]) == ["ENTITY_IS_DELETED"]
    assert codes(results[6]) == ["REQUIRED_FIELD_MISSING"]
    assert codes(results[7]) == ["MISSING_ARGUMENT"]

    after = emu.get("Contact", first)
    assert after is not None
    assert after["Newsletter_Consent__c"] is True
    assert after["Email"] == "ONE@example.com"
    assert after["LastModifiedDate"] > before["LastModifiedDate"]
    assert after["CreatedDate"] == before["CreatedDate"]
    unchanged = emu.get("Contact", twice)
    assert unchanged is not None
    assert unchanged["FirstName"] is None
    assert emu.stats["records_updated"] == 1


@pytest.mark.asyncio
async def test_update_of_non_updateable_field_fails(api: Api, emu: SalesforceEmulator) -> None:
    lead_id = emu.seed("Lead", {"Email": "l@example.com", "LastName": "L", "Company": "C"})
    reply = await api.collections("PATCH", [lead(Id=lead_id, IsConverted=True)])
    assert codes(reply.body[0]) == ["INVALID_FIELD_FOR_INSERT_UPDATE"]
    assert reply.body[0]["errors"][0]["fields"] == ["IsConverted"]


@pytest.mark.asyncio
async def test_upsert_by_external_id(api: Api, emu: SalesforceEmulator) -> None:
    existing = emu.seed(
        "Contact", {"Email": "e@example.com", "LastName": "E", "Didomi_User_Id__c": "user-1"}
    )
    reply = await api.collections(
        "PATCH",
        [
            contact(Didomi_User_Id__c="USER-1", Newsletter_Consent__c=True),
            contact(Didomi_User_Id__c="user-2", Email="new@example.com", LastName="N"),
            contact(Didomi_User_Id__c="user-3", Email="dup1@example.com", LastName="D"),
            contact(Didomi_User_Id__c="user-3", Email="dup2@example.com", LastName="D"),
            contact(Didomi_User_Id__c="user-4", Email="nolast@example.com"),
        ],
        tail="/Contact/Didomi_User_Id__c",
    )
    assert reply.status == 200
    updated, created, dup1, dup2, missing = reply.body
    assert updated == {"id": existing, "success": True, "errors": [], "created": False}
    assert created["created"] is True
    assert created["success"] is True
    assert codes(dup1) == ["DUPLICATE_VALUE"]
    assert codes(dup2) == ["DUPLICATE_VALUE"]
    assert codes(missing) == ["REQUIRED_FIELD_MISSING"]
    record = emu.get("Contact", existing)
    assert record is not None
    assert record["Newsletter_Consent__c"] is True
    assert len(emu.records("Contact")) == 2
    assert emu.stats["upsert"] == 1
    assert emu.stats["records_created"] == 1
    assert emu.stats["records_updated"] == 1

    by_email = await api.collections(
        "PATCH", [contact(Email="e@example.com", LastName="E")], tail="/Contact/Email"
    )
    assert by_email.status == 400
    assert by_email.body[0]["errorCode"] == "INVALID_FIELD"

    by_id = await api.collections(
        "PATCH",
        [contact(Id=existing, FirstName="Eve"), contact(Email="x@example.com", LastName="X")],
        tail="/Contact/Id",
    )
    assert [r["created"] for r in by_id.body] == [False, True]


@pytest.mark.asyncio
async def test_delete_results_in_order(api: Api, emu: SalesforceEmulator) -> None:
    a = emu.seed("Contact", {"Email": "a@example.com", "LastName": "A"})
    b = emu.seed("Lead", {"Email": "b@example.com", "LastName": "B", "Company": "C"})
    missing = "003Dn00000000ZZ"
    reply = await api.request(
        "DELETE",
        api.data_path("composite/sobjects"),
        params={"ids": f"{a},{missing},{b}", "allOrNone": "false"},
    )
    assert reply.status == 200
    assert reply.body[0] == {"id": a, "success": True, "errors": []}
    assert codes(reply.body[1]) == ["INVALID_CROSS_REFERENCE_KEY"]
    assert reply.body[2] == {"id": b, "success": True, "errors": []}
    assert emu.get("Contact", a) is None
    assert emu.get("Lead", b) is None
    again = await api.request("DELETE", api.data_path("composite/sobjects"), params={"ids": a})
    assert codes(again.body[0]) == ["ENTITY_IS_DELETED"]
    assert emu.stats["delete"] == 2


# ---- limits -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_limit_info_increments_and_limit_exceeded(
    api: Api, emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    path = api.data_path("limits")
    first = await api.request("GET", path)
    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/1000"
    assert first.body == {"DailyApiRequests": {"Max": 1000, "Remaining": 999}}
    second = await api.request("GET", path)
    assert second.headers["Sforce-Limit-Info"] == "api-usage=2/1000"
    await fetch_token(session, emu.url)  # token calls do not count
    assert emu.api_usage == (2, 1000)

    emu.set_api_usage(9, limit=10)
    last = await api.request("GET", path)
    assert last.status == 200
    assert last.headers["Sforce-Limit-Info"] == "api-usage=10/10"
    refused = await api.query("SELECT Id FROM Contact")
    assert refused.status == 403
    assert refused.body == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=10/10"
    assert emu.stats["http_403"] == 1
    assert emu.api_usage == (10, 10)


# ---- faults -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_inject_fault_by_kind_and_count(api: Api, emu: SalesforceEmulator) -> None:
    emu.inject_fault("query", 503, "<html><body>Service Unavailable</body></html>", count=2)
    emu.inject_fault(
        "describe",
        500,
        [{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}],
        headers={"Retry-After": "1"},
    )
    # A describe is unaffected by the query faults and vice versa.
    describe = await api.request("GET", api.data_path("sobjects/Contact/describe"))
    assert describe.status == 500
    assert describe.body == [{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}]
    assert describe.headers["Retry-After"] == "1"
    for _ in range(2):
        reply = await api.query("SELECT Id FROM Contact")
        assert reply.status == 503
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "Sforce-Limit-Info" in reply.headers
    assert (await api.query("SELECT Id FROM Contact")).status == 200

    emu.inject_fault(None, 502)
    assert (await api.request("GET", api.data_path("limits"))).status == 502
    assert (await api.request("GET", api.data_path("limits"))).status == 200

    emu.inject_fault("token", 503, "down")
    async with api.session.post(
        f"{emu.url}/services/oauth2/token", data={"grant_type": "client_credentials"}
    ) as resp:
        assert resp.status == 503
        assert await resp.text() == "down"
    assert emu.stats["faults_injected"] == 5
    assert emu.stats["http_5xx"] == 5

    with pytest.raises(EmulatorError):
        emu.inject_fault("quarry", 500)


@pytest.mark.asyncio
async def test_inject_record_error_for_one_email(api: Api, emu: SalesforceEmulator) -> None:
    emu.inject_record_error(
        "create",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Consent cannot be given twice",
        fields=["Newsletter_Consent__c"],
        email="B@example.com",
    )
    reply = await api.collections(
        "POST",
        [
            contact(Email="a@example.com", LastName="A"),
            contact(Email="b@example.com", LastName="B"),
            contact(Email="b@example.com", LastName="B2"),
        ],
    )
    a, b, b2 = reply.body
    assert a["success"] is True
    assert b2["success"] is True
    assert b == {
        "success": False,
        "errors": [
            {
                "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "message": "Consent cannot be given twice",
                "fields": ["Newsletter_Consent__c"],
            }
        ],
    }
    assert len(emu.find_by_email("Contact", "B@EXAMPLE.COM")) == 1

    # For updates the stored email matches too.
    emu.inject_record_error("update", "UNABLE_TO_LOCK_ROW", "locked", email="a@example.com")
    update = await api.collections(
        "PATCH", [contact(Id=a["id"], FirstName="A"), contact(Id=b2["id"], FirstName="B")]
    )
    assert codes(update.body[0]) == ["UNABLE_TO_LOCK_ROW"]
    assert update.body[1]["success"] is True
    assert emu.stats["faults_injected"] == 2


@pytest.mark.asyncio
async def test_random_faults_are_reproducible_with_a_seed(
    api: Api, emu: SalesforceEmulator
) -> None:
    async def statuses() -> list[int]:
        out = []
        for _ in range(12):
            out.append((await api.request("GET", api.data_path("limits"))).status)
        return out

    emu.set_random_faults(http_503_rate=0.5, seed=42)
    first = await statuses()
    emu.set_random_faults(http_503_rate=0.5, seed=42)
    second = await statuses()
    assert first == second
    assert set(first) == {200, 503}

    emu.set_random_faults(lock_rate=1.0, seed=1)
    target = emu.seed("Contact", {"Email": "l@example.com", "LastName": "L"})
    reply = await api.collections("PATCH", [contact(Id=target, FirstName="F")])
    error = reply.body[0]["errors"][0]
    assert error["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert error["message"] == (
        f"unable to obtain exclusive access to this record or 1 records: {target}"
    )
    emu.clear_faults()
    assert (await api.collections("PATCH", [contact(Id=target, FirstName="F")])).body[0]["success"]


@pytest.mark.asyncio
async def test_hang_makes_client_time_out_and_latency_delays(
    api: Api, emu: SalesforceEmulator
) -> None:
    emu.hang_next("limits", seconds=5)
    with pytest.raises(TimeoutError):
        async with api.session.get(
            api.base + api.data_path("limits"),
            headers={"Authorization": f"Bearer {api.token}"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    assert (await api.request("GET", api.data_path("limits"))).status == 200

    emu.set_latency(base_ms=60, jitter_ms=10, seed=3)
    started = time.monotonic()
    await api.request("GET", api.data_path("limits"))
    assert time.monotonic() - started >= 0.06


@pytest.mark.asyncio
async def test_latency_counts_the_emulators_own_work(api: Api, emu: SalesforceEmulator) -> None:
    """As with Salesforce, a write is done inside the latency, not before it starts: the
    record changes while its answer is still on the way; the journal notes the write when
    its answer leaves (what benchmarks measure latency to)."""
    record_id = emu.seed("Contact", {"Email": "late@x.com", "LastName": "Before"})
    emu.journal.enabled = True
    emu.set_latency(base_ms=500)
    sent = time.time()
    body = [{"attributes": {"type": "Contact"}, "id": record_id, "LastName": "Changed"}]
    write = asyncio.create_task(api.collections("PATCH", body))
    try:
        while emu.records("Contact")[0]["LastName"] != "Changed":
            assert not write.done()
            await asyncio.sleep(0.01)
        assert not write.done()
        assert emu.journal.writes == []  # held until the answer leaves
        assert (await write).status == 200
        [entry] = emu.journal.writes
        assert entry.record_id == record_id and entry.at >= sent + 0.5
    finally:
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        emu.set_latency(base_ms=0)
        emu.journal.enabled = False
        emu.journal.clear()


# ---- transport ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gzip_responses_and_request_bodies(api: Api, emu: SalesforceEmulator) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as raw_session:
        async with raw_session.get(
            api.base + api.data_path("sobjects/Contact/describe"),
            headers={"Authorization": f"Bearer {api.token}", "Accept-Encoding": "gzip, deflate"},
        ) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            body = await resp.read()
        assert orjson.loads(gzip.decompress(body))["name"] == "Contact"

        async with raw_session.get(
            api.base + api.data_path("limits"),
            headers={"Authorization": f"Bearer {api.token}", "Accept-Encoding": "identity"},
        ) as resp:
            assert "Content-Encoding" not in resp.headers
            assert orjson.loads(await resp.read())["DailyApiRequests"]["Max"] == 1000

    payload = {"records": [contact(Email="gz@example.com", LastName="Gz")]}
    async with api.session.post(
        api.base + api.data_path("composite/sobjects"),
        data=gzip.compress(orjson.dumps(payload)),
        headers={
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())[0]["success"] is True
    assert emu.find_by_email("Contact", "gz@example.com")


@pytest.mark.asyncio
async def test_stats_count_calls_by_kind(
    api: Api, emu: SalesforceEmulator, session: aiohttp.ClientSession
) -> None:
    emu.reset_stats()
    await api.query("SELECT Id FROM Contact")
    await api.request("GET", api.data_path("sobjects/Lead/describe"))
    created = await api.collections("POST", [contact(Email="s@example.com", LastName="S")])
    new_id = created.body[0]["id"]
    await api.collections("PATCH", [contact(Id=new_id, FirstName="S")])
    await api.collections(
        "PATCH", [contact(Didomi_User_Id__c="s-1", LastName="S")], tail="/Contact/Didomi_User_Id__c"
    )
    await api.request("DELETE", api.data_path("composite/sobjects"), params={"ids": new_id})
    await api.request("GET", api.data_path("limits"))
    await api.request("GET", "/services/data/")
    await api.request("GET", api.data_path("limits"), token="bad")
    await fetch_token(session, emu.url)
    stats = emu.stats
    assert {k: stats[k] for k in ("query", "describe", "create", "update", "upsert", "delete")} == {
        "query": 1,
        "describe": 1,
        "create": 1,
        "update": 1,
        "upsert": 1,
        "delete": 1,
    }
    assert stats["limits"] == 2
    assert stats["versions"] == 1
    assert stats["token"] == 1
    assert stats["api_calls"] == 9
    assert stats["http_401"] == 1
    assert stats["records_created"] == 2
    assert stats["records_updated"] == 1
    emu.reset_stats()
    assert set(emu.stats.values()) == {0}


# ---- Python-side API --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_python_api_and_lifecycle() -> None:
    emu = SalesforceEmulator(custom_fields=custom_fields())
    with pytest.raises(EmulatorError):
        _ = emu.url
    contact_id = emu.seed("Contact", {"Email": "Mixed@Case.com", "LastName": "M"})
    lead_id = emu.seed("Lead", {"Email": "mixed@case.com", "LastName": "M", "Company": "C"})
    assert len(contact_id) == 18
    assert contact_id.startswith("003")
    assert len(lead_id) == 18
    assert lead_id.startswith("00Q")
    assert emu.get("Contact", contact_id[:15]) == emu.get("Contact", contact_id.lower())
    assert [r["Id"] for r in emu.find_by_email("Contact", "MIXED@case.COM")] == [contact_id]
    found = emu.find_by_email("Lead", "mixed@CASE.com")
    assert found[0]["Status"] == "Open - Not Contacted"
    copy = emu.records("Contact")[0]
    copy["Email"] = "changed"
    assert emu.records("Contact")[0]["Email"] == "Mixed@Case.com"
    with pytest.raises(EmulatorError):
        emu.seed("Account", {"Name": "x"})
    with pytest.raises(EmulatorError):
        emu.seed("Contact", {"Shoe_Size__c": 1})
    with pytest.raises(EmulatorError):
        emu.records("Opportunity")

    url = await emu.start(host="127.0.0.1", port=0)
    assert url == emu.url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    with pytest.raises(EmulatorError):
        await emu.start()
    await emu.stop()
    await emu.stop()
