"""What the targets of one batch found their records holding, shared between their writers.

The sync state lives on each record, so a record holds only what the service wrote to it. A
Lead made (by a web form, by hand) after a person's withdrawal was written to their Contact
holds none of it, and a grant made before the withdrawal but delivered after it (a Didomi
retry, a replay, a redrive) would be written there: a wrong consent. The stamps the other
targets' records hold for the same choice (``purposes.x``, ``preferences.y`` ...) close that:
each stateful writer posts, per person and choice, the newest stamp its records hold, and
waits for the batch's other stateful writers to post theirs before it plans a write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from consumer.model.changes import Stamp


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
        self._held: dict[str, dict[str, Stamp]] = {}
        self._settled = asyncio.Event()
        if not self._waiting:
            self._settled.set()

    def alone(self, sobject: str) -> bool:
        """Whether no other target writes this batch (then there is nothing to exchange)."""
        return self._sobjects <= {sobject}

    def post(self, sobject: str, held: Mapping[str, Mapping[str, Stamp]]) -> None:
        """Add what ``sobject``'s records hold: email key -> choice -> newest stamp."""
        mine = self._held
        for key, stamps in held.items():
            have = mine.get(key)
            if have is None:
                mine[key] = dict(stamps)
                continue
            for choice, stamp in stamps.items():
                old = have.get(choice)
                if old is None or old < stamp:
                    have[choice] = stamp
        self.leave(sobject)

    def leave(self, sobject: str) -> None:
        """``sobject``'s writer posts nothing (more) for this batch."""
        self._waiting.discard(sobject)
        if not self._waiting:
            self._settled.set()

    async def settled(self) -> None:
        """Return once every writer of the batch has posted or left."""
        await self._settled.wait()

    def of(self, key: str) -> Mapping[str, Stamp]:
        """The newest stamp per choice the person's records hold, across the targets."""
        return self._held.get(key, {})
