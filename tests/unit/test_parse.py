"""Parse stage: every shared sample and every malformed line gets the right outcome."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from consumer.model.changes import Accepted, Ignored, Rejected
from consumer.model.messages import email_key
from consumer.stages.parse import ParseRules, parse_message

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "samples"
RULES = ParseRules(regulations=("gdpr",), max_message_bytes=1024 * 1024)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def malformed_lines() -> list[bytes]:
    """The message values of malformed.txt (the prose lines around them are not messages)."""
    lines = (SAMPLES / "malformed.txt").read_bytes().splitlines()
    return [line for line in lines if line[:1] in (b"{", b"[") or line == b"null"]


def test_fixture_copy_matches_shared_samples() -> None:
    if not SHARED.is_dir():
        pytest.skip("shared samples are not beside this checkout")
    for path in SHARED.iterdir():
        assert (SAMPLES / path.name).read_bytes() == path.read_bytes(), path.name


def test_event_created_is_accepted_as_a_partial_change() -> None:
    result = parse_message(sample("event.created.json"), RULES)
    assert isinstance(result, Accepted)
    change = result.change
    assert change.event_id == "0f2a5b0e-6f0b-4e3f-9c61-1c0f9a7b2d11"
    assert change.event_type == "event.created"
    assert change.organization_user_id == "Jane.Doe@example.com"
    assert change.email_key == "jane.doe@example.com"
    assert change.event_time == datetime(2026, 11, 20, 9, 14, 3, 512000, tzinfo=UTC)
    assert change.full_state is False
    assert [p["id"] for p in change.purposes] == ["newsletter", "analytics"]
    values = change.purposes[0].get("values")
    assert values is not None
    assert values["topics"].get("value") == "product_news,offers"


def test_user_updated_applies_new_entity_with_source_id() -> None:
    result = parse_message(sample("user.updated.json"), RULES)
    assert isinstance(result, Accepted)
    change = result.change
    assert change.event_id == "a3c9e2f4-1d2b-4c5e-8f90-123456789abc"
    assert change.full_state is True
    assert change.event_time == datetime(2026, 11, 21, 17, 2, 44, tzinfo=UTC)
    values = change.purposes[0].get("values")
    assert values is not None
    assert values["frequency"].get("value") == "monthly"  # new_entity, not old_entity


def test_pending_approval_is_ignored_with_reason() -> None:
    result = parse_message(sample("event.pending_approval.json"), RULES)
    assert isinstance(result, Ignored)
    assert "pending_approval" in result.reason
    assert result.organization_user_id == "max@example.org"


def test_unconfigured_regulation_is_ignored_and_configured_one_accepted() -> None:
    result = parse_message(sample("event.cpra.json"), RULES)
    assert isinstance(result, Ignored)
    assert "cpra" in result.reason
    both = ParseRules(regulations=("gdpr", "cpra"))
    assert isinstance(parse_message(sample("event.cpra.json"), both), Accepted)


def test_user_deleted_is_ignored_by_default() -> None:
    result = parse_message(sample("user.deleted.json"), RULES)
    assert isinstance(result, Ignored)
    assert result.event_type == "user.deleted"
    assert "deleted" in result.reason


WITHDRAW = ParseRules(
    regulations=("gdpr",), on_user_deleted="withdraw", on_event_deleted="withdraw"
)


def deleted(name: str) -> bytes:
    """The event of sample ``name``, as the ``event.deleted`` Didomi sends for it."""
    doc = orjson.loads(sample(name))
    return orjson.dumps({"type": "event.deleted", "parameters": doc["parameters"]})


def test_user_deleted_with_withdraw_takes_every_mapped_field_to_no_consent() -> None:
    result = parse_message(sample("user.deleted.json"), WITHDRAW)
    assert isinstance(result, Accepted)
    change = result.change
    assert change.withdraw_all is True
    assert change.event_type == "user.deleted"
    assert change.email_key == "jane.doe@example.com"
    # Stamped with the deletion (the user's updated_at): later choices still win.
    assert change.event_time == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert change.mapped().withdraw_all is True  # survives the backlog's slimming
    cpra_only = ParseRules(regulations=("cpra",), on_user_deleted="withdraw")
    ignored = parse_message(sample("user.deleted.json"), cpra_only)
    assert isinstance(ignored, Ignored) and "gdpr" in ignored.reason


def test_a_deleted_user_without_updated_at_is_dated_by_its_kafka_record() -> None:
    doc = orjson.loads(sample("user.deleted.json"))
    del doc["parameters"]["entity"]["updated_at"]
    at = datetime(2026, 11, 26, 8, 30, 1, 250000, tzinfo=UTC)
    result = parse_message(orjson.dumps(doc), WITHDRAW, int(at.timestamp() * 1000))
    assert isinstance(result, Accepted)
    assert result.change.event_time == at  # not created_at, which every choice would beat


def test_event_deleted_with_withdraw_undoes_only_what_the_event_granted() -> None:
    assert isinstance(parse_message(deleted("event.created.json"), RULES), Ignored)
    result = parse_message(deleted("event.created.json"), WITHDRAW)
    assert isinstance(result, Accepted)
    change = result.change
    assert change.event_type == "event.deleted"
    assert change.withdraw_all is False
    assert change.event_time == datetime(2026, 11, 20, 9, 14, 3, 512000, tzinfo=UTC)
    # newsletter was granted with two preferences: withdrawn and cleared; analytics was a
    # withdrawal already: undoing it would grant, so it is left out.
    assert change.purposes == (
        {
            "id": "newsletter",
            "enabled": False,
            "values": {"topics": {"value": ""}, "frequency": {"value": ""}},
        },
    )


def test_event_deleted_with_withdraw_ignores_what_was_never_applied() -> None:
    pending = parse_message(deleted("event.pending_approval.json"), WITHDRAW)
    assert isinstance(pending, Ignored) and "pending_approval" in pending.reason
    # One whose last version grants nothing is accepted all the same, withdrawing nothing of
    # its own: an earlier version may have granted what a record still holds under its id.
    doc = orjson.loads(sample("event.created.json"))
    doc["type"] = "event.deleted"
    doc["parameters"]["entity"]["consents"]["purposes"] = [
        {"id": "newsletter", "enabled": False, "values": {"topics": {"value": ""}}}
    ]
    nothing = parse_message(orjson.dumps(doc), WITHDRAW)
    assert isinstance(nothing, Accepted) and nothing.change.purposes == ()


MALFORMED_EXPECTED = [
    ("INVALID_JSON", "not valid JSON"),
    ("MISSING_ORGANIZATION_USER_ID", "organization_user_id: Field required"),
    ("SCHEMA_VALIDATION", "organization_user_id: Input should be a valid string"),
    ("UNKNOWN_EVENT_TYPE", "consent.given"),
    ("SCHEMA_VALIDATION", "created_at: Field required"),
    ("NOT_AN_OBJECT", "an array"),
    ("NOT_AN_OBJECT", "null"),
]


def test_every_malformed_line_is_rejected_with_a_specific_reason() -> None:
    lines = malformed_lines()
    assert len(lines) == len(MALFORMED_EXPECTED)
    for line, (error_class, fragment) in zip(lines, MALFORMED_EXPECTED, strict=True):
        result = parse_message(line, RULES)
        assert isinstance(result, Rejected), line
        assert result.error_class == error_class, (line, result)
        assert fragment in result.reason, (line, result.reason)


def test_wrong_boolean_type_is_named_in_the_reason() -> None:
    result = parse_message(malformed_lines()[2], RULES)
    assert isinstance(result, Rejected)
    assert "consents.purposes.0.enabled: Input should be a valid boolean" in result.reason


def test_injection_shaped_email_is_rejected_even_with_a_timestamp() -> None:
    doc = orjson.loads(malformed_lines()[4])
    doc["parameters"]["entity"]["created_at"] = "2026-11-22T10:00:00Z"
    result = parse_message(orjson.dumps(doc), RULES)
    assert isinstance(result, Rejected)
    assert result.error_class == "INVALID_EMAIL"


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        (b"", "EMPTY_MESSAGE"),
        (None, "EMPTY_MESSAGE"),
        (b"\xff\xfe\x00{", "INVALID_UTF8"),
        (b'{"type": "event.created", "x": "\xc3\x28"}', "INVALID_UTF8"),
        (b"x" * (5 * 1024 * 1024), "MESSAGE_TOO_LARGE"),
        (b'"just a string"', "NOT_AN_OBJECT"),
        (b"42", "NOT_AN_OBJECT"),
        (b'{"parameters": {}}', "MISSING_TYPE"),
        (b'{"type": 7}', "MISSING_TYPE"),
        (b'{"type": "event.created"}', "SCHEMA_VALIDATION"),
        (b'{"type": "event.created", "parameters": []}', "SCHEMA_VALIDATION"),
    ],
)
def test_bad_values_are_rejected(value: bytes | None, error_class: str) -> None:
    result = parse_message(value, RULES)
    assert isinstance(result, Rejected)
    assert result.error_class == error_class
    assert result.reason


def _event(org_user_id: object, **entity: object) -> bytes:
    base: dict[str, object] = {
        "id": "e1",
        "created_at": "2026-11-22T10:00:00Z",
        "status": "confirmed",
        "user": {"organization_user_id": org_user_id},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}]},
    }
    base.update(entity)
    return orjson.dumps({"type": "event.created", "parameters": {"entity": base}})


@pytest.mark.parametrize(
    "email",
    ["o'brien@example.com", "back\\slash@example.com", "Zoë@exämple.de", "a+tag@x.io"],
)
def test_unusual_but_real_emails_are_accepted(email: str) -> None:
    result = parse_message(_event(email), RULES)
    assert isinstance(result, Accepted)
    assert result.change.email_key == email.lower()


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "two@@x.com", "a b@x.com", "x@nodot", "a@x\n.com", "x" * 75 + "@x.com"],
)
def test_non_emails_are_rejected(email: str) -> None:
    result = parse_message(_event(email), RULES)
    assert isinstance(result, Rejected)
    assert result.error_class == "INVALID_EMAIL"


def test_unknown_fields_from_didomi_are_tolerated() -> None:
    result = parse_message(_event("a@x.com", brand_new_field={"x": 1}), RULES)
    assert isinstance(result, Accepted)


def test_email_key_trims_and_lowercases() -> None:
    assert email_key("  Jane.Doe@Example.COM ") == "jane.doe@example.com"


def _created(when: object, **extra: object) -> bytes:
    entity = {
        "id": "ev-1",
        "created_at": when,
        "user": {"organization_user_id": "jane@x.com"},
        "consents": {"purposes": [{"id": "newsletter", "enabled": False}]},
        **extra,
    }
    return orjson.dumps({"type": "event.created", "parameters": {"entity": entity}})


@pytest.mark.parametrize("when", [1709280000, "1709280000", 1709280000.5, "2026-11-20", True])
def test_timestamps_are_iso_8601_strings_only(when: object) -> None:
    result = parse_message(_created(when), RULES)
    assert isinstance(result, Rejected)
    assert result.error_class == "SCHEMA_VALIDATION"
    assert "created_at" in result.reason


def test_event_times_are_kept_to_the_millisecond() -> None:
    result = parse_message(_created("2026-11-20T09:14:03.512999Z"), RULES)
    assert isinstance(result, Accepted)
    assert result.change.event_time == datetime(2026, 11, 20, 9, 14, 3, 512000, tzinfo=UTC)


def test_an_event_dated_after_its_record_timestamp_plus_the_skew_is_rejected() -> None:
    record_ms = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp() * 1000)
    rules = ParseRules(max_future_skew_seconds=300)
    near = parse_message(_created("2026-11-20T09:05:00Z"), rules, record_ms)
    assert isinstance(near, Accepted)  # 300 s ahead: a clock a little fast is fine
    far = parse_message(_created("2026-11-20T09:05:00.001Z"), rules, record_ms)
    assert isinstance(far, Rejected)
    assert far.error_class == "EVENT_TIME_IN_FUTURE"
    assert far.event_id == "ev-1"
    assert far.organization_user_id == "jane@x.com"
    # Without a record timestamp (or a broker that gives -1) there is nothing to judge by.
    assert isinstance(parse_message(_created("2206-01-01T00:00:00Z"), rules, None), Accepted)
    assert isinstance(parse_message(_created("2206-01-01T00:00:00Z"), rules, -1), Accepted)
    # Old events (a backlog, a replay) are never refused for their age.
    assert isinstance(parse_message(_created("2001-01-01T00:00:00Z"), rules, record_ms), Accepted)


def _user_updated(old: object) -> bytes:
    def user(enabled: bool) -> dict[str, object]:
        return {
            "id": "u-1",
            "organization_user_id": "Jane@x.com",
            "created_at": "2026-10-01T00:00:00Z",
            "updated_at": "2026-11-20T09:00:00Z",
            "consents": {"purposes": [{"id": "newsletter", "enabled": enabled}]},
        }

    params: dict[str, object] = {"new_entity": user(True)}
    if old == "user":
        params["old_entity"] = user(False)
    elif old is not None:
        params["old_entity"] = old
    return orjson.dumps({"type": "user.updated", "parameters": params})


def test_user_updated_carries_the_old_state_when_it_is_readable() -> None:
    result = parse_message(_user_updated("user"), RULES)
    assert isinstance(result, Accepted)
    previous = result.change.previous_purposes
    assert previous is not None and previous[0].get("enabled") is False
    unreadable_entities: list[object] = [
        None,
        {"organization_user_id": "jane@x.com", "consents": {"purposes": "nope"}},
        {"organization_user_id": 5},
        {"organization_user_id": "someone.else@x.com", "consents": {"purposes": []}},
    ]
    for unreadable in unreadable_entities:
        result = parse_message(_user_updated(unreadable), RULES)
        assert isinstance(result, Accepted)  # never rejected for its old entity
        assert result.change.previous_purposes is None  # the whole new state applies


def test_user_entities_are_applied_only_when_gdpr_is_synced() -> None:
    result = parse_message(_user_updated("user"), ParseRules(regulations=("cpra",)))
    assert isinstance(result, Ignored)
    assert "gdpr" in result.reason


@pytest.mark.parametrize("when", ["1969-12-31T23:59:59.999Z", "2286-11-21T00:00:00Z"])
def test_an_event_time_the_sync_state_cannot_hold_is_rejected(when: str) -> None:
    # The state sizes 13 digits of milliseconds per field; no consent choice is that old or
    # that far ahead, so such a time is a producer's error, not a choice to order.
    doc = orjson.loads(sample("event.created.json"))
    doc["parameters"]["entity"]["created_at"] = doc["parameters"]["entity"]["updated_at"] = when
    result = parse_message(orjson.dumps(doc), RULES)
    assert isinstance(result, Rejected), result
    assert result.error_class == "EVENT_TIME_OUT_OF_RANGE"
    assert result.event_id == "0f2a5b0e-6f0b-4e3f-9c61-1c0f9a7b2d11"


# --- malformed parts of purposes: left out, not a reason to reject the event's other choices

MAPPED = ParseRules(
    mapped_purposes=frozenset({"newsletter", "analytics"}),
    mapped_preferences=frozenset({"topics", "frequency"}),
)


def with_purposes(*purposes: object, user: object = "jane@example.com") -> bytes:
    entity = {
        "id": "e1",
        "created_at": "2026-11-20T09:14:03.512Z",
        "user": {"organization_user_id": user},
        "consents": {"purposes": list(purposes)},
    }
    return orjson.dumps({"type": "event.created", "parameters": {"entity": entity}})


WITHDRAWAL = {"id": "newsletter", "enabled": False}


def test_a_malformed_purpose_no_target_maps_is_left_out_silently() -> None:
    value = with_purposes(
        WITHDRAWAL, {"id": "cookies", "enabled": None, "values": {"vendors": {"value": None}}}
    )
    result = parse_message(value, MAPPED)
    assert isinstance(result, Accepted), result
    assert result.change.malformed is None
    purposes = result.change.purposes
    assert [p["id"] for p in purposes] == ["newsletter", "cookies"]
    assert purposes[0].get("enabled") is False
    assert purposes[1].get("values") == {}


def test_a_malformed_mapped_preference_beside_a_withdrawal_is_left_out_and_said() -> None:
    bad = {"id": "newsletter", "enabled": False, "values": {"topics": {"value": 42}}}
    result = parse_message(with_purposes(bad, {"id": "analytics", "enabled": "no"}), MAPPED)
    assert isinstance(result, Accepted), result
    (newsletter, analytics) = result.change.purposes
    assert newsletter.get("enabled") is False and newsletter.get("values") == {}
    assert "enabled" not in analytics
    assert result.change.malformed is not None
    assert "purposes.0.values.topics.value" in result.change.malformed
    assert "purposes.1.enabled" in result.change.malformed


def test_a_purpose_without_a_readable_id_is_left_out_whole() -> None:
    result = parse_message(with_purposes(WITHDRAWAL, {"enabled": True}, "junk"), MAPPED)
    assert isinstance(result, Accepted), result
    assert [p["id"] for p in result.change.purposes] == ["newsletter"]
    assert result.change.malformed is not None  # its id unknown: it may be mapped


def test_without_the_mapping_every_malformed_part_is_said() -> None:
    value = with_purposes(WITHDRAWAL, {"id": "cookies", "enabled": "yes"})
    result = parse_message(value, ParseRules())
    assert isinstance(result, Accepted), result
    assert result.change.malformed is not None and "purposes.1.enabled" in result.change.malformed


def test_malformed_purposes_beside_another_error_still_reject() -> None:
    value = with_purposes(WITHDRAWAL, {"id": "cookies", "enabled": "yes"}, user=42)
    result = parse_message(value, MAPPED)
    assert isinstance(result, Rejected), result
    assert "organization_user_id" in result.reason


@pytest.mark.parametrize("kind", ["event", "user"])
@pytest.mark.parametrize("old", ["", [], 0], ids=["string", "list", "number"])
def test_an_update_with_an_old_entity_that_is_no_object_applies_the_new_one(
    old: object, kind: str
) -> None:
    # Review finding: typed as an object, such an old_entity rejected the whole update.
    user = {"organization_user_id": "jane@example.com"}
    new: dict[str, object] = {
        "id": "e1",
        "created_at": "2026-11-20T09:14:03.512Z",
        "consents": {"purposes": [WITHDRAWAL]},
    }
    new.update({"user": user} if kind == "event" else user)
    params = {"old_entity": old, "new_entity": new}
    result = parse_message(orjson.dumps({"type": f"{kind}.updated", "parameters": params}), MAPPED)
    assert isinstance(result, Accepted), result
    assert result.change.previous_purposes is None


def test_a_values_that_is_no_object_is_left_out_not_the_withdrawal_beside_it() -> None:
    bad = {"id": "newsletter", "enabled": False, "values": "topics"}
    result = parse_message(with_purposes(bad), MAPPED)
    assert isinstance(result, Accepted), result
    (newsletter,) = result.change.purposes
    assert newsletter.get("enabled") is False and "values" not in newsletter
    assert result.change.malformed is not None and "purposes.0.values" in result.change.malformed


def test_an_old_entity_is_read_without_its_malformed_parts() -> None:
    cookies = {"id": "cookies", "values": {"vendors": {"value": None}}}
    user = {
        "id": "u",
        "organization_user_id": "jane@example.com",
        "created_at": "2026-11-20T09:14:03.512Z",
    }
    old = {**user, "consents": {"purposes": [{"id": "newsletter", "enabled": True}, cookies]}}
    new = {**user, "consents": {"purposes": [{"id": "newsletter", "enabled": True}, cookies]}}
    params = {"old_entity": old, "new_entity": new}
    result = parse_message(orjson.dumps({"type": "user.updated", "parameters": params}), MAPPED)
    assert isinstance(result, Accepted), result
    previous = result.change.previous_purposes
    assert previous is not None
    assert [p["id"] for p in previous] == ["newsletter", "cookies"]


def test_a_deletion_is_never_dated_before_the_event_it_deletes() -> None:
    entity = {
        "id": "e1",
        "created_at": "2026-11-20T09:14:03.512Z",
        "updated_at": "2026-11-20T09:00:00.000Z",  # before its creation: bad data
        "user": {"organization_user_id": "jane@example.com"},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}]},
    }
    rules = ParseRules(on_event_deleted="withdraw")
    value = orjson.dumps({"type": "event.deleted", "parameters": {"entity": entity}})
    result = parse_message(value, rules)
    assert isinstance(result, Accepted), result
    assert result.change.event_time == datetime(2026, 11, 20, 9, 14, 3, 512000, tzinfo=UTC)


def test_an_unmapped_purposes_values_that_is_no_object_is_left_out_silently() -> None:
    result = parse_message(
        with_purposes(WITHDRAWAL, {"id": "cookies", "values": "vendors"}), MAPPED
    )
    assert isinstance(result, Accepted), result
    assert result.change.malformed is None, result.change.malformed
