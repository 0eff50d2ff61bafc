"""What flows between the stages: parse results, field values, merged writes, write results.

The parse stage produces :data:`ParseResult`; the merge stage turns accepted changes into one
:class:`PersonWrite` per person; the writer answers with one :class:`PersonResult` per person
and target; the report stage joins all of them back to the input messages.
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Accepted:
    """The message carries a change to apply."""

    change: ConsentChange
    kind: Literal["accepted"] = "accepted"


@dataclass(frozen=True)
class Ignored:
    """A valid message that, by the product's rules, changes nothing."""

    reason: str
    event_id: str | None
    event_type: str
    organization_user_id: str | None
    event_time: datetime | None
    kind: Literal["ignored"] = "ignored"


@dataclass(frozen=True)
class Rejected:
    """A message that cannot be processed; it goes to the dead-letter topic."""

    error_class: str
    reason: str
    event_type: str | None = None
    event_id: str | None = None
    organization_user_id: str | None = None
    kind: Literal["rejected"] = "rejected"


ParseResult = Accepted | Ignored | Rejected


@dataclass(frozen=True)
class Sourced:
    """A change and where it was read from (its position orders ties)."""

    change: ConsentChange
    partition: int
    offset: int
    #: The index of the message in its batch; outcomes are joined back on it.
    index: int
    #: What the change writes, by sObject (the map stage's answer; only non-empty targets).
    fields: Mapping[str, FieldValues] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One merged event: when it happened, where it sits in the batch, what it writes."""

    event_time: datetime
    index: int
    fields: dict[str, FieldValues]


@dataclass
class PersonWrite:
    """Everything one batch writes for one person."""

    email_key: str
    #: The spelling of the most recent event, used when a record has to be created.
    email: str
    #: sObject -> merged field values (only targets with something to write).
    fields: dict[str, FieldValues] = field(default_factory=dict)
    #: Batch indexes of the messages merged into this write, in merge order.
    indexes: list[int] = field(default_factory=list)
    #: The merged events in merge order, for writes that must skip what a record has newer.
    steps: list[Step] = field(default_factory=list)

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


@dataclass
class PersonResult:
    """What happened to one person on one target."""

    status: Literal["updated", "created", "stale", "not_found", "failed"]
    record_ids: list[str] = field(default_factory=list)
    error: SalesforceErrorInfo | None = None
    note: str | None = None
    #: Batch indexes of events skipped because every record held newer data.
    stale_indexes: set[int] = field(default_factory=set)
