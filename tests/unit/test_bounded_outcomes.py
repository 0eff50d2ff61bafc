"""Outcomes, their keys and dead-letter headers stay small whatever the input holds.

Input-derived text (ids, event types, regulations, reasons, Salesforce messages that may repeat
the input) is clipped with a visible marker; values of ordinary size are left exactly as sent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.model.changes import Accepted, ParseResult, PersonResult, Sourced
from consumer.model.messages import DLQ_HEADER_PREFIX, InputMessage
from consumer.model.outcomes import (
    MAX_CODE_CHARS,
    MAX_ID_CHARS,
    MAX_KEY_BYTES,
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    Outcome,
    SalesforceErrorInfo,
    clip,
    clip_bytes,
)
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from consumer.stages.parse import ParseRules, parse_message
from consumer.stages.report import DeadLetterOut, Publication, assemble
from tests.unit.helpers import change, example_plans, purpose

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RULES = ParseRules(regulations=("gdpr",), max_message_bytes=8 * 1024 * 1024)

#: Input-derived characters an outcome without targets can hold: a reason, two ids, an event
#: type and an error class. JSON needs at most 6 bytes for a character (``\u001f``); the rest
#: of an outcome (status, source, times) is well under 512 bytes.
OUTCOME_BOUND = 6 * (MAX_REASON_CHARS + 2 * MAX_ID_CHARS + 2 * MAX_CODE_CHARS) + 512
#: The x-dlq-* headers: the clipped reason, error class and event id in UTF-8 (4 bytes a
#: character at most), plus topic, partition, offset and times.
HEADERS_BOUND = 4 * (MAX_REASON_CHARS + MAX_CODE_CHARS + MAX_ID_CHARS) + 512

MARKER = re.compile(r"…\[\+(\d+) chars\]$")

# Any text JSON can carry: control characters, quotes, astral characters (no lone surrogates,
# which are not valid UTF-8 and so never come out of a parsed message).
any_text = st.text(st.characters(codec="utf-8"), max_size=40)
huge_text = st.builds(lambda piece, times: (piece or "x") * times, any_text, st.integers(1, 30_000))


def outcome_bytes(outcome: Outcome) -> bytes:
    """The outcome as the service publishes it."""
    return orjson.dumps(outcome.model_dump(mode="json", exclude_none=True))


def dlq_header_bytes(letter: DeadLetterOut) -> int:
    return sum(len(k) + len(v) for k, v in letter.info.headers() if k.startswith(DLQ_HEADER_PREFIX))


def report(
    value: bytes, key: bytes | None = b"k"
) -> tuple[ParseResult, Publication, list[DeadLetterOut]]:
    """Parse one message value and report it (no Salesforce write: for rejected and ignored)."""
    parsed = parse_message(value, RULES)
    assert not isinstance(parsed, Accepted), parsed
    message = InputMessage("in", 0, 7, key, value)
    (publication,), dead = assemble([message], [parsed], {}, {}, example_plans(), NOW)
    return parsed, publication, dead


def event(**entity: Any) -> bytes:
    base: dict[str, Any] = {
        "id": "0f2a5b0e-6f0b-4e3f-9c61-1c0f9a7b2d11",
        "created_at": "2026-11-22T10:00:00Z",
        "user": {"organization_user_id": "Jane.Doe@example.com"},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}]},
    }
    base.update(entity)
    return orjson.dumps({"type": "event.created", "parameters": {"entity": base}})


def assert_bounded(publication: Publication, dead: list[DeadLetterOut]) -> None:
    assert len(outcome_bytes(publication.outcome)) <= OUTCOME_BOUND
    assert publication.key is None or len(publication.key) <= MAX_KEY_BYTES
    for letter in dead:
        assert dlq_header_bytes(letter) <= HEADERS_BOUND


# --- clip -----------------------------------------------------------------------------------


def test_clip_leaves_text_within_the_limit_alone() -> None:
    assert clip("", 10) == ""
    assert clip("jane@example.com", 16) == "jane@example.com"
    assert clip_bytes(b"key", 3) == b"key"


def test_clip_keeps_the_start_and_says_how_much_was_cut() -> None:
    clipped = clip("a" * 600_000, MAX_ID_CHARS)
    assert len(clipped) <= MAX_ID_CHARS
    kept = clipped.split("…")[0]
    assert kept == "a" * len(kept)
    match = MARKER.search(clipped)
    assert match is not None
    assert len(kept) + int(match.group(1)) == 600_000
    assert clip_bytes(b"\x00" * 10_000, 100) == b"\x00" * 83 + b"...[+9917 bytes]"


@settings(max_examples=300, deadline=None)
@given(text=any_text | huge_text, limit=st.integers(20, 2_000))
def test_clip_is_bounded_faithful_and_idempotent(text: str, limit: int) -> None:
    clipped = clip(text, limit)
    assert len(clipped) <= limit
    assert clip(clipped, limit) == clipped
    if len(text) <= limit:
        assert clipped == text
    else:
        match = MARKER.search(clipped)
        assert match is not None
        kept = clipped[: match.start()]
        assert text.startswith(kept)
        assert len(kept) + int(match.group(1)) == len(text)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3_000), limit=st.integers(24, 1_000))
def test_clip_bytes_is_bounded(data: bytes, limit: int) -> None:
    clipped = clip_bytes(data, limit)
    assert len(clipped) <= limit
    assert (clipped == data) is (len(data) <= limit)
    assert data.startswith(clipped.split(b"...[+")[0])


# --- through the parse and report stages ----------------------------------------------------

HUGE = "x" * 600_000


@pytest.mark.parametrize(
    ("value", "status"),
    [
        # The report's example: a 600 KB organization_user_id made a 1.2 MB outcome.
        (event(user={"organization_user_id": HUGE + "@example.com"}), "rejected"),
        (event(status="pending_approval", user={"organization_user_id": HUGE}), "ignored"),
        (event(regulation=HUGE), "ignored"),
        (event(id=HUGE, regulation="cpra"), "ignored"),
        (event(id=HUGE, user={"organization_user_id": "not an email"}), "rejected"),
        (orjson.dumps({"type": HUGE, "parameters": {"entity": {"id": HUGE}}}), "rejected"),
        (
            event(
                created_at="x", consents={"purposes": [{"id": "n", "values": {HUGE: {"value": 1}}}]}
            ),
            "rejected",
        ),
        (event(user={"organization_user_id": 42}, id=HUGE), "rejected"),
        (
            orjson.dumps(
                {
                    "type": "user.deleted",
                    "parameters": {
                        "entity": {"id": HUGE, "organization_user_id": HUGE, "created_at": "x"}
                    },
                }
            ),
            "rejected",
        ),
        (
            orjson.dumps(
                {
                    "type": "user.deleted",
                    "parameters": {
                        "entity": {
                            "id": HUGE,
                            "organization_user_id": HUGE,
                            "created_at": "2026-11-22T10:00:00Z",
                        }
                    },
                }
            ),
            "ignored",
        ),
    ],
)
def test_huge_input_values_give_small_outcomes_and_headers(value: bytes, status: str) -> None:
    _, publication, dead = report(value, key=HUGE.encode())
    assert publication.outcome.status == status
    assert (len(dead) == 1) is (status == "rejected")
    assert_bounded(publication, dead)
    published = outcome_bytes(publication.outcome)
    assert len(published) < 2_048  # ASCII text: a byte a character
    assert b"x" * MAX_ID_CHARS not in published
    assert b" chars]" in published  # what was cut says so


def test_a_regulation_is_quoted_clipped_inside_its_reason() -> None:
    _, publication, _ = report(event(regulation="r" * 10_000))
    reason = publication.outcome.reason
    assert reason is not None
    quoted = reason.split("'")[1]
    assert len(quoted) <= MAX_NAME_CHARS and quoted.endswith(" chars]")
    assert reason.endswith("is not synced (synced: gdpr)")


def test_a_huge_message_key_is_clipped_in_the_outcome_only() -> None:
    _, publication, dead = report(b"not json", key=b"\x00" * 100_000)
    assert publication.outcome.organization_user_id is None
    assert publication.key is not None and len(publication.key) <= MAX_KEY_BYTES
    assert publication.key.startswith(b"\x00" * 100)
    # The dead letter is the input message, byte for byte: that is what redrive re-publishes.
    assert dead[0].message.key == b"\x00" * 100_000


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    event_id=any_text | huge_text,
    org_user_id=any_text | huge_text,
    regulation=any_text | huge_text,
    event_type=any_text | huge_text,
    pending=st.booleans(),
)
def test_any_text_anywhere_stays_within_the_bound(
    event_id: str, org_user_id: str, regulation: str, event_type: str, pending: bool
) -> None:
    entity = {
        "id": event_id,
        "created_at": "2026-11-22T10:00:00Z",
        "status": "pending_approval" if pending else "confirmed",
        "regulation": regulation,
        "user": {"organization_user_id": org_user_id},
    }
    for kind in ("event.created", event_type):
        value = orjson.dumps({"type": kind, "parameters": {"entity": entity}})
        parsed = parse_message(value, RULES)
        if isinstance(parsed, Accepted):
            continue  # a real person: written to Salesforce, covered below
        _, publication, dead = report(value, key=org_user_id.encode())
        assert_bounded(publication, dead)


def test_a_failed_write_with_huge_ids_and_salesforce_message_stays_bounded() -> None:
    plans = example_plans()
    # A padded email is valid once trimmed; the outcome repeats it as sent.
    email = "jane@x.com" + " " * 300_000
    jane = change(email, purpose("newsletter", True), event_id="e" * 300_000)
    people = merge_by_person([Sourced(jane, 0, 0, 0, map_change(jane, plans))])
    error = SalesforceErrorInfo(code="INVALID_EMAIL_ADDRESS", message="bad: " + "m" * 100_000)
    results = {"Contact": {"jane@x.com": PersonResult("failed", error=error)}}
    message = InputMessage("in", 0, 0, b"k", b"v")
    parsed: list[ParseResult] = [Accepted(jane)]
    (publication,), dead = assemble([message], parsed, people, results, plans, NOW)
    outcome = publication.outcome
    assert outcome.status == "failed"
    assert len(outcome_bytes(outcome)) < OUTCOME_BOUND + 6 * (MAX_REASON_CHARS + MAX_CODE_CHARS)
    assert publication.key is not None and publication.key.startswith(b"jane@x.com")
    assert len(publication.key) <= MAX_KEY_BYTES
    assert outcome.reason is not None and MARKER.search(outcome.reason)
    assert dlq_header_bytes(dead[0]) <= HEADERS_BOUND


def test_ordinary_values_are_unchanged() -> None:
    _, publication, _ = report(event(status="pending_approval"))
    outcome = publication.outcome
    assert outcome.event_id == "0f2a5b0e-6f0b-4e3f-9c61-1c0f9a7b2d11"
    assert outcome.organization_user_id == "Jane.Doe@example.com"
    assert outcome.event_type == "event.created"
    assert outcome.reason == "status is pending_approval: applied only once approved"
    assert publication.key == b"Jane.Doe@example.com"
    # The longest email Salesforce stores, and the longest id not clipped.
    longest = "a" * 68 + "@example.com"
    assert len(longest) == 80
    _, publication, _ = report(
        event(id="i" * MAX_ID_CHARS, user={"organization_user_id": longest}, regulation="cpra")
    )
    assert publication.outcome.organization_user_id == longest
    assert publication.outcome.event_id == "i" * MAX_ID_CHARS
    assert publication.outcome.reason == "regulation 'cpra' is not synced (synced: gdpr)"
    _, publication, dead = report(event(user={"organization_user_id": "not an email"}))
    headers = dict(dead[0].info.headers())
    assert headers["x-dlq-error-class"] == b"INVALID_EMAIL"
    assert headers["x-dlq-event-id"] == b"0f2a5b0e-6f0b-4e3f-9c61-1c0f9a7b2d11"
    assert headers["x-dlq-reason"] == (
        b"organization_user_id is not an email address (it is matched against the record's email)"
    )
    assert publication.key == b"not an email"


def test_a_malformed_part_left_out_is_described_clipped() -> None:
    # Alone, a malformed part of a purpose is left out and described (every part counts as
    # mapped without the mapping): its huge key is clipped there too.
    value = event(consents={"purposes": [{"id": "n", "values": {HUGE: {"value": 1}}}]})
    parsed = parse_message(value, RULES)
    assert isinstance(parsed, Accepted), parsed
    described = parsed.change.malformed
    assert described is not None and len(described) <= MAX_REASON_CHARS
    assert " chars]" in described
