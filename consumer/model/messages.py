"""What is read from Kafka and how it is keyed: input messages, email keys, header names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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
#: Kept likewise: where and when the event was first read (``partition/offset/timestamp``).
ORIGIN_HEADER = "x-dlq-origin"
#: Set on a dead letter sent without its value (too large for the dead-letter topic).
VALUE_OMITTED_HEADER = "x-dlq-value-omitted"
REDRIVEN_AT_HEADER = "x-redriven-at"
REDRIVEN_FROM_HEADER = "x-redriven-from"


class Origin(NamedTuple):
    """Where and when an event was first read from the input topic.

    A redrive re-publishes a dead letter as a new record, with a new offset and a new
    timestamp. The event's stamp (what orders two choices of the same millisecond) and the
    time a ``user.deleted`` without ``updated_at`` is dated by come from here instead, so a
    redriven event sorts where it first did: it cannot win a tie against a choice read after
    it, nor withdraw a choice made between its first read and the redrive.
    """

    partition: int
    offset: int
    timestamp_ms: int | None

    def encode(self) -> bytes:
        ts = "" if self.timestamp_ms is None else str(self.timestamp_ms)
        return f"{self.partition}/{self.offset}/{ts}".encode()

    @classmethod
    def parse(cls, raw: bytes | None) -> Origin | None:
        """The origin a header holds; None when absent or not ``int/int/[int]``."""
        if raw is None:
            return None
        parts = raw.split(b"/")
        if len(parts) != 3:
            return None
        try:
            partition, offset = int(parts[0]), int(parts[1])
            ts = int(parts[2]) if parts[2] else None
        except ValueError:
            return None
        # Kafka's bounds; the top values are the deletions' sort position (model.changes),
        # which a header must not claim.
        if not (0 <= partition < 2**31 - 1 and 0 <= offset < 2**63 - 1):
            return None
        if ts is not None and not 0 <= ts < 10**13:
            return None
        return cls(partition, offset, ts)


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

    def origin(self) -> Origin:
        """Where and when the event was first read: a redriven message's ``x-dlq-origin``
        (a dead letter carries its first read's), else this message's own.

        Honoured only on a message the redrive published (``x-redriven-from``) and only when
        the first read is dated, and not after this record: so a header cannot lift the
        future-time check (which bounds an event's time by its record's) or date a deletion
        later than its record.
        """
        own = Origin(self.partition, self.offset, self.timestamp_ms)
        if not self.headers or self.header(REDRIVEN_FROM_HEADER) is None:
            return own
        found = Origin.parse(self.header(ORIGIN_HEADER))
        if found is None or not found.timestamp_ms:
            return own
        if self.timestamp_ms and found.timestamp_ms > self.timestamp_ms:
            return own
        return found

    def header(self, name: str) -> bytes | None:
        """The last value of a header, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found
