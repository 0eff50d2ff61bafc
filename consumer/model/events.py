"""Pydantic models of the Didomi webhook envelope that arrives on the input topic.

Only what the sync needs is modelled strictly; everything else Didomi sends is kept
(``extra="allow"``) so that a new field on Didomi's side never rejects a message.
Types that decide what gets written (ids, booleans, the selected values) are strict:
``"yes"`` is not a boolean and ``42`` is not an email.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
)

_ISO_8601 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_8601_string(value: Any) -> Any:
    # Didomi sends ISO-8601 strings; pydantic would also take a number or a string of digits
    # as seconds since the epoch, which no Didomi payload holds: refused, not guessed.
    if not isinstance(value, str) or not _ISO_8601.match(value):
        raise ValueError("must be an ISO-8601 date and time string (2026-11-20T09:14:03.512Z)")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_8601_string)]
"""An ISO-8601 date-time string, nothing else."""

EventType = Literal[
    "event.created",
    "event.updated",
    "event.deleted",
    "user.created",
    "user.updated",
    "user.deleted",
]


class _Open(BaseModel):
    """Base of every Didomi object: only what the sync uses is modelled (and validated
    strictly); every other key is accepted and ignored, so a new field on Didomi's side never
    rejects a message and costs nothing to parse."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class PreferenceSelection(_Open):
    """The selected value ids of one preference, as Didomi's comma-separated list."""

    value: StrictStr = ""


class Purpose(_Open):
    """One purpose of a consent state; ``enabled`` None means no choice on the purpose itself."""

    id: Annotated[StrictStr, Field(min_length=1)]
    enabled: StrictBool | None = None
    values: dict[str, PreferenceSelection] | None = None


class Consents(_Open):
    """The consent state carried by users (whole state) and events (partial state)."""

    purposes: list[Purpose] = Field(default_factory=list)


class EventUser(_Open):
    """The user an event belongs to."""

    organization_user_id: Annotated[StrictStr, Field(min_length=1)]


class ConsentEvent(_Open):
    """A Didomi consent event (``event.*`` entities): the choices made in that event only."""

    id: Annotated[StrictStr, Field(min_length=1)]
    created_at: Timestamp
    updated_at: Timestamp | None = None
    status: Literal["confirmed", "pending_approval"] = "confirmed"
    regulation: StrictStr = "gdpr"
    user: EventUser
    consents: Consents = Field(default_factory=Consents)


class User(_Open):
    """A Didomi user (``user.*`` entities): the person's whole current state."""

    id: Annotated[StrictStr, Field(min_length=1)]
    organization_user_id: Annotated[StrictStr, Field(min_length=1)]
    created_at: Timestamp
    updated_at: Timestamp | None = None
    consents: Consents = Field(default_factory=Consents)


class Source(_Open):
    """What caused an update (``*.updated`` only)."""

    id: StrictStr | None = None


class EventCreatedParams(_Open):
    """``parameters`` of ``event.created`` and ``event.deleted``."""

    entity: ConsentEvent


class EventUpdatedParams(_Open):
    """``parameters`` of ``event.updated``; only ``new_entity`` is applied (``old_entity`` is
    not read, so a malformed one does not reject the message)."""

    source: Source | None = None
    new_entity: ConsentEvent


class UserCreatedParams(_Open):
    """``parameters`` of ``user.created`` and ``user.deleted``."""

    entity: User


class UserUpdatedParams(_Open):
    """``parameters`` of ``user.updated``: the fields that differ between ``old_entity`` and
    ``new_entity`` are applied (the whole new state when ``old_entity`` is absent or
    unreadable, so a malformed one does not reject the message)."""

    source: Source | None = None
    old_entity: dict[str, Any] | None = None
    new_entity: User


class EventCreated(_Open):
    """Envelope of ``event.created``."""

    type: Literal["event.created"]
    parameters: EventCreatedParams


class EventUpdated(_Open):
    """Envelope of ``event.updated``."""

    type: Literal["event.updated"]
    parameters: EventUpdatedParams


class EventDeleted(_Open):
    """Envelope of ``event.deleted``."""

    type: Literal["event.deleted"]
    parameters: EventCreatedParams


class UserCreated(_Open):
    """Envelope of ``user.created``."""

    type: Literal["user.created"]
    parameters: UserCreatedParams


class UserUpdated(_Open):
    """Envelope of ``user.updated``."""

    type: Literal["user.updated"]
    parameters: UserUpdatedParams


class UserDeleted(_Open):
    """Envelope of ``user.deleted``."""

    type: Literal["user.deleted"]
    parameters: UserCreatedParams


Envelope = Annotated[
    EventCreated | EventUpdated | EventDeleted | UserCreated | UserUpdated | UserDeleted,
    Field(discriminator="type"),
]
"""The input message: one Didomi webhook payload."""

KNOWN_TYPES: frozenset[str] = frozenset(
    (
        "event.created",
        "event.updated",
        "event.deleted",
        "user.created",
        "user.updated",
        "user.deleted",
    )
)
