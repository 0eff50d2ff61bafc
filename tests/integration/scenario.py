"""A reproducible mix of Didomi events for many people, with the state they must produce.

The expected state is computed here from the choices themselves (not with the service's
mapper), by applying each person's valid events in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TOPICS = ("product_news", "offers")


@dataclass
class Choice:
    """What one event says (None: not mentioned)."""

    newsletter: bool | None = None
    analytics: bool | None = None
    topics: list[str] | None = None
    frequency: str | None = None

    def contact_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.newsletter is not None:
            out["Newsletter_Consent__c"] = self.newsletter
        if self.analytics is not None:
            out["Analytics_Consent__c"] = self.analytics
        if self.topics is not None:
            out["Newsletter_Topics__c"] = ";".join(self.topics) or None
            out["Topic_Product_News__c"] = "product_news" in self.topics
            out["Topic_Offers__c"] = "offers" in self.topics
        if self.frequency is not None:
            out["Newsletter_Frequency__c"] = self.frequency
        return out

    def lead_fields(self) -> dict[str, Any]:
        return {} if self.newsletter is None else {"Newsletter_Consent__c": self.newsletter}

    def purposes(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        if self.topics is not None:
            values["topics"] = {"value": ",".join(self.topics)}
        if self.frequency is not None:
            values["frequency"] = {"value": self.frequency}
        if self.newsletter is not None or values:
            p: dict[str, Any] = {"id": "newsletter", "enabled": self.newsletter}
            if values:
                p["values"] = values
            out.append(p)
        if self.analytics is not None:
            out.append({"id": "analytics", "enabled": self.analytics})
        return out


@dataclass
class Message:
    key: bytes
    value: bytes
    person: int | None
    kind: str  # "valid", "ignored", "rejected"
    choice: Choice | None = None


@dataclass
class Scenario:
    emails: list[str]
    messages: list[Message]
    contact_seed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    lead_seed: dict[int, dict[str, Any]] = field(default_factory=dict)

    def expected_contacts(self) -> dict[int, dict[str, Any]]:
        """Final Contact fields of every person that has a Contact write."""
        state: dict[int, dict[str, Any]] = {}
        for m in self.messages:
            if m.kind != "valid" or m.person is None or m.choice is None:
                continue
            fields = m.choice.contact_fields()
            if fields:
                state.setdefault(m.person, {}).update(fields)
        return state

    def expected_leads(self) -> dict[int, dict[str, Any]]:
        state: dict[int, dict[str, Any]] = {}
        for m in self.messages:
            if m.kind == "valid" and m.person is not None and m.choice is not None:
                fields = m.choice.lead_fields()
                if fields:
                    state.setdefault(m.person, {}).update(fields)
        return state


def person_email(i: int) -> str:
    if i == 7:
        return "o'brien.7@example.com"
    if i == 11:
        return "back\\slash.11@example.com"
    if i == 13:
        return "zoë.13@exämple.de"
    return f"person{i}@example.com"


def _spell(rng: random.Random, email: str) -> str:
    roll = rng.random()
    if roll < 0.15:
        return email.upper()
    if roll < 0.3:
        return email[:1].upper() + email[1:]
    return email


def _random_choice(rng: random.Random, full: bool) -> Choice:
    c = Choice()
    if full or rng.random() < 0.6:
        c.newsletter = rng.random() < 0.5
    if full or rng.random() < 0.5:
        c.analytics = rng.random() < 0.5
    if full or rng.random() < 0.4:
        c.topics = [t for t in TOPICS if rng.random() < 0.5]
    if full or rng.random() < 0.3:
        c.frequency = rng.choice(("weekly", "monthly"))
    if not full and c == Choice():
        c.analytics = True
    return c


def _event(
    event_id: str,
    when: datetime,
    email: str,
    choice: Choice,
    *,
    status: str = "confirmed",
    regulation: str = "gdpr",
) -> dict[str, Any]:
    return {
        "id": event_id,
        "organization_id": "acme",
        "created_at": when.isoformat().replace("+00:00", "Z"),
        "updated_at": when.isoformat().replace("+00:00", "Z"),
        "status": status,
        "regulation": regulation,
        "user": {"id": f"didomi-{email.lower()}", "organization_user_id": email},
        "consents": {"purposes": choice.purposes(), "vendors": {"enabled": [], "disabled": []}},
    }


def build(n_people: int, n_events: int, seed: int = 7, noise: bool = True) -> Scenario:
    """``n_events`` messages for ``n_people`` people; Contacts and Leads seeded for some."""
    rng = random.Random(seed)
    emails = [person_email(i) for i in range(n_people)]
    scenario = Scenario(emails=emails, messages=[])
    for i, email in enumerate(emails):
        if i % 3 != 0:
            base = {"Email": email.upper() if i % 5 == 0 else email, "LastName": f"Person {i}"}
            scenario.contact_seed[i] = [base]
            if i % 50 == 5:  # two Contacts share this email: both must be updated
                scenario.contact_seed[i].append({"Email": email, "LastName": f"Twin {i}"})
        if i % 2 == 0:
            scenario.lead_seed[i] = {"Email": email, "LastName": f"Lead {i}", "Company": "Acme"}
    when = T0
    for n in range(n_events):
        if rng.random() < 0.9:  # a few ties in event time
            when += timedelta(seconds=rng.randint(1, 30))
        person = rng.randrange(n_people)
        email = emails[person]
        key = email.lower().encode()
        spelled = _spell(rng, email)
        roll = rng.random() if noise else 1.0
        if roll < 0.01:
            value = b'{"type": "event.created", "parameters": {"entity": {"id": "' + str(n).encode()
            scenario.messages.append(Message(key, value, person, "rejected"))
            continue
        if roll < 0.03:
            choice = _random_choice(rng, False)
            status, regulation = (
                ("pending_approval", "gdpr") if roll < 0.02 else ("confirmed", "cpra")
            )
            doc = {
                "type": "event.created",
                "parameters": {
                    "entity": _event(
                        f"ev-{n}", when, spelled, choice, status=status, regulation=regulation
                    )
                },
            }
            scenario.messages.append(Message(key, orjson.dumps(doc), person, "ignored"))
            continue
        kind = rng.random()
        if kind < 0.15:
            choice = _random_choice(rng, True)
            user = {
                "id": f"didomi-{email.lower()}",
                "organization_id": "acme",
                "organization_user_id": spelled,
                "version": n,
                "created_at": T0.isoformat().replace("+00:00", "Z"),
                "updated_at": when.isoformat().replace("+00:00", "Z"),
                "consents": {"purposes": choice.purposes()},
            }
            doc = {
                "type": "user.updated",
                "parameters": {
                    "source": {"id": f"src-{n}", "created_at": user["updated_at"]},
                    "new_entity": user,
                },
            }
        elif kind < 0.3:
            choice = _random_choice(rng, False)
            doc = {
                "type": "event.updated",
                "parameters": {"new_entity": _event(f"ev-{n}", when, spelled, choice)},
            }
        else:
            choice = _random_choice(rng, False)
            doc = {
                "type": "event.created",
                "parameters": {"entity": _event(f"ev-{n}", when, spelled, choice)},
            }
        scenario.messages.append(Message(key, orjson.dumps(doc), person, "valid", choice))
    return scenario
