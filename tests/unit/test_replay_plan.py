"""The replay plan from plain values (and redrive's pure rules): no broker involved."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from consumer.ops.redrive import (
    Ledger,
    Progress,
    changed,
    decide,
    error_class,
    redriven_headers,
    value_omitted,
)
from consumer.ops.replay import (
    PartitionOffsets,
    PlanLine,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToOffset,
    parse_when,
    plan_reset,
)


def part(
    partition: int, committed: int | None, earliest: int = 0, latest: int | None = 100
) -> PartitionOffsets:
    return PartitionOffsets(partition, committed, earliest, latest)


def test_to_earliest_goes_to_each_partitions_first_offset() -> None:
    plan = plan_reset([part(1, 40, earliest=10), part(0, 7)], ToEarliest())
    assert [(line.partition, line.committed, line.new) for line in plan.lines] == [
        (0, 7, 0),
        (1, 40, 10),
    ]
    assert [line.change for line in plan.lines] == [-7, -30]
    assert plan.offsets() == {0: 0, 1: 10}


def test_a_partition_without_committed_offset_gets_one() -> None:
    plan = plan_reset([part(0, None, earliest=3)], ToEarliest())
    (line,) = plan.lines
    assert (line.new, line.change, line.changes) == (3, None, True)
    assert line.render() == "partition 0: committed none -> 3 (new) [log 3..100]"
    assert plan.offsets() == {0: 3}


def test_to_offset_is_clamped_into_the_log() -> None:
    plan = plan_reset([part(0, 50, earliest=20), part(1, 50), part(2, 50, latest=30)], ToOffset(25))
    assert [line.new for line in plan.lines] == [25, 25, 25]
    plan = plan_reset([part(0, 50, earliest=20), part(1, 50, latest=30)], ToOffset(5))
    assert [line.new for line in plan.lines] == [20, 5]
    assert plan.lines[0].note == "clamped to earliest 20"
    plan = plan_reset([part(0, 10, latest=30)], ToOffset(500))
    (line,) = plan.lines
    assert (line.new, line.note) == (30, "clamped to latest 30")
    assert line.render() == (
        "partition 0: committed 10 -> 30 (+20) [log 0..30]; clamped to latest 30"
    )


def test_unknown_latest_clamps_only_at_the_bottom_and_says_so() -> None:
    plan = plan_reset([part(0, 10, earliest=5, latest=None)], ToOffset(10_000))
    (line,) = plan.lines
    assert line.new == 10_000
    assert "latest offset unknown: not clamped above" in line.note
    assert "[log 5..?]" in line.render()
    plan = plan_reset([part(0, 10, earliest=5, latest=None)], ToOffset(1))
    assert plan.lines[0].new == 5


def test_shift_by_moves_committed_offsets_within_bounds() -> None:
    plan = plan_reset([part(0, 10), part(1, 1, earliest=0), part(2, 99)], ShiftBy(-2))
    assert [line.new for line in plan.lines] == [8, 0, 97]
    assert plan.lines[1].note == "clamped to earliest 0"
    plan = plan_reset([part(0, 99)], ShiftBy(5))
    assert plan.lines[0].new == 100


def test_shift_by_leaves_a_partition_without_committed_offset_alone() -> None:
    plan = plan_reset([part(0, None), part(1, 10)], ShiftBy(-3))
    first, second = plan.lines
    assert first.new is None and not first.changes
    assert "no committed offset to shift from" in first.note
    assert first.render().startswith("partition 0: committed none, unchanged")
    assert second.new == 7
    assert plan.offsets() == {1: 7}


def test_to_datetime_uses_found_offsets_and_sends_the_rest_to_the_end() -> None:
    when = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    request = ToDatetime(when, {0: 12, 1: None, 2: 3})
    plan = plan_reset([part(0, 40), part(1, 40, latest=60), part(2, 40, earliest=5)], request)
    assert [line.new for line in plan.lines] == [12, 60, 5]
    assert plan.lines[1].note == "no message at or after the time: latest"
    assert plan.lines[2].note == "clamped to earliest 5"


def test_to_datetime_with_no_later_message_and_unknown_end_changes_nothing() -> None:
    request = ToDatetime(datetime(2026, 1, 1, tzinfo=UTC), {0: None})
    (line,) = plan_reset([part(0, 40, latest=None)], request).lines
    assert line.new is None and not line.changes


def test_offsets_skip_partitions_already_there() -> None:
    plan = plan_reset([part(0, 5), part(1, 9)], ToOffset(5))
    assert plan.offsets() == {1: 5}
    assert plan.lines[0].render() == "partition 0: committed 5 -> 5 (+0) [log 0..100]"


def test_plan_line_without_bounds_renders_plainly() -> None:
    assert PlanLine(3, 10, 4).render() == "partition 3: committed 10 -> 4 (-6)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T09:00:00Z", datetime(2026, 11, 20, 9, tzinfo=UTC)),
        ("2026-11-20T09:00:00", datetime(2026, 11, 20, 9, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        (
            "2026-11-20T10:00:00+01:00",
            datetime(2026, 11, 20, 10, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    when = parse_when(text)
    assert when == expected
    assert when.tzinfo is not None


def test_parse_when_refuses_what_is_not_iso() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO-8601 time"):
        parse_when("last tuesday")


# --- redrive's pure rules ------------------------------------------------------------------


def test_redriven_headers_keep_originals_first_seen_and_origin_only() -> None:
    now = datetime(2026, 11, 28, 21, 30, tzinfo=UTC)
    headers = [
        ("trace-id", b"t1"),
        ("x-dlq-error-class", b"INVALID_FIELD"),
        ("x-dlq-reason", b"bad"),
        ("x-dlq-first-seen", b"2026-11-01T00:00:00+00:00"),
        ("x-dlq-source-offset", b"4"),
        ("x-dlq-origin", b"0/4/1793491205000"),
        ("x-redriven-at", b"earlier"),
        ("x-redriven-from", b"dlq/0/1"),
        ("other", b""),
    ]
    assert error_class(headers) == "INVALID_FIELD"
    assert error_class([("trace-id", b"t1")]) == ""
    assert redriven_headers(headers, "dlq/1/7", now) == [
        ("trace-id", b"t1"),
        ("x-dlq-first-seen", b"2026-11-01T00:00:00+00:00"),
        ("x-dlq-origin", b"0/4/1793491205000"),
        ("other", b""),
        ("x-redriven-at", b"2026-11-28T21:30:00+00:00"),
        ("x-redriven-from", b"dlq/1/7"),
    ]


def test_a_filtered_run_keeps_skipped_messages_pending_and_remembers_its_class() -> None:
    # Partition 0 holds B A A B A from offset 0; a run for A.
    ledger = Ledger(floor={0: 0})
    progress = Progress(start={0: 0})
    selected = frozenset({"A"})
    decisions = []
    for offset, cls in enumerate("BAABA"):
        decision = decide(ledger, selected, cls, 0, offset)
        progress.record(0, offset, cls, decision)
        decisions.append(decision)
    assert decisions == ["skip", "redrive", "redrive", "skip", "redrive"]
    assert progress.new_floor() == {0: 0}  # the first skipped message
    assert progress.new_class_offsets({}) == {0: 5}
    assert changed(progress.new_floor(), {0: None}, {0: 0}) == {}

    # The next run for B reads from the floor; the A's are known as redriven.
    ledger = Ledger(floor={0: 0}, by_class={"A": {0: 5}})
    progress = Progress(start={0: 0})
    for offset, cls in enumerate("BAABA"):
        progress.record(0, offset, cls, decide(ledger, frozenset({"B"}), cls, 0, offset))
    assert progress.counts["A"]["done"] == 3 and progress.counts["B"]["redrive"] == 2
    assert progress.new_floor() == {0: 5}
    assert changed(progress.new_floor(), {0: None}, {0: 0}) == {0: 5}


def test_an_unfiltered_run_redrives_all_not_yet_redriven() -> None:
    ledger = Ledger(floor={0: 2}, by_class={"A": {0: 4}})
    assert decide(ledger, None, "B", 0, 1) == "done"  # below the floor
    assert decide(ledger, None, "A", 0, 3) == "done"  # below A's offset
    assert decide(ledger, None, "B", 0, 3) == "redrive"
    assert decide(ledger, frozenset({"A"}), "B", 0, 3) == "skip"


def test_a_dead_letter_without_value_is_passed_not_published() -> None:
    ledger = Ledger(floor={0: 0})
    headers = [("x-dlq-error-class", b"A"), ("x-dlq-value-omitted", b"too large")]
    assert value_omitted(headers) and not value_omitted(headers[:1])
    assert decide(ledger, None, "A", 0, 0, omitted=True) == "omitted"
    assert decide(ledger, frozenset({"B"}), "A", 0, 0, omitted=True) == "skip"
    progress = Progress(start={0: 0})
    progress.record(0, 0, "A", "omitted")
    assert progress.new_floor() == {0: 1}
