"""What the targets of one batch found their records holding, shared between their writers.

The sync state lives on each record, so a record holds only what the service wrote to it. A
Lead made (by a web form, by hand) after a person's withdrawal was written to their Contact
holds none of it, and a grant made before the withdrawal but delivered after it (a Didomi
retry, a replay, a redrive) would be written there: a wrong consent. The stamps the other
targets' records hold for the same choice (``("purposes", P)`` ..., ``ChoiceKey``) close that:
each stateful writer posts, per person and choice, the newest stamp its records hold, and
waits for the batch's other stateful writers to post theirs before it plans a write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TypeVar

from consumer.model.changes import ChoiceKey, Stamp

#: A choice (held stamps) or a deleted event's id (tombstones).
_K = TypeVar("_K", str, ChoiceKey)


class HeldChoices:
    """Per person (email key) and choice, the newest stamp any target's record holds.

    Made per batch for the writers that write it; each either posts once it has read its
    records (:meth:`post`) or leaves (:meth:`leave`: no sync state, or it is done, failed or
    cancelled), so that a writer waiting in :meth:`settled` never waits for one that will not
    post. Posting again (a retry round's fresh read) only adds newer stamps.

    After a pause the engine's write gate lets one write go first and holds the others until
    it is answered; the writers of that write's batch go with it (they share this object as
    the gate's ``owner``), or the first would wait here for ever for one held at the gate.
    """

    def __init__(self, sobjects: Iterable[str]) -> None:
        self._sobjects = frozenset(sobjects)
        self._waiting = set(self._sobjects)
        self._held: dict[str, dict[ChoiceKey, Stamp]] = {}
        #: Per person, the deleted events any target's records remember (event id as the
        #: sync state shows it -> the deletion's stamp).
        self._deleted: dict[str, dict[str, Stamp]] = {}
        self._settled = asyncio.Event()
        if not self._waiting:
            self._settled.set()

    def seed(
        self,
        held: Mapping[str, Mapping[ChoiceKey, Stamp]],
        deleted: Mapping[str, Mapping[str, Stamp]],
    ) -> None:
        """Add what no record holds but the service took in for these people in earlier
        batches (the engine's ``RecentChoices``): it gates like a record's stamps, and
        nobody waits for it."""
        _merge_newest(self._held, held)
        _merge_newest(self._deleted, deleted)

    def alone(self, sobject: str) -> bool:
        """Whether no other target writes this batch (then there is nothing to exchange)."""
        return self._sobjects <= {sobject}

    def post(
        self,
        sobject: str,
        held: Mapping[str, Mapping[ChoiceKey, Stamp]],
        deleted: Mapping[str, Mapping[str, Stamp]] | None = None,
    ) -> None:
        """Add what ``sobject``'s records hold: email key -> choice -> newest stamp, and
        email key -> deleted event id -> the deletion's stamp."""
        _merge_newest(self._held, held)
        _merge_newest(self._deleted, deleted or {})
        self.leave(sobject)

    def leave(self, sobject: str) -> None:
        """``sobject``'s writer posts nothing (more) for this batch."""
        self._waiting.discard(sobject)
        if not self._waiting:
            self._settled.set()

    async def settled(self) -> None:
        """Return once every writer of the batch has posted or left."""
        await self._settled.wait()

    def of(self, key: str) -> Mapping[ChoiceKey, Stamp]:
        """The newest stamp per choice the person's records hold, across the targets."""
        return self._held.get(key, {})

    def deleted_of(self, key: str) -> Mapping[str, Stamp]:
        """The deleted events the person's records of any target remember."""
        return self._deleted.get(key, {})


def _merge_newest(into: dict[str, dict[_K, Stamp]], more: Mapping[str, Mapping[_K, Stamp]]) -> None:
    for key, stamps in more.items():
        have = into.setdefault(key, {})
        for name, stamp in stamps.items():
            if (old := have.get(name)) is None or old < stamp:
                have[name] = stamp
