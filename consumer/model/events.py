"""The Didomi webhook envelope that arrives on the input topic, as pydantic validates it.

Only what the sync uses is described, strictly: ``"yes"`` is not a boolean, ``42`` is not an
email, a timestamp is an ISO-8601 string. Every other key Didomi sends is accepted and
ignored, so a new field on Didomi's side never rejects a message. They are ``TypedDict``s, not
models: validating JSON into plain dicts costs a quarter of building a model per nested object,
and this runs once per event (``schemas/input-envelope.schema.json`` is generated from them).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BeforeValidator, Field, StrictBool, StrictStr
from typing_extensions import TypedDict

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


class PreferenceSelection(TypedDict):
    """The selected value ids of one preference, as Didomi's comma-separated list."""

    value: NotRequired[StrictStr]


class Purpose(TypedDict):
    """One purpose of a consent state; ``enabled`` None (or absent) means no choice on the
    purpose itself."""

    id: Annotated[StrictStr, Field(min_length=1)]
    enabled: NotRequired[StrictBool | None]
    values: NotRequired[dict[str, PreferenceSelection] | None]


class Consents(TypedDict):
    """The consent state carried by users (whole state) and events (partial state)."""

    purposes: NotRequired[list[Purpose]]


class EventUser(TypedDict):
    """The user an event belongs to."""

    organization_user_id: Annotated[StrictStr, Field(min_length=1)]


class ConsentEvent(TypedDict):
    """A Didomi consent event (``event.*`` entities): the choices made in that event only.
    ``status`` is ``confirmed`` and ``regulation`` ``gdpr`` when absent."""

    id: Annotated[StrictStr, Field(min_length=1)]
    created_at: Timestamp
    updated_at: NotRequired[Timestamp | None]
    status: NotRequired[Literal["confirmed", "pending_approval"]]
    regulation: NotRequired[StrictStr]
    user: EventUser
    consents: NotRequired[Consents]


class User(TypedDict):
    """A Didomi user (``user.*`` entities): the person's whole current state."""

    id: Annotated[StrictStr, Field(min_length=1)]
    organization_user_id: Annotated[StrictStr, Field(min_length=1)]
    created_at: Timestamp
    updated_at: NotRequired[Timestamp | None]
    consents: NotRequired[Consents]


class Source(TypedDict):
    """What caused an update (``*.updated`` only)."""

    id: NotRequired[StrictStr | None]


class EventCreatedParams(TypedDict):
    """``parameters`` of ``event.created`` and ``event.deleted``."""

    entity: ConsentEvent


class EventUpdatedParams(TypedDict):
    """``parameters`` of ``event.updated``: the choices that differ between ``old_entity``
    and ``new_entity`` are applied (all of ``new_entity``'s when ``old_entity`` is absent,
    unreadable or was never applied, so a malformed one does not reject the message)."""

    source: NotRequired[Source | None]
    old_entity: NotRequired[Any]
    new_entity: ConsentEvent


class UserCreatedParams(TypedDict):
    """``parameters`` of ``user.created`` and ``user.deleted``."""

    entity: User


class UserUpdatedParams(TypedDict):
    """``parameters`` of ``user.updated``: the fields that differ between ``old_entity`` and
    ``new_entity`` are applied (the whole new state when ``old_entity`` is absent or
    unreadable, so a malformed one does not reject the message)."""

    source: NotRequired[Source | None]
    old_entity: NotRequired[Any]
    new_entity: User


class EventCreated(TypedDict):
    """Envelope of ``event.created``."""

    type: Literal["event.created"]
    parameters: EventCreatedParams


class EventUpdated(TypedDict):
    """Envelope of ``event.updated``."""

    type: Literal["event.updated"]
    parameters: EventUpdatedParams


class EventDeleted(TypedDict):
    """Envelope of ``event.deleted``."""

    type: Literal["event.deleted"]
    parameters: EventCreatedParams


class UserCreated(TypedDict):
    """Envelope of ``user.created``."""

    type: Literal["user.created"]
    parameters: UserCreatedParams


class UserUpdated(TypedDict):
    """Envelope of ``user.updated``."""

    type: Literal["user.updated"]
    parameters: UserUpdatedParams


class UserDeleted(TypedDict):
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
