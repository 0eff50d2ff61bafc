"""Merge stage: many events of one person become one write per target.

Pure. Within a batch, the events of one ``organization_user_id`` (compared case-insensitively)
merge field by field in event-time order, ties broken by partition and offset: a later event
wins each field it mentions, and a partial event never erases a field it did not mention.

A deletion (``user.deleted`` or ``event.deleted`` with ``withdraw``) wins a tie in time against
any choice: it withdraws the very grant it undoes, which carries the same millisecond, and a
redelivered copy of that grant comes with a later offset. A later version of an event (dated,
like the first, by the event's creation) comes after every first version of its millisecond,
versions ordered by their ``updated_at`` (``VERSION_PARTITION``).

An ``event.deleted`` is written to every target keeping a sync state (its field set may be
empty there): what earlier versions of the event granted, in the batch or on the records,
the writer withdraws (``TargetWriter._undo``), as only it knows what the records hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

from consumer.model.changes import (
    DELETION_OFFSET,
    DELETION_PARTITION,
    DELETIONS,
    VERSION_PARTITION,
    FieldValues,
    PersonWrite,
    Sourced,
    Stamp,
    Step,
    epoch_ms,
)

#: What orders the changes: time, partition, offset, then index (never the change itself).
_POSITION = itemgetter(0, 1, 2, 3)


def merge_by_person(changes: Iterable[Sourced]) -> dict[str, PersonWrite]:
    """Group changes by person and merge their mapped fields per target, in event order.

    Each merged field keeps the stamp (event time, partition, offset, event id) of the event
    whose value it holds, which is what the writer compares with a record's sync state.
    """
    # Sorted on the stamps' plain ints: event times are whole milliseconds (parse truncates
    # them), so this is event-time order.
    ordered = sorted(
        (
            (epoch_ms(s.change.event_time), DELETION_PARTITION, DELETION_OFFSET, s.index, s)
            if s.change.event_type in DELETIONS
            else (epoch_ms(s.change.event_time), s.partition, s.offset, s.index, s)
            if s.change.version_ms is None
            else (epoch_ms(s.change.event_time), VERSION_PARTITION, s.change.version_ms, s.index, s)
            for s in changes
        ),
        key=_POSITION,
    )
    people: dict[str, PersonWrite] = {}
    for time_ms, partition, offset, index, item in ordered:
        change = item.change
        person = people.get(change.email_key)
        if person is None:
            person = people[change.email_key] = PersonWrite(
                change.email_key, change.organization_user_id
            )
        person.email = change.organization_user_id.strip()
        person.indexes.append(index)
        stamp = Stamp(time_ms, partition, offset, change.event_id)
        mine: dict[str, FieldValues] = {}
        undoes = change.event_type == "event.deleted"
        for sobject, values in item.fields.items():
            if undoes:
                # Written even with nothing of its own: records may hold its earlier grants.
                person.fields.setdefault(sobject, {})
                person.stamps.setdefault(sobject, {})
            if values:
                mine[sobject] = values
                merged = person.fields.get(sobject)
                if merged is None:
                    person.fields[sobject] = dict(values)
                    person.stamps[sobject] = dict.fromkeys(values, stamp)
                else:
                    merged.update(values)
                    person.stamps[sobject].update(dict.fromkeys(values, stamp))
        step = Step(change.event_time, index, mine, stamp)
        person.steps.append(step)
        if undoes:
            person.deleted_events.append(step)
    return people
