"""The choices the service took in lately, per person: what no Salesforce record may hold.

The sync state lives on the records, so it gates only what a record holds. A person with no
record when they withdrew (match mode: ``not_found``), a record made afterwards (a web form, a
sales rep), a record a clean-up job deleted and a target the batch did not read (a choice only
the Lead maps) hold no stamp of the withdrawal; a grant made before it and delivered after it
(Didomi retries for minutes) would then be written there: a consent nobody gave.

:class:`RecentChoices` keeps, per person (email key) and choice (as
:meth:`TargetMapping.choice_keys` names them), the newest stamp of every
batch the service finished, and the deleted events it saw; the engine seeds each batch's
:class:`HeldChoices` with them, where they gate a grant exactly like a record's stamps.

Only stamps are kept, never values: a grant older than a kept stamp is written nowhere,
whatever that newer choice was (the sibling records' rule), and older withdrawals still go
through. Every stamp is a choice the person made (an event the service accepted and
finished: written, refused or failed), so it can only keep out what is older.

In memory and bounded: ``SYNC_RECENT_CHOICES_SECONDS`` after the batch that took it in (a
person taken in again is kept from then on) and at most ``SYNC_RECENT_CHOICES_PEOPLE``
people, the least recently taken in going first. It narrows the window in which only the
records remember, it does not replace them. Without ``KAFKA_CHOICES_TOPIC`` a restart, or a
partition moved to another replica, starts without it; with it, the engine writes each
person's entry there (:meth:`export`) and reads the assigned partitions back
(:meth:`restore`). The stamps are packed (22 bytes a choice), not kept as objects: about
250 bytes a person with the key and the entry.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from consumer.model import sync_state
from consumer.model.changes import ChoiceKey, PersonResult, PersonWrite, Stamp, grants
from consumer.model.held import HeldChoices

#: One choice: its index among the choices seen, time (ms), partition and offset.
_PACK = struct.Struct("<HqIq")


@dataclass(slots=True)
class _Person:
    taken_at: float
    #: The packed (choice, stamp) pairs.
    choices: bytes
    #: Deleted events (id as the sync state shows it) -> the deletion's stamp; rare.
    deleted: dict[str, Stamp] | None


class RecentChoices:
    """Per person and choice, the newest stamp taken in lately (see the module's text).

    ``choice_keys``: per target sObject, field -> choice (:meth:`TargetMapping.choice_keys`).
    ``clock``: seconds, monotonic (the event loop's time in the service).
    """

    def __init__(
        self,
        choice_keys: Mapping[str, Mapping[str, ChoiceKey]],
        *,
        seconds: float,
        people: int,
        clock: Callable[[], float],
    ) -> None:
        #: The choices by index (what the packed stamps name), and per sObject field ->
        #: index.
        self._names = sorted({c for keys in choice_keys.values() for c in keys.values()})
        #: Grows with choices of other mappings read back (``_index_of``).
        self._index = index = {name: i for i, name in enumerate(self._names)}
        self._keys = {
            sobject: {name: index[c] for name, c in keys.items()}
            for sobject, keys in choice_keys.items()
        }
        self._seconds = seconds
        self._limit = people
        self._clock = clock
        #: In the order they were last taken in: the oldest first (once sorted again after
        #: a restore: ``_disordered``).
        self._people: dict[str, _Person] = {}
        self._disordered = False

    @property
    def enabled(self) -> bool:
        """Whether anything is kept at all (a window and a bound above zero)."""
        return self._seconds > 0 and self._limit > 0

    def __len__(self) -> int:
        return len(self._people)

    def record(
        self,
        people: Iterable[PersonWrite],
        results: Mapping[str, Mapping[str, PersonResult]] | None = None,
    ) -> int:
        """Keep the newest stamp per choice of a finished batch's people, and its deleted
        events. ``results`` (sObject -> email key -> result): the grants a writer revoked
        (a late version of a deleted event) are no choice and are not kept.

        Returns how many people the bound made forget before their window was over (if
        that is not rare, the bound is what decides how long choices are remembered).
        """
        if not self.enabled:
            return 0
        now = self._clock()
        for person in people:
            key = person.email_key
            newest = self._newest(person, _revoked(key, results) if results else set())
            deleted = {sync_state.shown(s.stamp.event_id): s.stamp for s in person.deleted_events}
            if newest or deleted:
                self._keep(key, newest, deleted, now)
        return self._expire(now)

    def _keep(
        self,
        key: str,
        newest: dict[int, tuple[int, int, int]],
        deleted: dict[str, Stamp],
        taken_at: float,
    ) -> None:
        """Merge into what is kept for ``key`` (the newest of each), last taken in now."""
        kept = self._people.pop(key, None)
        if kept is not None:
            for i, t, p, o in _PACK.iter_unpack(kept.choices):
                at = (t, p, o)
                if (mine := newest.get(i)) is None or mine < at:
                    newest[i] = at
            for event_id, stamp in (kept.deleted or {}).items():
                if (was := deleted.get(event_id)) is None or was < stamp:
                    deleted[event_id] = stamp
            taken_at = max(taken_at, kept.taken_at)
        pack = _PACK.pack
        packed = b"".join([pack(i, *at) for i, at in newest.items()])
        self._people[key] = _Person(taken_at, packed, deleted or None)

    def export(self, key: str) -> bytes | None:
        """What is kept for ``key`` as the choices topic holds it (None: nothing)."""
        kept = self._people.get(key)
        if kept is None:
            return None
        names = self._names
        doc: dict[str, Any] = {
            "v": 1,
            "c": [[names[i], t, p, o] for i, t, p, o in _PACK.iter_unpack(kept.choices)],
        }
        if kept.deleted:
            doc["d"] = [[e, s.time_ms, s.partition, s.offset] for e, s in kept.deleted.items()]
        return orjson.dumps(doc)

    def restore(
        self, entries: Iterable[tuple[bytes | None, bytes | None, int]], now_ms: int
    ) -> int:
        """Merge what the choices topic holds: (key, value, record timestamp in ms) against
        the wall clock ``now_ms``. An entry older than the window is skipped; so is one that
        cannot be read, and those are counted (returned). A choice this mapping does not
        know is kept (``_index_of``)."""
        if not self.enabled:
            return 0
        now = self._clock()
        bad = 0
        for key, value, timestamp in entries:
            age = max(0.0, (now_ms - timestamp) / 1000)
            if age > self._seconds:
                continue
            read = _decode(key, value, self._index_of)
            if read is None:
                bad += 1
            elif read[1] or read[2]:
                self._keep(read[0], read[1], read[2], now - age)
                self._disordered = True
        return bad

    def _index_of(self, choice: ChoiceKey) -> int | None:
        """The index packed for ``choice``, made on first sight: an entry written by a
        replica on another mapping keeps its choices (they may gate fields here, and are
        written back with the person's entry); None past what an index can count."""
        i = self._index.get(choice)
        if i is None and len(self._names) < _MAX_CHOICES:
            i = self._index[choice] = len(self._names)
            self._names.append(choice)
        return i

    def restored(self) -> None:
        """After :meth:`restore` calls: put the people back in the order they were taken in
        (what is forgotten first goes by it) and apply the window and the bound."""
        self._expire(self._clock())

    def _newest(self, person: PersonWrite, revoked: set[int]) -> dict[int, tuple[int, int, int]]:
        """Per choice index, the person's newest (time, partition, offset) in the batch."""
        # Compared as plain tuples: a Stamp's own comparison costs several times as much.
        newest: dict[int, tuple[int, int, int]] = {}
        keys_of = self._keys
        if not revoked:  # the merged stamps: each field's newest
            for sobject, stamps in person.stamps.items():
                keys = keys_of.get(sobject)
                if keys:
                    for name, stamp in stamps.items():
                        if (i := keys.get(name)) is not None:
                            at = (stamp.time_ms, stamp.partition, stamp.offset)
                            if (old := newest.get(i)) is None or old < at:
                                newest[i] = at
            return newest
        # Step by step, without the revoked events' grants, on every target: the writers
        # revoke a late version of a deleted event whole ("grants nothing, on any field"),
        # and a target without a sync state, or keying the selection otherwise, revokes
        # nothing of its own. Its withdrawals stay (no consent is never the wrong side).
        for step in person.steps:
            late = step.index in revoked
            for sobject, values in step.fields.items():
                keys = keys_of.get(sobject)
                if not keys:
                    continue
                for name, value in values.items():
                    i = keys.get(name)
                    if i is None or (late and grants(value)):
                        continue
                    at = (step.stamp.time_ms, step.stamp.partition, step.stamp.offset)
                    if (old := newest.get(i)) is None or old < at:
                        newest[i] = at
        return newest

    def seed(self, held: HeldChoices, people: Iterable[PersonWrite]) -> None:
        """Add to ``held`` what is kept for those of ``people`` whose batch grants something
        (only grants are gated, and only grants of deleted events revoked)."""
        if not self._people:
            return
        horizon = self._clock() - self._seconds
        choices: dict[str, dict[ChoiceKey, Stamp]] = {}
        deleted: dict[str, dict[str, Stamp]] = {}
        for person in people:
            key = person.email_key
            kept = self._people.get(key)
            if kept is None or kept.taken_at < horizon or not _grants_any(person):
                continue
            choices[key] = self._unpack(kept.choices)
            if kept.deleted:
                deleted[key] = kept.deleted
        if choices or deleted:
            held.seed(choices, deleted)

    def _expire(self, now: float) -> int:
        """Drop the people taken in before the window, and the oldest beyond the bound;
        returns how many of them were still within their window."""
        if self._disordered:
            self._people = dict(sorted(self._people.items(), key=lambda item: item[1].taken_at))
            self._disordered = False
        people = self._people
        horizon = now - self._seconds
        over = len(people) - self._limit
        drop = []
        early = 0
        for key, kept in people.items():  # the least recently taken in first
            if over <= 0 and kept.taken_at >= horizon:
                break
            drop.append(key)
            early += kept.taken_at >= horizon
            over -= 1
        for key in drop:
            del people[key]
        return early

    def _unpack(self, packed: bytes) -> dict[ChoiceKey, Stamp]:
        names = self._names
        return {names[i]: Stamp(t, p, o) for i, t, p, o in _PACK.iter_unpack(packed)}


def _grants_any(person: PersonWrite) -> bool:
    """Whether the person's batch grants anything (a consent, a selection) on any target."""
    return any(grants(v) for values in person.fields.values() for v in values.values())


def _revoked(key: str, results: Mapping[str, Mapping[str, PersonResult]]) -> set[int]:
    """The batch indexes of the person's events a writer revoked (late versions of deleted
    events, whole)."""
    return {
        i for answers in results.values() if (r := answers.get(key)) is not None for i in r.revoked
    }


_MAX_INT = (2**63, 2**32, 2**63)
#: Choices an index can name (the packed "H").
_MAX_CHOICES = 2**16


def _decode(
    key: bytes | None, value: bytes | None, index_of: Callable[[ChoiceKey], int | None]
) -> tuple[str, dict[int, tuple[int, int, int]], dict[str, Stamp]] | None:
    """An entry of the choices topic (:meth:`RecentChoices.export`), or None if unreadable."""
    try:
        doc = orjson.loads(value or b"")
        person = (key or b"").decode("utf-8")
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (person and isinstance(doc, dict) and doc.get("v") == 1):
        return None
    newest: dict[int, tuple[int, int, int]] = {}
    deleted: dict[str, Stamp] = {}
    try:
        for choice, *at in doc.get("c", ()):
            stamp = _stamp(at)
            if not (
                isinstance(choice, list)
                and len(choice) >= 2
                and all(type(c) is str for c in choice)
            ):
                return None
            if stamp is None:
                return None
            if (i := index_of(tuple(choice))) is not None:
                newest[i] = stamp
        for event_id, *at in doc.get("d", ()):
            stamp = _stamp(at)
            if stamp is None or not isinstance(event_id, str):
                return None
            deleted[event_id] = Stamp(*stamp, event_id)
    except (TypeError, ValueError):  # not a list, or not of the expected length
        return None
    return person, newest, deleted


def _stamp(at: list[Any]) -> tuple[int, int, int] | None:
    """(time, partition, offset) if ``at`` is three ints in range."""
    if len(at) != 3 or not all(
        type(n) is int and 0 <= n < top for n, top in zip(at, _MAX_INT, strict=True)
    ):
        return None
    return at[0], at[1], at[2]
