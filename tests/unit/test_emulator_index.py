"""The emulator's lookup index answers exactly as a scan of every record would."""

from __future__ import annotations

from consumer.devkit.emulator.fields import example_custom_fields
from consumer.devkit.emulator.state import EmulatorState


def _state() -> EmulatorState:
    return EmulatorState(
        client_id="i",
        client_secret="s",
        api_versions=("62.0",),
        custom_fields=example_custom_fields(),
        api_limit=1_000_000,
        page_size=2000,
    )


def _emails(state: EmulatorState, where: str) -> list[str]:
    page = state.query(f"SELECT Id, Email FROM Contact WHERE {where}", "62.0")
    return [row["Email"] for row in page["records"]]


def test_equality_filters_follow_every_change_in_creation_order() -> None:
    state = _state()
    b = state.seed("Contact", {"Email": "b@example.com", "LastName": "B"})
    state.seed("Contact", {"Email": "A@example.com", "LastName": "A"})
    # The first query builds the index; every later change must keep it right.
    assert _emails(state, "Email IN ('a@example.com', 'b@example.com')") == [
        "b@example.com",
        "A@example.com",
    ]
    state.update({"records": [{"attributes": {"type": "Contact"}, "id": b, "Email": "c@x.org"}]})
    assert _emails(state, "Email IN ('a@example.com', 'b@example.com')") == ["A@example.com"]
    assert _emails(state, "Email = 'C@X.ORG'") == ["c@x.org"]
    created = state.create(
        {
            "records": [
                {"attributes": {"type": "Contact"}, "Email": "b@example.com", "LastName": "N"}
            ]
        }
    )
    assert created[0]["success"] is True
    assert _emails(state, "Email = 'b@example.com'") == ["b@example.com"]
    state.delete([created[0]["id"]], all_or_none=False)
    assert _emails(state, "Email = 'b@example.com'") == []
    # Negated and non-text filters still scan, and agree.
    assert _emails(state, "Email != 'c@x.org'") == ["A@example.com"]


def test_upserts_find_external_ids_through_the_index_after_changes() -> None:
    state = _state()
    body = {"records": [{"attributes": {"type": "Contact"}, "Didomi_Id__c": "P@example.com"}]}
    first = state.upsert(
        "Contact", "Didomi_Id__c", {**body, "records": [{**body["records"][0], "LastName": "P"}]}
    )
    assert first[0]["created"] is True
    again = state.upsert(
        "Contact",
        "Didomi_Id__c",
        {"records": [{"attributes": {"type": "Contact"}, "Didomi_Id__c": "p@EXAMPLE.com"}]},
    )
    assert again[0] == {**first[0], "created": False}
    state.update(
        {
            "records": [
                {"attributes": {"type": "Contact"}, "id": first[0]["id"], "Didomi_Id__c": "q@x.org"}
            ]
        }
    )
    moved = state.upsert(
        "Contact",
        "Didomi_Id__c",
        {"records": [{"attributes": {"type": "Contact"}, "Didomi_Id__c": "q@x.org"}]},
    )
    assert moved[0]["id"] == first[0]["id"]
    assert moved[0]["created"] is False


def test_lead_conversion_is_seen_by_filters_on_the_fields_it_sets() -> None:
    state = _state()
    lead = state.seed("Lead", {"Email": "l@example.com", "LastName": "L", "Company": "C"})
    query = "SELECT Id, Status FROM Lead WHERE Status = 'Closed - Converted'"
    assert state.query(query, "62.0")["totalSize"] == 0
    state.convert_lead(lead)
    assert state.query(query, "62.0")["totalSize"] == 1
