"""The sync state a record keeps in its ``sync_state_field`` (a Long Text Area).

Per mapped field, the stamp of the value the service last wrote there: event time in
milliseconds since the epoch, then the input partition and offset (they order two choices
made in the same millisecond), then the event id (for people reading it; not compared)::

    {"v":1,"f":{"Newsletter_Consent__c":[1763629200000,0,42,"0f2a5b0e-..."],...}}

A write includes only the fields whose incoming stamp is greater than the stored one, and
stores the new stamps with the values, in the same record update: a value and its stamp are
never out of step. A state that cannot be read (edited by hand, another version) counts as
empty: every incoming choice is newer, the next write repairs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import orjson

from consumer.model.changes import Stamp

VERSION = 1
#: Longest event id kept in the state (Didomi's are 36 characters).
MAX_EVENT_ID = 64
#: What one entry costs at most beyond its field name: the quotes, colon and comma, 13 digits
#: of time, 10 of partition, 19 of offset, the event id and the JSON punctuation.
_ENTRY_OVERHEAD = 4 + 13 + 10 + 19 + MAX_EVENT_ID + 8
_FRAME = len('{"v":1,"f":{}}')


def decode(text: object) -> dict[str, Stamp]:
    """The stamps a record's state holds, by field name (empty when none or unreadable)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict) or doc.get("v") != VERSION or not isinstance(doc.get("f"), dict):
        return {}
    out: dict[str, Stamp] = {}
    # orjson gives exact types (a bool is never an int here), so ``type(..) is`` suffices:
    # this runs for every mapped field of every record a query returns.
    for name, entry in doc["f"].items():
        if type(entry) is list and len(entry) == 4:
            time_ms, partition, offset, event_id = entry
            if (
                type(time_ms) is int
                and type(partition) is int
                and type(offset) is int
                and type(event_id) is str
            ):
                out[name] = Stamp(time_ms, partition, offset, event_id)
    return out


def encode(stamps: Mapping[str, Stamp]) -> str:
    """The state text for these stamps (fields in name order, so equal states are equal text)."""
    ids: dict[str, str] = {}  # a record's fields mostly share an event or two
    fields = {
        name: [
            s.time_ms,
            s.partition,
            s.offset,
            ids.get(s.event_id) or ids.setdefault(s.event_id, shown(s.event_id)),
        ]
        for name, s in sorted(stamps.items())
    }
    return orjson.dumps({"v": VERSION, "f": fields}).decode()


def shown(event_id: str) -> str:
    """The event id as the state keeps it: its first :data:`MAX_EVENT_ID` characters, each
    one but printable ASCII shown as ``?``, and quotes and backslashes too. JSON writes a
    control character as six characters and a quote as two, and Salesforce may count a
    character outside the Basic Multilingual Plane as two: so a state is never longer than
    :func:`capacity` says. Compared only to find the fields a deleted event set (the writer's
    ``_undo``): ids alike in this form count as one there."""
    clipped = event_id[:MAX_EVENT_ID]
    if clipped.isascii() and clipped.isprintable() and '"' not in clipped and "\\" not in clipped:
        return clipped
    return "".join(c if _PLAIN.fullmatch(c) else "?" for c in clipped)


#: Printable ASCII but the quote and the backslash: JSON writes each as itself.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def capacity(field_names: Iterable[str]) -> int:
    """The longest state these fields can produce (what the state field must hold)."""
    return _FRAME + sum(len(name) + _ENTRY_OVERHEAD for name in field_names)
