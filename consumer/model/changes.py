"""What flows between the stages: parse results, field values, merged writes, write results.

The parse stage produces :data:`ParseResult`; the merge stage turns accepted changes into one
:class:`PersonWrite` per person; the writer answers with one :class:`PersonResult` per person
and target; the report stage joins all of them back to the input messages.

The records built per event are plain slotted dataclasses, not frozen ones: a frozen
dataclass sets each field through ``object.__setattr__``, which made building them cost up
to four times as much, and the hot path builds several per event. Treat them as immutable
all the same; :class:`Stamp` stays frozen because it is compared and used as a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from consumer.model.events import Purpose
from consumer.model.outcomes import SalesforceErrorInfo

FieldValue = bool | str | None
FieldValues = dict[str, FieldValue]
#: A choice a field's stamp dates, the same on every target (``TargetMapping.choice_keys``):
#: ``("purposes", P)``, ``("preference_values", P, V)``, or ``("preferences", P, *values)``
#: for a selection text (the values its target maps as fields of their own).
ChoiceKey = tuple[str, ...]


@dataclass(slots=True)
class ConsentChange:
    """A validated choice of one person, normalised for the map and merge stages."""

    event_id: str
    event_type: str
    organization_user_id: str
    #: ``organization_user_id`` trimmed and lower-cased: the merge and match key.
    email_key: str
    event_time: datetime
    regulation: str | None
    purposes: tuple[Purpose, ...]
    #: True for user entities (whole state), False for events (only what changed).
    full_state: bool
    #: ``user.updated``, ``event.updated``: what ``old_entity`` applied. Only the fields
    #: whose values differ between the two are applied; None applies the whole new version.
    previous_purposes: tuple[Purpose, ...] | None = None
    #: A deleted user whose every mapped field goes to "no consent" (``on_user_deleted``).
    withdraw_all: bool = False
    #: Mapped parts of the event left out as malformed (parse), described; its other
    #: choices are applied, and the outcome says so.
    malformed: str | None = None
    #: A later version of an event: its ``updated_at`` in milliseconds (it sorts at
    #: :data:`VERSION_PARTITION` in its event's millisecond, this as the offset).
    version_ms: int | None = None

    def mapped(self) -> ConsentChange:
        """This change without its purposes: once mapped, a backlog need not hold them.

        Built directly: ``dataclasses.replace`` costs twice as much, once per event.
        """
        return ConsentChange(
            self.event_id,
            self.event_type,
            self.organization_user_id,
            self.email_key,
            self.event_time,
            self.regulation,
            (),
            self.full_state,
            None,
            self.withdraw_all,
            self.malformed,
            self.version_ms,
        )


@dataclass(slots=True)
class Accepted:
    """The message carries a change to apply."""

    change: ConsentChange
    kind: Literal["accepted"] = "accepted"


@dataclass(slots=True)
class Ignored:
    """A valid message that, by the product's rules, changes nothing."""

    reason: str
    event_id: str | None
    event_type: str
    organization_user_id: str | None
    event_time: datetime | None
    kind: Literal["ignored"] = "ignored"


@dataclass(slots=True)
class Rejected:
    """A message that cannot be processed; it goes to the dead-letter topic."""

    error_class: str
    reason: str
    event_type: str | None = None
    event_id: str | None = None
    organization_user_id: str | None = None
    kind: Literal["rejected"] = "rejected"


ParseResult = Accepted | Ignored | Rejected


def grants(value: object) -> bool:
    """Whether a field value grants something (a consent, a selection): what the stamps of a
    newer choice hold back, and what a late version of a deleted event loses."""
    return value is True or (value.__class__ is str and value != "")


def epoch_ms(moment: datetime) -> int:
    """A moment in milliseconds since the epoch (how stamps and Kafka timestamps count)."""
    return int(moment.timestamp() * 1000)


#: Where a deletion (``user.deleted``, ``event.deleted`` with ``withdraw``) sits among the
#: choices of its millisecond: after all of them, at the largest partition and offset Kafka
#: can give. It withdraws the very grant it undoes, which carries the same millisecond, and a
#: redelivered copy of that grant comes with a later offset.
DELETION_PARTITION = 2**31 - 1
DELETION_OFFSET = 2**63 - 1
#: Where a later version of an event (an ``event.updated`` whose ``updated_at`` is after its
#: ``created_at``) sits among the choices of the event's millisecond: after every first
#: version, whatever partition or offset it was read at (a Didomi retry of the first
#: version read after an edit must not take the field back), ordered between versions by
#: their ``updated_at`` (the stamp's offset), and before a deletion.
VERSION_PARTITION = DELETION_PARTITION - 1
DELETIONS = frozenset({"user.deleted", "event.deleted"})


@dataclass(frozen=True, order=True, slots=True)
class Stamp:
    """When a choice was made and where it was read: what orders the choices of one field.

    Compared by event time (milliseconds), then by partition and offset (a tie in time is
    broken by the order Kafka holds them in). The event id is kept for the record, not compared.
    """

    time_ms: int
    partition: int
    offset: int
    event_id: str = field(default="", compare=False)


@dataclass(slots=True)
class Sourced:
    """A change and where it was read from (its position orders ties)."""

    change: ConsentChange
    partition: int
    offset: int
    #: The index of the message in its batch; outcomes are joined back on it.
    index: int
    #: What the change writes, by sObject (the map stage's answer; only non-empty targets).
    fields: Mapping[str, FieldValues] = field(default_factory=dict)


@dataclass(slots=True)
class Step:
    """One merged event: when it happened, where it sits in the batch, what it writes.

    ``fields`` holds the map stage's own dicts (not copies): read them, never change them.
    """

    event_time: datetime
    index: int
    fields: dict[str, FieldValues]
    stamp: Stamp = Stamp(0, 0, 0)


@dataclass
class PersonWrite:
    """Everything one batch writes for one person."""

    email_key: str
    #: The spelling of the most recent event, used when a record has to be created.
    email: str
    #: sObject -> merged field values (only targets with something to write).
    fields: dict[str, FieldValues] = field(default_factory=dict)
    #: sObject -> field -> the stamp of the event whose value ``fields`` holds.
    stamps: dict[str, dict[str, Stamp]] = field(default_factory=dict)
    #: Batch indexes of the messages merged into this write, in merge order.
    indexes: list[int] = field(default_factory=list)
    #: The merged events in merge order, for writes that must skip what a record has newer.
    steps: list[Step] = field(default_factory=list)
    #: The batch's ``event.deleted`` steps, in merge order: a record's field whose stamp
    #: names a deleted event is withdrawn too (the writer's ``_undo``).
    deleted_events: list[Step] = field(default_factory=list)

    def may_create(self, sobject: str) -> bool:
        """Whether some field's newest choice on ``sobject`` is not a deletion's. When none
        is, the blind external-id writer (no sync state) creates no record for the person,
        and a record the others create is a suppression record (no consent)."""
        stamps = self.stamps.get(sobject) or {}
        return any(s.partition != DELETION_PARTITION for s in stamps.values())

    def fields_after(self, sobject: str, moment: datetime | None) -> tuple[FieldValues, list[Step]]:
        """Merged values of the events after ``moment`` (all when None), and those events."""
        merged: FieldValues = {}
        used: list[Step] = []
        for step in self.steps:
            values = step.fields.get(sobject)
            if values and (moment is None or step.event_time > moment):
                merged.update(values)
                used.append(step)
        return merged, used


PersonStatus = Literal["updated", "created", "stale", "unchanged", "not_found", "failed"]


@dataclass
class PersonResult:
    """What happened to one person on one target."""

    status: PersonStatus
    record_ids: list[str] = field(default_factory=list)
    error: SalesforceErrorInfo | None = None
    note: str | None = None
    #: Batch indexes of events skipped because every record held newer data.
    stale_indexes: set[int] = field(default_factory=set)
    #: Batch index -> the event's fields every record holds a newer choice for.
    older: dict[int, list[str]] = field(default_factory=dict)
    #: Fields left out of the write (refused by Salesforce or invalid for describe), with why;
    #: the other fields were written (the report turns events carrying them into ``partial``).
    refused: dict[str, SalesforceErrorInfo] = field(default_factory=dict)
    #: Fields whose choice was applied to at least one record.
    written: set[str] = field(default_factory=set)
    #: Batch index of a deleted event -> the fields it withdrew on some record beyond its
    #: own (what an earlier version of the event granted; the report counts them as its).
    undone: dict[int, set[str]] = field(default_factory=dict)
    #: Batch index -> the grants of that event left out as those of a late version of a
    #: deleted event (also in ``older``): no choice, as if the version had never come.
    revoked: dict[int, list[str]] = field(default_factory=dict)
