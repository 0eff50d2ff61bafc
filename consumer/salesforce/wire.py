"""Salesforce's wire formats: datetimes as Salesforce writes and reads them."""

from __future__ import annotations

from datetime import UTC, datetime


def millis(moment: datetime) -> datetime:
    """``moment`` at Salesforce's precision (milliseconds), so comparisons are exact."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def format_datetime(moment: datetime) -> str:
    """A datetime as Salesforce takes it (``2026-11-20T09:14:03.512Z``)."""
    text = millis(moment).astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def format_epoch_ms(ms: int) -> str:
    """Milliseconds since the epoch as Salesforce takes a datetime."""
    return format_datetime(datetime.fromtimestamp(ms / 1000, UTC))


def parse_datetime(value: object) -> datetime | None:
    """A Salesforce datetime (``2026-11-20T09:14:03.512+0000``), or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
