"""Merge stage: many events of one person become one write per target.

Pure. Within a batch, the events of one ``organization_user_id`` (compared case-insensitively)
merge field by field in event-time order, ties broken by partition and offset: a later event
wins each field it mentions, and a partial event never erases a field it did not mention.
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.model.changes import PersonWrite, Sourced, Stamp, Step, epoch_ms


def merge_by_person(changes: Iterable[Sourced]) -> dict[str, PersonWrite]:
    """Group changes by person and merge their mapped fields per target, in event order.

    Each merged field keeps the stamp (event time, partition, offset, event id) of the event
    whose value it holds, which is what the writer compares with a record's sync state.
    """
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
        stamp = stamp_of(item)
        step = Step(change.event_time, item.index, {}, stamp)
        for sobject, values in item.fields.items():
            if values:
                person.fields.setdefault(sobject, {}).update(values)
                stamps = person.stamps.setdefault(sobject, {})
                for name in values:
                    stamps[name] = stamp
                step.fields[sobject] = dict(values)
        person.steps.append(step)
    return people


def stamp_of(item: Sourced) -> Stamp:
    """The stamp of a sourced change: its event time to the millisecond and its position."""
    change = item.change
    return Stamp(epoch_ms(change.event_time), item.partition, item.offset, change.event_id)
