"""Report stage: one outcome per message, dead letters for rejected and failed ones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.model.changes import Accepted, Ignored, ParseResult, PersonResult, Rejected, Sourced
from consumer.model.messages import (
    FIRST_SEEN_HEADER,
    ORIGIN_HEADER,
    REDRIVEN_FROM_HEADER,
    InputMessage,
    Origin,
)
from consumer.model.outcomes import SalesforceErrorInfo
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from consumer.stages.report import assemble
from tests.unit.helpers import change, example_plans, purpose

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def message(offset: int, headers: tuple[tuple[str, bytes], ...] = ()) -> InputMessage:
    return InputMessage("in", 2, offset, b"key", b"value-%d" % offset, headers)


def test_every_kind_of_message_gets_exactly_one_outcome() -> None:
    plans = example_plans()
    jane = change("Jane@x.com", purpose("newsletter", True), minutes=1, event_id="e-jane")
    max_ = change("max@x.com", purpose("analytics", True), minutes=2, event_id="e-max")
    parsed: list[ParseResult] = [
        Rejected("INVALID_JSON", "the message is not valid JSON"),
        Ignored("status is pending_approval", "e-p", "event.created", "p@x.com", None),
        Accepted(jane),
        Accepted(max_),
    ]
    messages = [message(i) for i in range(4)]
    people = merge_by_person(
        [
            Sourced(jane, 2, 2, 2, map_change(jane, plans)),
            Sourced(max_, 2, 3, 3, map_change(max_, plans)),
        ]
    )
    results = {
        "Contact": {
            "jane@x.com": PersonResult("updated", ["003A", "003B"], note="2 share this email"),
            "max@x.com": PersonResult(
                "failed",
                error=SalesforceErrorInfo(code="STRING_TOO_LONG", message="too long", fields=["X"]),
            ),
        },
        "Lead": {"jane@x.com": PersonResult("not_found")},
    }
    outcomes, dead = assemble(messages, parsed, people, results, plans, NOW)
    assert [o.outcome.status for o in outcomes] == ["rejected", "ignored", "updated", "failed"]
    assert [o.outcome.source.offset for o in outcomes] == [0, 1, 2, 3]
    rejected, ignored, updated, failed = (o.outcome for o in outcomes)
    assert rejected.error_class == "INVALID_JSON"
    assert outcomes[0].key == b"key"  # no organization_user_id: the message's own key
    assert ignored.reason == "status is pending_approval"
    assert outcomes[1].key == b"p@x.com"
    assert [(t.sobject, t.status, t.record_ids) for t in updated.targets] == [
        ("Contact", "updated", ["003A", "003B"]),
        ("Lead", "not_found", []),
    ]
    assert updated.event_id == "e-jane"
    assert outcomes[2].key == b"Jane@x.com"
    assert failed.error_class == "STRING_TOO_LONG"
    assert failed.reason == "Contact: STRING_TOO_LONG: too long"
    assert [d.message.offset for d in dead] == [0, 3]
    assert dead[1].info.error_class == "STRING_TOO_LONG"
    assert dead[1].info.first_seen == NOW


def test_stale_events_and_events_without_mapped_choices() -> None:
    plans = example_plans()
    old = change("a@x.com", purpose("newsletter", True), minutes=1, event_id="old")
    new = change("a@x.com", purpose("newsletter", False), minutes=2, event_id="new")
    nothing = change("b@x.com", purpose("cookies", True), minutes=3, event_id="none")
    parsed: list[ParseResult] = [Accepted(old), Accepted(new), Accepted(nothing)]
    people = merge_by_person(
        [
            Sourced(old, 0, 0, 0, map_change(old, plans)),
            Sourced(new, 0, 1, 1, map_change(new, plans)),
            Sourced(nothing, 0, 2, 2, map_change(nothing, plans)),
        ]
    )
    results = {
        "Contact": {"a@x.com": PersonResult("updated", ["003A"], stale_indexes={0})},
        "Lead": {"a@x.com": PersonResult("updated", ["00QA"], stale_indexes={0})},
    }
    outcomes, dead = assemble([message(i) for i in range(3)], parsed, people, results, plans, NOW)
    assert [o.outcome.status for o in outcomes] == ["stale", "updated", "ignored"]
    assert {t.status for t in outcomes[0].outcome.targets} == {"stale"}
    assert outcomes[2].outcome.reason is not None
    assert "no choice" in outcomes[2].outcome.reason
    assert dead == []


def test_a_redriven_dead_letter_keeps_its_first_seen_time_and_origin() -> None:
    first = "2026-11-01T08:00:00+00:00"
    parsed: list[ParseResult] = [Rejected("UNKNOWN_EVENT_TYPE", "unknown event type 'x'")]
    again = (
        (FIRST_SEEN_HEADER, first.encode()),
        (ORIGIN_HEADER, b"1/3/1793491205000"),
        (REDRIVEN_FROM_HEADER, b"dlq/0/4"),
    )
    _, dead = assemble([message(5, again)], parsed, {}, {}, [], NOW)
    assert dead[0].info.first_seen == datetime.fromisoformat(first)
    headers = dict(dead[0].info.headers())
    assert headers["x-dlq-source-offset"] == b"5"
    assert headers["x-dlq-first-seen"] == first.encode()
    assert headers["x-dlq-origin"] == b"1/3/1793491205000"  # its first read, not this one
    # A first dead letter says where and when it was read.
    first_trip = InputMessage("in", 2, 7, b"k", b"v", (), 1793491206000)
    _, dead = assemble([first_trip], parsed, {}, {}, [], NOW)
    assert dict(dead[0].info.headers())["x-dlq-origin"] == b"2/7/1793491206000"


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        (b"1/3/1793491205000", Origin(1, 3, 1793491205000)),
        (b"0/12/", Origin(0, 12, None)),
        (None, None),
        (b"1/3", None),
        (b"a/3/5", None),
        (b"-1/3/5", None),
        (b"1/3/5/6", None),
        (b"2147483647/3/5", None),  # the deletions' partition
        (b"1/9223372036854775807/5", None),
        (b"1/3/99999999999999", None),
    ],
)
def test_an_origin_header_is_read_or_ignored(raw: bytes | None, origin: Origin | None) -> None:
    assert Origin.parse(raw) == origin
    if origin is not None:
        assert Origin.parse(origin.encode()) == origin


REDRIVEN = (REDRIVEN_FROM_HEADER, b"dlq/0/4")


@pytest.mark.parametrize(
    ("headers", "honoured"),
    [
        ((REDRIVEN, (ORIGIN_HEADER, b"1/3/1793491205000")), True),
        (((ORIGIN_HEADER, b"1/3/1793491205000"),), False),  # not published by the redrive
        ((REDRIVEN, (ORIGIN_HEADER, b"1/3/")), False),  # undated: it would lift the checks
        ((REDRIVEN, (ORIGIN_HEADER, b"1/3/0")), False),
        ((REDRIVEN, (ORIGIN_HEADER, b"1/3/1793491208000")), False),  # after this record
        ((REDRIVEN, (ORIGIN_HEADER, b"garbled")), False),
        ((), False),
    ],
)
def test_a_message_is_ordered_by_its_origin_only_when_a_redrive_published_it(
    headers: tuple[tuple[str, bytes], ...], honoured: bool
) -> None:
    message = InputMessage("in", 2, 9, None, b"v", headers, 1793491207000)
    expected = Origin(1, 3, 1793491205000) if honoured else Origin(2, 9, 1793491207000)
    assert message.origin() == expected


def test_the_fast_path_writes_exactly_what_the_outcome_model_writes() -> None:
    """Outcomes are built as dicts on the hot path; each one is what the model (and so the
    JSON Schema in schemas/) says, byte for byte, including clipping and datetimes."""
    import orjson

    plans = example_plans()
    events = [
        change("a@x.com", purpose("newsletter", True), minutes=1, event_id="e-a"),
        change("b@x.com", purpose("newsletter", False, frequency="f" * 50), minutes=2),
        change("c@x.com", purpose("analytics", True), minutes=3, event_id="e" * 500),
        change("d@x.com", purpose("newsletter", True), minutes=4),
    ]
    parsed: list[ParseResult] = [
        Rejected("INVALID_JSON", "bad " * 400, "event.created", "x" * 300, "y" * 300),
        Ignored("regulation 'cpra' is not synced", "e-i", "event.created", "i@x.com", NOW),
        *[Accepted(e) for e in events],
    ]
    messages = [message(i) for i in range(len(parsed))]
    people = merge_by_person(
        Sourced(e, 2, i + 2, i + 2, map_change(e, plans)) for i, e in enumerate(events)
    )
    too_long = SalesforceErrorInfo(code="STRING_TOO_LONG", message="m" * 900, fields=["F"])
    results = {
        "Contact": {
            "a@x.com": PersonResult("updated", ["003A"], note="2 share this email"),
            "b@x.com": PersonResult(
                "updated", ["003B"], refused={"Newsletter_Frequency__c": too_long}
            ),
            "c@x.com": PersonResult("stale", ["003C"], stale_indexes={4}, older={4: ["A"]}),
            "d@x.com": PersonResult("failed", error=too_long),
        },
        "Lead": {"a@x.com": PersonResult("not_found", note="no Lead")},
    }
    outcomes, _ = assemble(messages, parsed, people, results, plans, NOW)
    statuses = [o.doc["status"] for o in outcomes]
    assert statuses == ["rejected", "ignored", "updated", "partial", "stale", "failed"]
    for publication in outcomes:
        model = publication.outcome  # validates the document against the model
        assert publication.value() == orjson.dumps(model.model_dump(mode="json", exclude_none=True))


def test_only_people_whose_results_hold_nothing_per_event_share_one_verdict() -> None:
    # a@ has three plain events; b@'s first event is older than the record on Contact, and
    # b@'s frequency is refused on Contact: each of b@'s events gets its own verdict.
    plans = example_plans()
    a = [
        change("a@x.com", purpose("newsletter", i % 2 == 0), minutes=i, event_id=f"a{i}")
        for i in (1, 3, 5)
    ]
    b_old = change("b@x.com", purpose("newsletter", True), minutes=2, event_id="b-old")
    b_new = change(
        "b@x.com",
        purpose("newsletter", False, frequency="weekly"),
        minutes=4,
        event_id="b-new",
    )
    order = [a[0], b_old, a[1], b_new, a[2]]
    parsed: list[ParseResult] = [Accepted(c) for c in order]
    people = merge_by_person(
        [Sourced(c, 0, i, i, map_change(c, plans)) for i, c in enumerate(order)]
    )
    refused = SalesforceErrorInfo(code="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message="bad")
    results = {
        "Contact": {
            "a@x.com": PersonResult("updated", ["003A"]),
            "b@x.com": PersonResult(
                "updated",
                ["003B"],
                stale_indexes={1},
                older={1: ["Newsletter_Consent__c"]},
                refused={"Newsletter_Frequency__c": refused},
            ),
        },
        "Lead": {
            "a@x.com": PersonResult("not_found"),
            "b@x.com": PersonResult("updated", ["00QB"]),
        },
    }
    outcomes, dead = assemble([message(i) for i in range(5)], parsed, people, results, plans, NOW)
    docs = [o.outcome for o in outcomes]
    assert [d.event_id for d in docs] == ["a1", "b-old", "a3", "b-new", "a5"]
    assert [d.status for d in docs] == ["updated", "updated", "updated", "partial", "updated"]
    for d in (docs[0], docs[2], docs[4]):
        assert [(t.sobject, t.status) for t in d.targets] == [
            ("Contact", "updated"),
            ("Lead", "not_found"),
        ]
        assert d.error_class is None
    assert [(t.sobject, t.status) for t in docs[1].targets] == [
        ("Contact", "stale"),
        ("Lead", "updated"),
    ]
    assert [(t.sobject, t.status) for t in docs[3].targets] == [
        ("Contact", "partial"),
        ("Lead", "updated"),
    ]
    assert docs[3].error_class == "FIELD_REJECTED"
    assert [d.message.offset for d in dead] == [3]
