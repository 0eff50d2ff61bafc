"""Dedup stage: many events of one person become one write per target.

Pure. Within a batch, the events of one ``organization_user_id`` (compared case-insensitively)
merge field by field in event-time order, ties broken by partition and offset: a later event
wins each field it mentions, and a partial event never erases a field it did not mention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from consumer.mapper import FieldValues, map_purposes
from consumer.mapping import TargetPlan
from consumer.parse import ConsentChange


@dataclass(frozen=True)
class Sourced:
    """A change and where it was read from (its position orders ties)."""

    change: ConsentChange
    partition: int
    offset: int
    #: The index of the message in its batch; outcomes are joined back on it.
    index: int


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


def merge_by_person(
    changes: Iterable[Sourced], plans: Sequence[TargetPlan]
) -> dict[str, PersonWrite]:
    """Group changes by person and merge them per target, in event order."""
    ordered = sorted(changes, key=lambda s: (s.change.event_time, s.partition, s.offset, s.index))
    people: dict[str, PersonWrite] = {}
    for item in ordered:
        change = item.change
        person = people.get(change.email_key)
        if person is None:
            person = people[change.email_key] = PersonWrite(
                change.email_key, change.organization_user_id
            )
        person.email = change.organization_user_id.strip()
        person.indexes.append(item.index)
        step = Step(change.event_time, item.index, {})
        for plan in plans:
            values = map_purposes(change.purposes, plan)
            if values:
                person.fields.setdefault(plan.sobject, {}).update(values)
                step.fields[plan.sobject] = values
        person.steps.append(step)
    return people
