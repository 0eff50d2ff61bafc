"""The emulator over real HTTP: behaviours real orgs add on top of the plain REST API.

Field-name case, Long Text Areas, field errors that name their fields, injected validation
errors, converted Leads, duplicate rules and the token answer's ``instance_url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from consumer.devkit.emulator import EmulatorError, FieldSpec, SalesforceEmulator
from consumer.devkit.emulator.fields import example_custom_fields
from tests.integration.test_emulator import (
    CLIENT_ID,
    CLIENT_SECRET,
    VERSION,
    Api,
    codes,
    contact,
    fetch_token,
    lead,
)

pytestmark = pytest.mark.integration

SYNC_STATE = "Didomi_Sync_State__c"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    """An emulator with the example mapping's fields (as the service's tests use it)."""
    emulator = SalesforceEmulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, custom_fields=example_custom_fields()
    )
    async with emulator:
        yield emulator


@pytest_asyncio.fixture
async def api(emu: SalesforceEmulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, emu.url, await fetch_token(session, emu.url))


# ---- field names ignore case ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_write_bodies_match_field_names_ignoring_case(
    api: Api, emu: SalesforceEmulator
) -> None:
    created = await api.collections(
        "POST",
        [
            {
                "attributes": {"type": "contact"},
                "email": "Case@Example.com",
                "LASTNAME": "Case",
                "newsletter_consent__c": True,
            }
        ],
    )
    assert created.status == 200, created.text
    assert created.body[0]["success"] is True
    new_id = created.body[0]["id"]
    stored = emu.get("Contact", new_id)
    assert stored is not None
    assert stored["Email"] == "Case@Example.com"
    assert stored["LastName"] == "Case"
    assert stored["Newsletter_Consent__c"] is True
    # Stored under the field's own spelling only: no second, lower-case copy.
    assert not {"email", "LASTNAME", "newsletter_consent__c"} & set(stored)

    updated = await api.collections(
        "PATCH", [{"attributes": {"type": "Contact"}, "ID": new_id, "firstname": "Cas"}]
    )
    assert updated.body == [{"id": new_id, "success": True, "errors": []}]
    after = emu.get("Contact", new_id)
    assert after is not None
    assert after["FirstName"] == "Cas"

    upserted = await api.collections(
        "PATCH",
        [contact(DIDOMI_ID__C="case@example.com", lastname="Up", Newsletter_Consent__C=False)],
        tail="/contact/didomi_id__c",
    )
    assert upserted.status == 200, upserted.text
    assert upserted.body[0]["created"] is True
    made = emu.get("Contact", upserted.body[0]["id"])
    assert made is not None
    assert made["Didomi_Id__c"] == "case@example.com"
    assert made["LastName"] == "Up"


@pytest.mark.asyncio
async def test_soql_names_ignore_case_but_results_use_the_fields_spelling(
    api: Api, emu: SalesforceEmulator
) -> None:
    contact_id = emu.seed(
        "Contact",
        {"Email": "Q@Example.com", "LastName": "Q", "Newsletter_Consent__c": True},
    )
    reply = await api.query(
        "select id, email, newsletter_consent__c from contact where EMAIL = 'q@example.COM'"
    )
    assert reply.status == 200, reply.text
    assert reply.body["records"] == [
        {
            "attributes": {
                "type": "Contact",
                "url": f"/services/data/v{VERSION}/sobjects/Contact/{contact_id}",
            },
            "Id": contact_id,
            "Email": "Q@Example.com",
            "Newsletter_Consent__c": True,
        }
    ]
    described = await api.request("GET", api.data_path("sobjects/contact/describe"))
    assert described.body["name"] == "Contact"
    names = {f["name"] for f in described.body["fields"]}
    assert {"Email", "Newsletter_Consent__c", SYNC_STATE} <= names


# ---- Long Text Area -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_long_text_area_is_described_as_salesforce_does(api: Api) -> None:
    for sobject in ("Contact", "Lead"):
        reply = await api.request("GET", api.data_path(f"sobjects/{sobject}/describe"))
        fields = {f["name"]: f for f in reply.body["fields"]}
        state = fields[SYNC_STATE]
        assert state["type"] == "textarea"
        assert state["length"] == 131072
        assert state["extraTypeInfo"] == "plaintextarea"
        assert state["filterable"] is False
        assert state["sortable"] is False
        assert state["nillable"] is True
        assert fields["Email"]["filterable"] is True
        assert fields["Email"]["extraTypeInfo"] is None


@pytest.mark.asyncio
async def test_long_text_area_is_written_and_selected_in_full(
    api: Api, emu: SalesforceEmulator
) -> None:
    full = "s" * 131072
    created = await api.collections(
        "POST",
        [
            contact(Email="lt@example.com", LastName="L", **{SYNC_STATE: full}),
            lead(Email="lt@example.com", LastName="L", Company="C", **{SYNC_STATE: "{}"}),
        ],
    )
    assert [r["success"] for r in created.body] == [True, True]
    reply = await api.query(f"SELECT Id, {SYNC_STATE} FROM Contact WHERE Email = 'lt@example.com'")
    assert reply.status == 200, reply.text
    assert reply.body["records"][0][SYNC_STATE] == full
    leads = await api.query(f"SELECT {SYNC_STATE} FROM Lead")
    assert leads.body["records"][0][SYNC_STATE] == "{}"


@pytest.mark.asyncio
async def test_value_over_the_length_fails_the_record_and_writes_none_of_it(
    api: Api, emu: SalesforceEmulator
) -> None:
    target = emu.seed("Contact", {"Email": "over@example.com", "LastName": "O", SYNC_STATE: "v1"})
    reply = await api.collections(
        "PATCH",
        [contact(Id=target, FirstName="Changed", **{SYNC_STATE: "x" * 131073})],
    )
    assert reply.status == 200
    result = reply.body[0]
    assert result["success"] is False
    assert "id" not in result
    assert codes(result) == ["STRING_TOO_LONG"]
    assert result["errors"][0]["fields"] == [SYNC_STATE]
    assert "(max length=131072)" in result["errors"][0]["message"]
    stored = emu.get("Contact", target)
    assert stored is not None
    assert stored[SYNC_STATE] == "v1"
    assert stored["FirstName"] is None


@pytest.mark.parametrize(
    ("soql", "message"),
    [
        (
            f"SELECT Id FROM Contact WHERE {SYNC_STATE} = 'x'",
            f"field '{SYNC_STATE}' can not be filtered in a query call",
        ),
        (
            "SELECT Id FROM Lead WHERE Email IN ('a@x.com') AND didomi_sync_state__c != null",
            f"field '{SYNC_STATE}' can not be filtered in a query call",
        ),
        (
            f"SELECT Id FROM Contact ORDER BY {SYNC_STATE}",
            f"field '{SYNC_STATE}' can not be sorted in a query call",
        ),
    ],
)
@pytest.mark.asyncio
async def test_long_text_area_cannot_be_filtered_or_sorted(
    api: Api, soql: str, message: str
) -> None:
    reply = await api.query(soql)
    assert reply.status == 400
    assert len(reply.body) == 1
    assert reply.body[0]["errorCode"] == "INVALID_FIELD"
    assert reply.body[0]["message"].endswith(message)
    assert "ERROR at Row:1:Column:" in reply.body[0]["message"]


def test_textarea_length_is_capped_at_131072() -> None:
    SalesforceEmulator(custom_fields={"Contact": [FieldSpec("A__c", "textarea", length=131072)]})
    with pytest.raises(EmulatorError, match="131072"):
        SalesforceEmulator(
            custom_fields={"Contact": [FieldSpec("A__c", "textarea", length=131073)]}
        )


# ---- field errors name their fields ---------------------------------------------------------


@pytest.mark.asyncio
async def test_field_errors_name_the_offending_field(api: Api, emu: SalesforceEmulator) -> None:
    hundred = ";".join(["offers", "product_news"] * 50)
    reply = await api.collections(
        "POST",
        [
            contact(Email="a@example.com", LastName="A", Newsletter_Frequency__c="w" * 41),
            contact(Email="b@example.com", LastName="B", Newsletter_Topics__c="offers;cats"),
            contact(Email="c@example.com", LastName="C", Newsletter_Topics__c=hundred),
            contact(Email="d@example.com", LastName="D", Newsletter_Topics__c=hundred + ";offers"),
            contact(Email="not-an-email", LastName="E"),
        ],
    )
    assert reply.status == 200
    too_long, bad_pick, ok, too_many, bad_email = reply.body
    assert codes(too_long) == ["STRING_TOO_LONG"]
    assert too_long["errors"][0]["fields"] == ["Newsletter_Frequency__c"]
    assert codes(bad_pick) == ["INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"]
    assert bad_pick["errors"][0]["fields"] == ["Newsletter_Topics__c"]
    assert "bad value for restricted picklist field: cats" in bad_pick["errors"][0]["message"]
    assert ok["success"] is True
    assert codes(too_many) == ["TOO_MANY_ENUM_VALUE"]
    assert too_many["errors"][0]["fields"] == ["Newsletter_Topics__c"]
    assert "101" in too_many["errors"][0]["message"]
    assert codes(bad_email) == ["INVALID_EMAIL_ADDRESS"]
    assert bad_email["errors"][0]["fields"] == ["Email"]
    assert [r["Email"] for r in emu.records("Contact")] == ["c@example.com"]


@pytest.mark.asyncio
async def test_injected_validation_error_names_fields_for_one_email_on_any_save(
    api: Api, emu: SalesforceEmulator
) -> None:
    target = emu.seed("Contact", {"Email": "v@example.com", "LastName": "V"})
    emu.inject_record_error(
        None,
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Consent changes need a source",
        count=2,
        fields=["Newsletter_Consent__c"],
        email="V@example.com",
    )
    expected = {
        "success": False,
        "errors": [
            {
                "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "message": "Consent changes need a source",
                "fields": ["Newsletter_Consent__c"],
            }
        ],
    }
    update = await api.collections(
        "PATCH",
        [
            contact(Id=target, Newsletter_Consent__c=True),
            contact(Id=emu.seed("Contact", {"Email": "w@example.com", "LastName": "W"})),
        ],
    )
    assert update.body[0] == expected
    assert update.body[1]["success"] is True
    upsert = await api.collections(
        "PATCH",
        [contact(Didomi_Id__c="v@example.com", Email="v@example.com", LastName="V2")],
        tail="/Contact/Didomi_Id__c",
    )
    assert upsert.body == [expected]
    stored = emu.get("Contact", target)
    assert stored is not None
    assert stored["Newsletter_Consent__c"] is False
    assert len(emu.find_by_email("Contact", "v@example.com")) == 1
    # Both uses are spent: the next save goes through.
    again = await api.collections("PATCH", [contact(Id=target, Newsletter_Consent__c=True)])
    assert again.body[0]["success"] is True
    assert emu.stats["faults_injected"] == 2


# ---- converted Leads ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_converted_lead_stays_in_soql_unless_the_query_excludes_it(
    api: Api, emu: SalesforceEmulator
) -> None:
    converted = emu.seed("Lead", {"Email": "a@example.com", "LastName": "A", "Company": "C"})
    open_lead = emu.seed("Lead", {"Email": "b@example.com", "LastName": "B", "Company": "C"})
    person = emu.seed("Contact", {"Email": "a@example.com", "LastName": "A"})
    assert emu.convert_lead(converted, person) == person

    both = await api.query(
        "SELECT Id, IsConverted, ConvertedContactId, ConvertedAccountId, Status FROM Lead "
        "WHERE Email IN ('A@example.com', 'b@example.com')"
    )
    assert both.status == 200, both.text
    rows = {r["Id"]: r for r in both.body["records"]}
    assert set(rows) == {converted, open_lead}
    assert rows[converted]["IsConverted"] is True
    assert rows[converted]["ConvertedContactId"] == person
    assert rows[converted]["ConvertedAccountId"].startswith("001")
    assert rows[converted]["Status"] == "Closed - Converted"
    assert rows[open_lead]["IsConverted"] is False
    assert rows[open_lead]["ConvertedContactId"] is None

    open_only = await api.query(
        "SELECT Id FROM Lead WHERE Email IN ('a@example.com', 'b@example.com') "
        "AND IsConverted = false"
    )
    assert [r["Id"] for r in open_only.body["records"]] == [open_lead]
    by_contact = await api.query(
        f"select id from lead where isconverted = TRUE and convertedcontactid = '{person[:15]}'"
    )
    assert [r["Id"] for r in by_contact.body["records"]] == [converted]
    # The Contact now belongs to the Account the conversion names.
    stored = emu.get("Contact", person)
    assert stored is not None
    assert stored["AccountId"] == rows[converted]["ConvertedAccountId"]


@pytest.mark.asyncio
async def test_update_or_upsert_of_a_converted_lead_fails_per_record(
    api: Api, emu: SalesforceEmulator
) -> None:
    converted = emu.seed("Lead", {"Email": "c@example.com", "LastName": "C", "Company": "C"})
    emu.convert_lead(converted)
    other = emu.seed("Lead", {"Email": "d@example.com", "LastName": "D", "Company": "D"})
    refused = {
        "success": False,
        "errors": [
            {
                "statusCode": "CANNOT_UPDATE_CONVERTED_LEAD",
                "message": "cannot reference converted lead",
                "fields": [],
            }
        ],
    }
    update = await api.collections(
        "PATCH",
        [
            lead(Id=converted, Newsletter_Consent__c=True),
            lead(Id=other, Newsletter_Consent__c=True),
        ],
    )
    assert update.status == 200
    assert update.body == [refused, {"id": other, "success": True, "errors": []}]

    upsert = await api.collections("PATCH", [lead(Id=converted, FirstName="Cee")], tail="/Lead/Id")
    assert upsert.body == [refused]
    stored = emu.get("Lead", converted)
    assert stored is not None
    assert stored["Newsletter_Consent__c"] is False
    assert stored["FirstName"] is None

    # The conversion fields themselves are not writable through the API.
    forged = await api.collections("PATCH", [lead(Id=other, ConvertedContactId=None)])
    assert codes(forged.body[0]) == ["INVALID_FIELD_FOR_INSERT_UPDATE"]
    assert forged.body[0]["errors"][0]["fields"] == ["ConvertedContactId"]


def test_convert_lead_without_a_contact_makes_one_from_the_lead() -> None:
    emu = SalesforceEmulator(custom_fields=example_custom_fields())
    lead_id = emu.seed(
        "Lead", {"Email": "e@example.com", "FirstName": "Eve", "LastName": "E", "Company": "C"}
    )
    contact_id = emu.convert_lead(lead_id[:15], account_id="001Dn0000000001")
    made = emu.get("Contact", contact_id)
    assert made is not None
    assert (made["Email"], made["FirstName"], made["LastName"]) == ("e@example.com", "Eve", "E")
    converted = emu.get("Lead", lead_id)
    assert converted is not None
    assert converted["IsConverted"] is True
    assert converted["ConvertedContactId"] == contact_id
    assert converted["ConvertedAccountId"] == made["AccountId"]
    assert converted["ConvertedAccountId"].startswith("001Dn0000000001")
    assert isinstance(converted["ConvertedDate"], str)
    assert len(converted["ConvertedDate"]) == 10
    with pytest.raises(EmulatorError, match="already converted"):
        emu.convert_lead(lead_id)
    with pytest.raises(EmulatorError):
        emu.convert_lead("00QDn0000000zzz")
    other = emu.seed("Lead", {"Email": "f@example.com", "LastName": "F", "Company": "C"})
    with pytest.raises(EmulatorError):
        emu.convert_lead(other, "003Dn0000000zzz")
    with pytest.raises(EmulatorError):
        emu.convert_lead(other, account_id=contact_id)


# ---- duplicate rules ------------------------------------------------------------------------


def _duplicate_ids(result: dict[str, Any]) -> list[str]:
    error = result["errors"][0]
    match_results = error["duplicateResult"]["matchResults"]
    return [m["record"]["Id"] for m in match_results[0]["matchRecords"]]


@pytest.mark.asyncio
async def test_alert_rule_fails_a_duplicate_create_unless_allow_save(
    api: Api, emu: SalesforceEmulator
) -> None:
    existing = emu.seed("Contact", {"Email": "dup@example.com", "LastName": "D"})
    rule = emu.add_duplicate_rule("Contact", action="alert", match_field="Email")
    assert rule.name == "Standard_Contact_Duplicate_Rule"

    reply = await api.collections(
        "POST",
        [
            contact(Email="DUP@example.com", LastName="D2"),
            contact(Email="fresh@example.com", LastName="F"),
        ],
    )
    assert reply.status == 200
    duplicate, fresh = reply.body
    assert fresh["success"] is True
    assert duplicate == {
        "success": False,
        "errors": [
            {
                "statusCode": "DUPLICATES_DETECTED",
                "message": "Use one of these records?",
                "fields": [],
                "duplicateResult": {
                    "allowSave": True,
                    "duplicateRule": "Standard_Contact_Duplicate_Rule",
                    "duplicateRuleEntityType": "Contact",
                    "errorMessage": "Use one of these records?",
                    "matchResults": [
                        {
                            "entityType": "Contact",
                            "errors": [],
                            "matchEngine": "ExactMatchEngine",
                            "matchRecords": [
                                {
                                    "additionalInformation": [],
                                    "fieldDiffs": [],
                                    "matchConfidence": 100.0,
                                    "record": {
                                        "attributes": {
                                            "type": "Contact",
                                            "url": f"/services/data/v{VERSION}/sobjects/"
                                            f"Contact/{existing}",
                                        },
                                        "Id": existing,
                                    },
                                }
                            ],
                            "rule": "Contact_Email_Matching_Rule",
                            "size": 1,
                            "success": True,
                        }
                    ],
                },
            }
        ],
    }
    assert len(emu.find_by_email("Contact", "dup@example.com")) == 1

    refused = await api.request(
        "POST",
        api.data_path("composite/sobjects"),
        body={"records": [contact(Email="dup@example.com", LastName="D3")]},
        headers={"Sforce-Duplicate-Rule-Header": "allowSave=false; includeRecordDetails=true"},
    )
    assert codes(refused.body[0]) == ["DUPLICATES_DETECTED"]
    record = refused.body[0]["errors"][0]["duplicateResult"]["matchResults"][0]["matchRecords"][0]
    assert record["record"]["Email"] == "dup@example.com"
    assert record["record"]["LastName"] == "D"

    allowed = await api.request(
        "POST",
        api.data_path("composite/sobjects"),
        body={"records": [contact(Email="dup@example.com", LastName="D4")]},
        headers={"sforce-duplicate-rule-header": " AllowSave = TRUE ;runAsCurrentUser=false"},
    )
    assert allowed.body[0]["success"] is True
    assert len(emu.find_by_email("Contact", "dup@example.com")) == 2


@pytest.mark.asyncio
async def test_block_rule_fails_even_with_allow_save(api: Api, emu: SalesforceEmulator) -> None:
    existing = emu.seed("Lead", {"Email": "blk@example.com", "LastName": "B", "Company": "C"})
    emu.add_duplicate_rule("Lead", action="block", name="No_Lead_Twice", message="Blocked.")
    reply = await api.request(
        "POST",
        api.data_path("composite/sobjects"),
        body={"records": [lead(Email="Blk@Example.com", LastName="B", Company="C")]},
        headers={"Sforce-Duplicate-Rule-Header": "allowSave=true"},
    )
    error = reply.body[0]["errors"][0]
    assert error["statusCode"] == "DUPLICATES_DETECTED"
    assert error["message"] == "Blocked."
    assert error["duplicateResult"]["allowSave"] is False
    assert error["duplicateResult"]["duplicateRule"] == "No_Lead_Twice"
    assert _duplicate_ids(reply.body[0]) == [existing]
    assert len(emu.records("Lead")) == 1


@pytest.mark.asyncio
async def test_duplicate_rules_on_updates_and_upserts(api: Api, emu: SalesforceEmulator) -> None:
    first = emu.seed("Contact", {"Email": "same@example.com", "LastName": "One"})
    second = emu.seed("Contact", {"Email": "same@example.com", "LastName": "Two"})
    other = emu.seed(
        "Contact", {"Email": "other@example.com", "LastName": "O", "Didomi_Id__c": "o@x.com"}
    )
    emu.add_duplicate_rule("Contact", action="block")

    reply = await api.collections(
        "PATCH",
        [
            # Consent only: the rule does not run on an edit that leaves Email alone, even
            # though duplicates already exist.
            contact(Id=first, Newsletter_Consent__c=True),
            # Email written but unchanged: not a change either.
            contact(Id=second, Email="same@example.com", FirstName="T"),
            # Own email in another case: a change, but a record never matches itself.
            contact(Id=other, Email="OTHER@example.com"),
        ],
    )
    assert [r["success"] for r in reply.body] == [True, True, True]

    moved = await api.collections("PATCH", [contact(Id=other, Email="Same@example.com")])
    assert codes(moved.body[0]) == ["DUPLICATES_DETECTED"]
    assert _duplicate_ids(moved.body[0]) == [first, second]
    stored = emu.get("Contact", other)
    assert stored is not None
    assert stored["Email"] == "OTHER@example.com"

    upserts = await api.collections(
        "PATCH",
        [
            contact(Didomi_Id__c="o@x.com", Analytics_Consent__c=True),
            contact(Didomi_Id__c="n@x.com", Email="same@EXAMPLE.com", LastName="N"),
        ],
        tail="/Contact/Didomi_Id__c",
    )
    updated, created = upserts.body
    assert updated == {"id": other, "success": True, "errors": [], "created": False}
    assert codes(created) == ["DUPLICATES_DETECTED"]
    assert len(emu.records("Contact")) == 3


@pytest.mark.asyncio
async def test_records_of_one_request_are_compared_only_with_stored_ones(
    api: Api, emu: SalesforceEmulator
) -> None:
    emu.add_duplicate_rule("Contact", action="block")
    reply = await api.collections(
        "POST",
        [
            contact(Email="twin@example.com", LastName="A"),
            contact(Email="TWIN@example.com", LastName="B"),
        ],
    )
    assert [r["success"] for r in reply.body] == [True, True]
    again = await api.collections("POST", [contact(Email="twin@example.com", LastName="C")])
    assert _duplicate_ids(again.body[0]) == [r["id"] for r in reply.body]
    emu.clear_duplicate_rules()
    cleared = await api.collections("POST", [contact(Email="twin@example.com", LastName="C")])
    assert cleared.body[0]["success"] is True


def test_duplicate_rule_misuse_is_an_emulator_error() -> None:
    emu = SalesforceEmulator(custom_fields=example_custom_fields())
    with pytest.raises(EmulatorError):
        emu.add_duplicate_rule("Contact", action="warn")
    with pytest.raises(EmulatorError):
        emu.add_duplicate_rule("Contact", match_field="Shoe_Size__c")
    with pytest.raises(EmulatorError):
        emu.add_duplicate_rule("Account")
    emu.add_duplicate_rule("Contact", name="R")
    with pytest.raises(EmulatorError):
        emu.add_duplicate_rule("Contact", name="R")
    assert emu.add_duplicate_rule("Contact", match_field="lastname").match_field == "LastName"


# ---- the token answer's instance_url --------------------------------------------------------


async def _token_answer(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    async with session.post(f"{base}/services/oauth2/token", data=form) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
    return answer


@pytest.mark.asyncio
async def test_token_answer_can_name_another_instance(emu: SalesforceEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await _token_answer(session, emu.url))["instance_url"] == emu.url
        emu.set_instance_url("http://evil.example:1234")
        answer = await _token_answer(session, emu.url)
        assert answer["instance_url"] == "http://evil.example:1234"
        assert answer["id"].startswith("http://evil.example:1234/id/00D")
        emu.set_instance_url(None)
        assert (await _token_answer(session, emu.url))["instance_url"] == emu.url

    configured = SalesforceEmulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        instance_url="https://acme.my.salesforce.com/",
    )
    async with configured, aiohttp.ClientSession() as session:
        answer = await _token_answer(session, configured.url)
        assert answer["instance_url"] == "https://acme.my.salesforce.com"


# ---- a field taken away while a client runs -------------------------------------------------


@pytest.mark.asyncio
async def test_a_hidden_field_fails_whole_queries_and_writes_until_shown(
    api: Api, emu: SalesforceEmulator
) -> None:
    # Deleting a field, or removing it from the integration user's field-level security.
    record_id = emu.seed(
        "Contact", {"Email": "h@example.com", "LastName": "H", "Newsletter_Frequency__c": "daily"}
    )
    emu.hide_field("Contact", "newsletter_frequency__c")
    described = await api.request("GET", api.data_path("sobjects/Contact/describe"))
    assert "Newsletter_Frequency__c" not in {f["name"] for f in described.body["fields"]}
    queried = await api.query("SELECT Id, Newsletter_Frequency__c FROM Contact")
    assert (queried.status, queried.body[0]["errorCode"]) == (400, "INVALID_FIELD")
    written = await api.collections(
        "PATCH",
        [
            {"attributes": {"type": "Contact"}, "id": record_id, "LastName": "Other"},
            {"attributes": {"type": "Contact"}, "id": record_id, "Newsletter_Frequency__c": "x"},
        ],
    )
    assert (written.status, written.body[0]["errorCode"]) == (400, "INVALID_FIELD")
    stored = emu.get("Contact", record_id)
    assert stored is not None and stored["LastName"] == "H"  # nothing of the call was written

    emu.show_field("Contact", "Newsletter_Frequency__c")
    back = await api.query(f"SELECT Newsletter_Frequency__c FROM Contact WHERE Id = '{record_id}'")
    assert back.status == 200
    assert back.body["records"][0]["Newsletter_Frequency__c"] == "daily"
