"""The bench's input: people, Didomi events in a realistic mix, and the mappings measured.

Pure and seeded (no I/O, no clock): the same arguments give the same bytes, so runs compare.

The mix is what a Didomi webhook feed looks like for a newsletter and an analytics purpose:
mostly ``event.created`` with a partial consent (the newsletter enabled with a topics and a
frequency preference, or disabled; analytics on or off; one or both purposes), some
``user.updated`` carrying the whole old and new state, some ``event.updated`` (approvals), and
a few that the service ignores (pending approval, a CPRA event). Emails are valid and keyed as
producers must key them (lower-cased); event times only increase.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from consumer.devkit.emulator.fields import CONTACT_CHOICES, CONTACT_MATCH_TARGET

#: External-ID mode: upsert by ``Didomi_Id__c``, 200 people a call and no query. Without a
#: sync state (nothing to read first), so a late event would overwrite a newer choice: the
#: mapping has to say it accepts that.
EXTERNAL_ID_MAPPING = (
    """\
regulations: [gdpr]
targets:
  - sobject: Contact
    upsert_mode: true
    match_field: Email
    external_id_field: Didomi_Id__c
    allow_late_overwrites: true
    create_defaults: {LastName: "Unknown"}
"""
    + CONTACT_CHOICES
)

#: Match mode on Contact alone: a query then a write per 200 people (with the advised sync
#: state, so every newer choice is written): the example mapping's Contact target.
MATCH_MAPPING = "regulations: [gdpr]\ntargets:\n" + CONTACT_MATCH_TARGET

_FIRST = (
    "jane", "john", "ana", "li", "omar", "chloe", "pierre", "sofia", "max", "nora",
    "yuki", "lucas", "emma", "ali", "zoe", "marc", "ines", "tom", "lea", "sam",
)  # fmt: skip
_LAST = (
    "doe", "martin", "garcia", "wang", "smith", "durand", "rossi", "muller", "kim", "silva",
    "nguyen", "dubois", "lopez", "petit", "brown", "moreau", "costa", "leroy", "fischer", "ito",
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
_TOPICS = ("product_news", "offers")
_FREQUENCIES = ("daily", "weekly", "monthly")


def person_email(n: int) -> str:
    """The email of person ``n``: valid, unique per ``n``, capitalised for one in ten people
    (Didomi passes ids as typed; the service compares them ignoring case)."""
    first = _FIRST[n % len(_FIRST)]
    last = _LAST[(n // len(_FIRST)) % len(_LAST)]
    email = f"{first}.{last}{n}@{_DOMAINS[n % len(_DOMAINS)]}"
    return email.capitalize() if n % 10 == 3 else email


def message_key(email: str) -> bytes:
    """The Kafka key producers must use: the lower-cased ``organization_user_id``."""
    return email.strip().lower().encode()


def zipf_chooser(people: int, exponent: float, rng: random.Random) -> Callable[[], int]:
    """A draw of a person index in ``[0, people)`` with P(rank k) proportional to 1/k**s.

    Ranks are spread over the people by a seeded shuffle, so the hot people are not all
    neighbours (their emails, lanes and partitions vary)."""
    if people < 1:
        raise ValueError("at least one person")
    cumulative = list(itertools.accumulate(1.0 / (k**exponent) for k in range(1, people + 1)))
    total = cumulative[-1]
    order = list(range(people))
    rng.shuffle(order)

    def draw() -> int:
        return order[min(bisect.bisect_left(cumulative, rng.random() * total), people - 1)]

    return draw


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as Didomi writes times (``2026-11-20T09:14:03.512Z``)."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Mix:
    """Shares of each kind of message (the rest is ``event.created`` confirmed under GDPR)."""

    user_updated: float = 0.10
    event_updated: float = 0.04
    pending: float = 0.02
    cpra: float = 0.02


class EventFactory:
    """Didomi messages for a population, one at a time (seeded)."""

    def __init__(self, seed: int = 1, mix: Mix | None = None) -> None:
        self._rng = random.Random(seed)
        self._mix = mix or Mix()
        self._serial = itertools.count()

    def _purpose_newsletter(self) -> dict[str, Any]:
        rng = self._rng
        if rng.random() < 0.3:
            return {"id": "newsletter", "enabled": False}
        topics = [t for t in _TOPICS if rng.random() < 0.6] or [rng.choice(_TOPICS)]
        return {
            "id": "newsletter",
            "enabled": True,
            "values": {
                "topics": {"value": ",".join(topics)},
                "frequency": {"value": rng.choice(_FREQUENCIES)},
            },
        }

    def _purpose_analytics(self) -> dict[str, Any]:
        return {"id": "analytics", "enabled": self._rng.random() < 0.5}

    def _partial(self) -> list[dict[str, Any]]:
        """What one consent event carries: one purpose or both."""
        roll = self._rng.random()
        if roll < 0.5:
            return [self._purpose_newsletter()]
        if roll < 0.75:
            return [self._purpose_analytics()]
        return [self._purpose_newsletter(), self._purpose_analytics()]

    def _whole(self) -> list[dict[str, Any]]:
        return [self._purpose_newsletter(), self._purpose_analytics()]

    def message(self, email: str, when_ms: int) -> bytes:
        """One message for ``email`` whose event time is ``when_ms``."""
        n = next(self._serial)
        roll = self._rng.random()
        mix = self._mix
        when = iso_ms(when_ms)
        if roll < mix.user_updated:
            return self._user_updated(n, email, when_ms)
        roll -= mix.user_updated
        event = {
            "id": f"ev-{n:08d}-{self._rng.getrandbits(32):08x}",
            "organization_id": "acme",
            "created_at": when,
            "updated_at": when,
            "status": "confirmed",
            "regulation": "gdpr",
            "user": {"id": f"didomi-{message_key(email).decode()}", "organization_user_id": email},
            "consents": {"purposes": self._partial(), "vendors": {"enabled": [], "disabled": []}},
            "proofs_id": [],
            "metadata": {"channel": "web"},
        }
        if roll < mix.event_updated:
            # An approval: the pending version applied nothing, so the event applies whole,
            # dated by its creation (kept at this record's time, so that times increase).
            old = {**event, "status": "pending_approval"}
            params = {"source": {"id": f"src-{n}", "created_at": when}, "old_entity": old}
            return orjson.dumps(
                {"type": "event.updated", "parameters": {**params, "new_entity": event}}
            )
        roll -= mix.event_updated
        if roll < mix.pending:
            event["status"] = "pending_approval"
        elif roll < mix.pending + mix.cpra:
            event["regulation"] = "cpra"
        return orjson.dumps({"type": "event.created", "parameters": {"entity": event}})

    def _user_updated(self, n: int, email: str, when_ms: int) -> bytes:
        new = self._whole()
        old = [dict(p) for p in new]
        # The old state differs in one purpose: what the person just changed.
        changed = self._rng.randrange(len(old))
        old[changed]["enabled"] = not old[changed]["enabled"]
        old[changed].pop("values", None)
        user_id = f"didomi-{message_key(email).decode()}"
        base = {
            "id": user_id,
            "organization_id": "acme",
            "organization_user_id": email,
            "created_at": "2025-01-01T00:00:00.000Z",
        }
        previous = iso_ms(max(0, when_ms - 86_400_000))
        return orjson.dumps(
            {
                "type": "user.updated",
                "parameters": {
                    "source": {"id": f"src-{n}", "created_at": iso_ms(when_ms)},
                    "old_entity": {
                        **base,
                        "version": 1,
                        "updated_at": previous,
                        "consents": {"purposes": old},
                    },
                    "new_entity": {
                        **base,
                        "version": 2,
                        "updated_at": iso_ms(when_ms),
                        "consents": {"purposes": new},
                    },
                },
            }
        )


@dataclass(frozen=True)
class Backlog:
    """A backlog of ``count`` events over ``people`` people, produced before a run."""

    count: int
    people: int
    #: Person choice: Zipf with this exponent, or None for a seeded permutation (every event a
    #: different person while ``count <= people``, cycling otherwise).
    zipf: float | None = 1.0
    seed: int = 1
    #: Event time of the first event and the step between events (times only increase).
    start_ms: int = 0
    step_ms: int = 10

    def people_order(self) -> Iterator[int]:
        """Person indexes in production order."""
        rng = random.Random(self.seed * 7919 + 1)
        if self.zipf is None:
            order = list(range(self.people))
            rng.shuffle(order)
            for n in range(self.count):
                yield order[n % self.people]
            return
        draw = zipf_chooser(self.people, self.zipf, rng)
        for _ in range(self.count):
            yield draw()

    def records(self) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, event time in ms) for every event, lazily (a million fit in no list)."""
        factory = EventFactory(self.seed)
        for n, person in enumerate(self.people_order()):
            email = person_email(person)
            when = self.start_ms + n * self.step_ms
            yield message_key(email), factory.message(email, when), when


def seed_records(
    people: Sequence[int], *, external_id: bool = True, lead: bool = False
) -> list[dict[str, Any]]:
    """Records for the emulator's seed route: a Contact (or a Lead) per person, holding the
    email (and the External ID) the service will look them up by."""
    out: list[dict[str, Any]] = []
    for n in people:
        email = person_email(n)
        if lead:
            out.append({"Email": email, "LastName": "Lead", "Company": "Acme"})
            continue
        record: dict[str, Any] = {"Email": email, "LastName": "Seeded"}
        if external_id:
            record["Didomi_Id__c"] = email.lower()
        out.append(record)
    return out
