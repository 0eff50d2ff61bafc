"""The emulator over real HTTP: behaviours real orgs add on top of the plain REST API.

Field-name case, Long Text Areas, field errors that name their fields, injected validation
errors, converted Leads, duplicate rules and the token answer's ``instance_url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

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
