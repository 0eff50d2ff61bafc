"""The records this service publishes: one outcome per input message, and dead letters.

These models are the contract of the results and dead-letter topics; ``schemas/`` holds their
JSON Schemas, generated from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["updated", "created", "stale", "not_found", "ignored", "rejected", "failed"]
TargetStatus = Literal["updated", "created", "stale", "not_found", "failed", "unchanged"]

# Precedence when an event touches several targets: the overall status is the "strongest".
_PRECEDENCE: dict[str, int] = {
    "failed": 6,
    "created": 5,
    "updated": 4,
    "stale": 3,
    "not_found": 2,
    "unchanged": 1,
}


class SourcePosition(BaseModel):
    """Where the input message was read."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class SalesforceErrorInfo(BaseModel):
    """A Salesforce error, as Salesforce reported it (code, message, fields)."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    fields: list[str] = Field(default_factory=list)


class TargetResult(BaseModel):
    """What happened on one target sObject for the event's person."""

    model_config = ConfigDict(frozen=True)

    sobject: str
    status: TargetStatus
    record_ids: list[str] = Field(default_factory=list)
    #: Set when the person's email matched several records (all of them were updated).
    note: str | None = None
    error: SalesforceErrorInfo | None = None
    #: How many events of this person were merged into the one write.
    merged_events: int = 1


class Outcome(BaseModel):
    """The outcome of one input message, published to the results topic.

    ``status`` sums up ``targets``: failed if any target failed, else created, updated,
    stale (every record the event would change holds newer data), not_found in that order;
    ``ignored`` and ``rejected`` messages have no targets.
    """

    model_config = ConfigDict(frozen=True)

    status: Status
    reason: str | None = None
    error_class: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    organization_user_id: str | None = None
    targets: list[TargetResult] = Field(default_factory=list)
    source: SourcePosition
    event_time: datetime | None = None
    processed_at: datetime


def overall_status(targets: list[TargetResult]) -> Status:
    """The status an outcome reports for a set of target results."""
    best = max(targets, key=lambda t: _PRECEDENCE[t.status], default=None)
    if best is None or best.status == "unchanged":
        return "ignored"
    return best.status


class DeadLetter(BaseModel):
    """What the dead-letter topic adds to a message, as Kafka headers (``x-dlq-*``).

    The dead letter's key, value and original headers are the input message's, byte for byte,
    so that it can be re-published unchanged once the cause is fixed.
    """

    model_config = ConfigDict(frozen=True)

    error_class: str
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    first_seen: datetime
    event_id: str | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers carrying this information."""
        out = [
            ("x-dlq-error-class", self.error_class),
            ("x-dlq-reason", self.reason),
            ("x-dlq-source-topic", self.source_topic),
            ("x-dlq-source-partition", str(self.source_partition)),
            ("x-dlq-source-offset", str(self.source_offset)),
            ("x-dlq-first-seen", self.first_seen.isoformat()),
        ]
        if self.event_id:
            out.append(("x-dlq-event-id", self.event_id))
        return [(k, v.encode("utf-8")) for k, v in out]
