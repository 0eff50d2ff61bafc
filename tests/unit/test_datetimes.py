"""Salesforce datetime handling for the stale-write guard (millisecond precision)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from consumer.salesforce.wire import format_datetime, millis, parse_datetime


def test_format_is_utc_with_milliseconds() -> None:
    moment = datetime(2026, 11, 20, 10, 14, 3, 512_999, tzinfo=timezone(timedelta(hours=1)))
    assert format_datetime(moment) == "2026-11-20T09:14:03.512Z"


def test_parse_reads_salesforce_and_iso_forms() -> None:
    want = datetime(2026, 11, 20, 9, 14, 3, 512_000, tzinfo=UTC)
    assert parse_datetime("2026-11-20T09:14:03.512+0000") == want
    assert parse_datetime("2026-11-20T09:14:03.512Z") == want
    assert parse_datetime("2026-11-20T10:14:03.512+01:00") == want
    assert parse_datetime(None) is None
    assert parse_datetime("") is None
    assert parse_datetime("yesterday") is None


def test_round_trip_compares_equal_at_millisecond_precision() -> None:
    moment = datetime(2026, 11, 20, 9, 14, 3, 512_345, tzinfo=UTC)
    assert parse_datetime(format_datetime(moment)) == millis(moment)


def test_epoch_milliseconds_format_as_salesforce_datetimes() -> None:
    from consumer.salesforce.wire import format_epoch_ms

    assert format_epoch_ms(1_763_629_203_512) == "2025-11-20T09:00:03.512Z"
    assert format_epoch_ms(0) == "1970-01-01T00:00:00.000Z"
