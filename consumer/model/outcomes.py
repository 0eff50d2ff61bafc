"""The records this service publishes: one outcome per input message, and dead letters.

These models are the contract of the results and dead-letter topics; ``schemas/`` holds their
JSON Schemas, generated from here.

Every text that comes from the input (or from Salesforce, which may repeat the input) is
clipped to a fixed length by the models themselves (:func:`clip`), so that an outcome or a
dead letter's ``x-dlq-*`` headers stay small whatever a producer sends: an outcome without
targets holds under 1,000 such characters, so it stays under 6.5 KB of JSON even if every
character needs a 6-byte escape, and under 2 KB for printable ASCII text.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: Ids repeated from the input: ``event_id``, ``organization_user_id``. A Didomi id has 36
#: characters and an email Salesforce stores at most 80, so a real id is never clipped.
MAX_ID_CHARS = 128
#: Event types, error classes and Salesforce error codes (the real ones are under 40).
MAX_CODE_CHARS = 64
#: A reason (also ``x-dlq-reason``) and a Salesforce error message.
MAX_REASON_CHARS = 600
#: A name from the input quoted inside a reason: a regulation, a part of an error's location.
MAX_NAME_CHARS = 60
#: An outcome's Kafka key (the input message's key when the outcome has no
#: organization_user_id), in bytes.
MAX_KEY_BYTES = 512


def clip(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``…[+N chars]``.

    The result never has more than ``limit`` characters, and N says how many were cut, so a
    reader can tell a clipped value from a real one. Clipping twice changes nothing. (A limit
    too small for the marker cuts without one.)
    """
    if len(text) <= limit:
        return text
    # The marker is at most as long as the one for removing everything.
    keep = limit - len(_marker(len(text)))
    if keep < 1:
        return text[:limit]
    return text[:keep] + _marker(len(text) - keep)


def clip_bytes(data: bytes, limit: int) -> bytes:
    """:func:`clip` for bytes (a Kafka key): the start and ``...[+N bytes]``."""
    if len(data) <= limit:
        return data
    keep = limit - len(_byte_marker(len(data)))
    if keep < 1:
        return data[:limit]
    return data[:keep] + _byte_marker(len(data) - keep)


def _marker(removed: int) -> str:
    return f"…[+{removed} chars]"


def _byte_marker(removed: int) -> bytes:
    return f"...[+{removed} bytes]".encode()


def _clip_to(limit: int) -> BeforeValidator:
    # Runs before the str validation, so the field's max_length (there to document the limit
    # in the JSON Schemas) never refuses a value: it is clipped instead.
    def clip_value(value: Any) -> Any:
        return clip(value, limit) if isinstance(value, str) else value

    return BeforeValidator(clip_value)


#: Text clipped to its limit by the model (see the MAX_* constants).
IdText = Annotated[str, _clip_to(MAX_ID_CHARS), Field(max_length=MAX_ID_CHARS)]
CodeText = Annotated[str, _clip_to(MAX_CODE_CHARS), Field(max_length=MAX_CODE_CHARS)]
ReasonText = Annotated[str, _clip_to(MAX_REASON_CHARS), Field(max_length=MAX_REASON_CHARS)]

Status = Literal[
    "updated",
    "created",
    "partial",
    "stale",
    "unchanged",
    "not_found",
    "ignored",
    "rejected",
    "failed",
]
TargetStatus = Literal["updated", "created", "partial", "stale", "unchanged", "not_found", "failed"]

#: Precedence when an event touches several targets: the overall status is the "strongest".
STATUS_PRECEDENCE: dict[str, int] = {
    "failed": 7,
    "partial": 6,
    "created": 5,
    "updated": 4,
    "stale": 3,
    "unchanged": 2,
    "not_found": 1,
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

    code: CodeText
    message: ReasonText
    fields: list[str] = Field(default_factory=list)


class FieldRefusal(BaseModel):
    """One field left out of a write, and Salesforce's (or describe's) reason."""

    model_config = ConfigDict(frozen=True)

    field: str
    code: CodeText
    message: ReasonText


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
    #: ``partial``: the event's fields that were written.
    fields_written: list[str] | None = None
    #: ``partial`` (and ``failed`` for a field's own reason): fields Salesforce refused or that
    #: failed validation against describe, with why; the other fields were written.
    fields_refused: list[FieldRefusal] | None = None
    #: Fields of the event not written because the record holds a newer choice for them (the
    #: record's sync state); the event's other fields were applied.
    fields_skipped_older: list[str] | None = None


class Outcome(BaseModel):
    """The outcome of one input message, published to the results topic.

    ``status`` sums up ``targets``: failed if any target failed, else partial (some fields
    refused), created, updated, stale (every record holds a newer choice for every field the
    event mentions), unchanged (every record already holds the event's values), not_found, in
    that order; ``ignored`` and ``rejected`` messages have no targets.
    """

    model_config = ConfigDict(frozen=True)

    status: Status
    reason: ReasonText | None = None
    error_class: CodeText | None = None
    event_id: IdText | None = None
    event_type: CodeText | None = None
    organization_user_id: IdText | None = None
    targets: list[TargetResult] = Field(default_factory=list)
    source: SourcePosition
    event_time: datetime | None = None
    processed_at: datetime


def overall_status(statuses: Iterable[str]) -> str:
    """The status an outcome reports for its targets' statuses: the strongest by
    :data:`STATUS_PRECEDENCE`, ``ignored`` when there are none."""
    best, rank = "ignored", 0
    for status in statuses:
        here = STATUS_PRECEDENCE[status]
        if here > rank:
            best, rank = status, here
    return best


class DeadLetter(BaseModel):
    """What the dead-letter topic adds to a message, as Kafka headers (``x-dlq-*``).

    The dead letter's key, value and original headers are the input message's, byte for byte,
    so that it can be re-published unchanged once the cause is fixed. Only these added headers
    are clipped.
    """

    model_config = ConfigDict(frozen=True)

    error_class: CodeText
    reason: ReasonText
    source_topic: str
    source_partition: int
    source_offset: int
    first_seen: datetime
    #: ``partition/offset/timestamp`` of the event's first read (kept across redrives).
    origin: str = ""
    event_id: IdText | None = None

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
        if self.origin:
            out.append(("x-dlq-origin", self.origin))
        if self.event_id:
            out.append(("x-dlq-event-id", self.event_id))
        return [(k, v.encode("utf-8")) for k, v in out]
