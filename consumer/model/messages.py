"""What is read from Kafka and how it is keyed: input messages, email keys, header names."""

from __future__ import annotations

from dataclasses import dataclass

#: Headers the service adds to a dead letter (``x-dlq-*``) and redrive adds (``x-redriven-*``).
DLQ_HEADER_PREFIX = "x-dlq-"
ERROR_CLASS_HEADER = "x-dlq-error-class"
REASON_HEADER = "x-dlq-reason"
SOURCE_TOPIC_HEADER = "x-dlq-source-topic"
SOURCE_PARTITION_HEADER = "x-dlq-source-partition"
SOURCE_OFFSET_HEADER = "x-dlq-source-offset"
EVENT_ID_HEADER = "x-dlq-event-id"
#: Kept from a dead letter's first trip, so a redriven message keeps its history.
FIRST_SEEN_HEADER = "x-dlq-first-seen"
#: Set on a dead letter sent without its value (too large for the dead-letter topic).
VALUE_OMITTED_HEADER = "x-dlq-value-omitted"
REDRIVEN_AT_HEADER = "x-redriven-at"
REDRIVEN_FROM_HEADER = "x-redriven-from"


def email_key(organization_user_id: str) -> str:
    """The case-insensitive key under which one person's events are merged and matched."""
    return organization_user_id.strip().lower()


@dataclass(slots=True)
class InputMessage:
    """An input message as read from Kafka (what outcomes and dead letters refer to)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: The Kafka record's timestamp (milliseconds since the epoch), when the broker gave one.
    timestamp_ms: int | None = None

    @property
    def size(self) -> int:
        """Bytes of key and value."""
        return len(self.key or b"") + len(self.value or b"")

    def header(self, name: str) -> bytes | None:
        """The last value of a header, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found
