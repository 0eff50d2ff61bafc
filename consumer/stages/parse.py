"""Parse stage: one Kafka message value in, one of accepted / ignored / rejected out.

Pure: no I/O, no clock. Every way a value can be wrong gets its own ``error_class`` (used in
outcomes, DLQ headers and metric labels) and a reason precise enough to fix the producer.

Types are strict where Didomi documents them (ids and values are strings, ``enabled`` a
boolean, timestamps ISO-8601 strings). An event's time is kept to the millisecond (what
Salesforce and the sync state hold) and may not be more than ``max_future_skew_seconds`` after
the Kafka record's own timestamp: a clock gone wrong must not stamp a record with a date in
the future that every real later choice would then lose against. User entities carry the
person's GDPR state, so they are applied only when ``gdpr`` is synced; a ``user.updated``
applies what changed between its old and new entity. Deletions are ignored unless the mapping
says ``withdraw`` (``on_user_deleted``, ``on_event_deleted``).

Whatever a rejected or ignored result repeats from the input is clipped here, with the limits
of :mod:`consumer.model.outcomes` (which clips again, harmlessly): a name quoted inside a reason
to ``MAX_NAME_CHARS``, so that the reason keeps its shape, and ids to ``MAX_ID_CHARS``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from consumer.model.changes import (
    Accepted,
    ConsentChange,
    Ignored,
    ParseResult,
    Rejected,
    epoch_ms,
)
from consumer.model.events import (
    KNOWN_TYPES,
    ConsentEvent,
    Consents,
    Envelope,
    PreferenceSelection,
    Purpose,
    User,
)
from consumer.model.messages import email_key
from consumer.model.outcomes import (
    MAX_CODE_CHARS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    clip,
)

_ENVELOPE: TypeAdapter[Any] = TypeAdapter(Envelope)

#: The latest event time taken, in milliseconds: 13 digits, what the sync state is sized for
#: (2286-11-20); times before 1970 are refused too.
LATEST_EVENT_MS = 9_999_999_999_999
#: Salesforce's Email field holds at most 80 characters.
MAX_EMAIL_LENGTH = 80
#: Longest validation or JSON error message quoted in a reason (pydantic's own are shorter;
#: this bounds any that would repeat a value). A reason quotes at most five of them.
_ERROR_MESSAGE_CHARS = 100
# Deliberately loose: quotes and backslashes are legal in a local part and must be matched,
# but whitespace, control characters or a second "@" can never be an email Salesforce stores.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class ParseRules:
    """What the parse stage accepts (from Settings and the mapping file)."""

    regulations: Collection[str] = ("gdpr",)
    max_message_bytes: int = 1_048_576
    #: How far an event's time may be after its Kafka record's timestamp.
    max_future_skew_seconds: float = 300.0
    #: What ``user.deleted`` and ``event.deleted`` do (the mapping's ``on_*_deleted``).
    on_user_deleted: str = "ignore"
    on_event_deleted: str = "ignore"
    #: The purposes and preferences some target maps; None: every one. A malformed part of
    #: a purpose is left out of the event (not a reason to reject its other choices); when
    #: it is mapped, the outcome says so and the event is dead-lettered.
    mapped_purposes: frozenset[str] | None = None
    mapped_preferences: frozenset[str] | None = None


def parse_message(
    value: bytes | None, rules: ParseRules, record_time_ms: int | None = None
) -> ParseResult:
    """Turn one Kafka message value into a parse result. Never raises.

    ``record_time_ms`` is the Kafka record's timestamp: the bound for the event's time (judged
    against the record, not the wall clock, so a backlog or a replay is judged the same).
    """
    if value is None or len(value) == 0:
        return Rejected("EMPTY_MESSAGE", "the message value is empty (a tombstone or a bug)")
    if len(value) > rules.max_message_bytes:
        return Rejected(
            "MESSAGE_TOO_LARGE",
            f"the message is {len(value)} bytes, over the limit of {rules.max_message_bytes}",
        )
    malformed: Sequence[str] = ()
    try:
        envelope = _ENVELOPE.validate_json(value)
    except ValidationError as exc:
        salvaged = _salvage(value, exc, rules)
        if salvaged is None:
            return _rejected(value, exc)
        envelope, malformed = salvaged
    try:
        result = _interpret(envelope, rules, record_time_ms)
    except OverflowError:
        # Valid ISO 8601 with no UTC equivalent (e.g. 0001-01-01T00:00:00+01:00): rejected,
        # since raising here would stop the poll loop on every replay of the message.
        return Rejected(
            "SCHEMA_VALIDATION",
            "created_at/updated_at: the timestamp is out of range once converted to UTC",
            envelope["type"],
        )
    if isinstance(result, Accepted):
        if malformed:
            result.change.malformed = clip("; ".join(malformed), MAX_REASON_CHARS)
        # A later version's updated_at orders it among the event's versions: bounded like
        # the event's time, or a future one would outrank every real edit after it.
        moment = epoch_ms(result.change.event_time)
        version = result.change.version_ms
        latest = moment if version is None else max(moment, version)
        if moment < 0 or latest > LATEST_EVENT_MS:
            return _out_of_range(result.change, moment if moment < 0 else latest)
        if record_time_ms is not None and record_time_ms > 0:
            return _bounded(result, latest, record_time_ms, rules.max_future_skew_seconds)
    return result


#: Where the applied entity's purposes are, by event type (``old_entity`` is never validated).
_APPLIED = {"entity", "new_entity"}


def _salvage(
    value: bytes, invalid: ValidationError, rules: ParseRules
) -> tuple[Any, list[str]] | None:
    """The envelope without the malformed parts of its purposes, and the mapped ones among
    them described, when they are all that is wrong with it; None otherwise (the message
    is rejected).

    Didomi's event carries several choices: one malformed preference or purpose must not
    reject a withdrawal beside it. What is left out is its enabled flag, a preference (or
    its whole ``values`` when that is no object) or, when even its id cannot be read, the
    purpose. Parts no target maps are left out as any other key the sync does not use.
    """
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    parts: dict[_Part, str] = {}
    for err in invalid.errors(include_url=False, include_input=False):
        loc = err["loc"]
        # (type tag, "parameters", entity key, "consents", "purposes", i, ...)
        if (
            len(loc) < 6
            or loc[1] != "parameters"
            or loc[2] not in _APPLIED
            or loc[3:5] != ("consents", "purposes")
            or not isinstance(loc[5], int)
        ):
            return None
        path = ".".join(str(p) for p in loc[3:])
        parts.setdefault(_part(loc[5:]), f"{clip(path, MAX_NAME_CHARS)}: {clip(err['msg'], 60)}")
    try:
        purposes = doc["parameters"][loc[2]]["consents"]["purposes"]
    except (KeyError, TypeError):
        return None
    if not isinstance(purposes, list):
        return None
    malformed: list[str] = []
    for (i, kind, pref), why in parts.items():
        purpose = purposes[i] if i < len(purposes) else None
        if (kind is None or (i, None, None) not in parts) and _mapped_part(
            purpose, kind, pref, rules
        ):
            malformed.append(why)
    _drop(purposes, parts)
    try:
        return _ENVELOPE.validate_python(doc), malformed
    except ValidationError:
        return None


#: A malformed part of a purpose: its index, and ``"enabled"``, ``"values"`` with a
#: preference (None: the whole ``values``), or None for the whole purpose.
_Part = tuple[int, str | None, str | None]


def _part(loc: tuple[int | str, ...]) -> _Part:
    """The part of a purpose a validation error's location (from the purpose's index on)
    is in."""
    index, rest = int(loc[0]), loc[1:]
    if rest == ("enabled",):
        return index, "enabled", None
    if rest and rest[0] == "values":
        pref = rest[1] if len(rest) >= 2 and isinstance(rest[1], str) else None
        return index, "values", pref
    return index, None, None


def _drop(purposes: list[Any], parts: Iterable[_Part]) -> None:
    """Take the malformed ``parts`` out of the decoded ``purposes`` (in place)."""
    whole: set[int] = set()
    for i, kind, pref in parts:
        purpose = purposes[i] if i < len(purposes) else None
        if kind is None or not isinstance(purpose, dict):
            whole.add(i)
        elif kind == "enabled":
            purpose.pop("enabled", None)
        elif pref is None:
            purpose.pop("values", None)
        elif isinstance(values := purpose.get("values"), dict):
            values.pop(pref, None)
    if whole:
        purposes[:] = [p for i, p in enumerate(purposes) if i not in whole]


def _mapped_part(purpose: Any, kind: str | None, pref: str | None, rules: ParseRules) -> bool:
    """Whether a malformed part of a purpose is one some target maps (unknown: it is)."""
    purposes, preferences = rules.mapped_purposes, rules.mapped_preferences
    if purposes is None or preferences is None or not isinstance(purpose, dict):
        return True
    purpose_id = purpose.get("id")
    if kind == "enabled":
        return not isinstance(purpose_id, str) or purpose_id in purposes
    if kind == "values":
        if pref is not None:
            return pref in preferences
        # A values that is no object names no preference: it counts as its purpose does.
        return not isinstance(purpose_id, str) or purpose_id in purposes
    values = purpose.get("values")
    return (
        not isinstance(purpose_id, str)
        or purpose_id in purposes
        or not isinstance(values, dict)
        or any(p in preferences for p in values)
    )


def _when(moment_ms: int) -> str:
    """A moment in milliseconds, as ISO 8601 (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=moment_ms)).isoformat()


def _out_of_range(change: ConsentChange, moment_ms: int) -> Rejected:
    return Rejected(
        "EVENT_TIME_OUT_OF_RANGE",
        f"the event time {_when(moment_ms)} is outside 1970-01-01 to 2286-11-20: "
        "no consent choice is dated so (a clock or producer error)",
        change.event_type,
        clip(change.event_id, MAX_ID_CHARS),
        clip(change.organization_user_id, MAX_ID_CHARS),
    )


def _bounded(
    result: Accepted, event_ms: int, record_time_ms: int, skew_seconds: float
) -> ParseResult:
    change = result.change
    ahead = (event_ms - record_time_ms) / 1000
    if ahead <= skew_seconds:
        return result
    return Rejected(
        "EVENT_TIME_IN_FUTURE",
        f"the event time {_when(event_ms)} is {ahead:.0f} s after the Kafka "
        f"record's timestamp; at most {skew_seconds:g} s is allowed (SYNC_MAX_FUTURE_SKEW_SECONDS)",
        change.event_type,
        clip(change.event_id, MAX_ID_CHARS),
        clip(change.organization_user_id, MAX_ID_CHARS),
    )


def _rejected(value: bytes, invalid: ValidationError) -> Rejected:
    """Why a value that did not validate is refused, as precisely as it can be said."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejected(
                "INVALID_UTF8", f"the message is not UTF-8 (bad byte at position {uexc.start})"
            )
        return Rejected(
            "INVALID_JSON", f"the message is not valid JSON: {clip(str(exc), _ERROR_MESSAGE_CHARS)}"
        )
    if not isinstance(doc, dict):
        return Rejected("NOT_AN_OBJECT", f"expected a JSON object, got {_json_kind(doc)}")
    event_type = doc.get("type")
    if not isinstance(event_type, str):
        return Rejected("MISSING_TYPE", "the message has no string 'type'")
    if event_type not in KNOWN_TYPES:
        return Rejected(
            "UNKNOWN_EVENT_TYPE",
            f"unknown event type {clip(event_type, MAX_NAME_CHARS)!r}; "
            f"expected one of {sorted(KNOWN_TYPES)}",
            event_type=clip(event_type, MAX_CODE_CHARS),
        )
    try:
        # The same validation on the decoded document words its errors as Python types
        # ("a valid dictionary"), which is what producers' tooling reports too.
        _ENVELOPE.validate_python(doc)
    except ValidationError as exc:
        invalid = exc
    return _rejected_by_schema(invalid, doc, event_type)


def _interpret(envelope: Any, rules: ParseRules, record_time_ms: int | None) -> ParseResult:
    kind: str = envelope["type"]
    params = envelope["parameters"]
    if kind == "event.created":
        return _from_event(kind, params["entity"], rules)
    if kind == "event.updated":
        entity: ConsentEvent = params["new_entity"]
        before = _applied_before(params.get("old_entity"), entity, rules)
        return _from_event(kind, entity, rules, before)
    if kind == "user.created" or kind == "user.updated":
        previous: tuple[Purpose, ...] | None = None
        if kind == "user.created":
            user: User = params["entity"]
            event_id = user["id"]
        else:
            user = params["new_entity"]
            source = params.get("source")
            event_id = (source.get("id") if source else None) or user["id"]
            previous = _previous_purposes(params.get("old_entity"), user)
        ignored = _not_gdpr(rules, kind, event_id, user)
        if ignored is not None:
            return ignored
        return _from_user(kind, event_id, user, previous)
    if kind == "event.deleted":
        deleted: ConsentEvent = params["entity"]
        if rules.on_event_deleted != "withdraw":
            return _deletion_ignored(kind, deleted, deleted["user"]["organization_user_id"])
        return _from_event(kind, deleted, rules)
    gone: User = params["entity"]
    if rules.on_user_deleted != "withdraw":
        return _deletion_ignored(kind, gone, gone["organization_user_id"])
    ignored = _not_gdpr(rules, kind, gone["id"], gone)
    if ignored is not None:
        return ignored
    bad = _check_email(gone["organization_user_id"], gone["id"], kind)
    if bad is not None:
        return bad
    # The deletion's time: the user's updated_at; without one, when Kafka got the message
    # (created_at would make it lose against every choice since the user was created).
    when = _event_time(gone)
    if not gone.get("updated_at") and record_time_ms is not None and record_time_ms > 0:
        seconds, ms = divmod(record_time_ms, 1000)
        when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=ms * 1000)
    return Accepted(
        ConsentChange(
            event_id=gone["id"],
            event_type=kind,
            organization_user_id=gone["organization_user_id"],
            email_key=email_key(gone["organization_user_id"]),
            event_time=when,
            regulation=None,
            purposes=(),
            full_state=True,
            withdraw_all=True,
        )
    )


def _not_gdpr(rules: ParseRules, kind: str, event_id: str, user: User) -> Ignored | None:
    """Why a user entity is ignored when ``gdpr`` is not synced (it carries the GDPR state)."""
    if "gdpr" in rules.regulations:
        return None
    return _ignored(
        "user entities carry the person's GDPR state; gdpr is not among the synced "
        f"regulations ({', '.join(rules.regulations)})",
        event_id,
        kind,
        user["organization_user_id"],
        _event_time(user),
    )


def _deletion_ignored(kind: str, entity: ConsentEvent | User, org_user_id: str) -> Ignored:
    what = kind.removesuffix(".deleted")
    return _ignored(
        f"deleted {what}s are not synced (on_{what}_deleted: ignore): Salesforce keeps the "
        "last applied state",
        entity["id"],
        kind,
        org_user_id,
        _event_time(entity),
    )


def _from_event(
    event_type: str,
    entity: ConsentEvent,
    rules: ParseRules,
    previous: tuple[Purpose, ...] | None = None,
) -> ParseResult:
    """An event's choices. Dated by its ``created_at``, its place in Didomi's order ("events
    are re-applied in order of their dates"): an update of the event (its approval, a proof
    attached, an edit) does not move its choices after the person's later choices made in
    other events; a later version only sorts after the first within that millisecond
    (:func:`_version_ms`). ``previous``: what the event's earlier version applied
    (``event.updated``); only what differs from it is applied. A deleted event is dated by
    its ``updated_at`` (:func:`_event_time`), after every version of it."""
    org_user_id = entity["user"]["organization_user_id"]
    event_id = entity["id"]
    deleted = event_type == "event.deleted"
    created = _utc(entity["created_at"])
    when = _event_time(entity) if deleted else created
    if entity.get("status") == "pending_approval":
        return _ignored(
            "status is pending_approval: applied only once approved",
            event_id,
            event_type,
            org_user_id,
            when,
        )
    regulation = entity.get("regulation", "gdpr")
    if regulation not in rules.regulations:
        return _ignored(
            f"regulation {clip(regulation, MAX_NAME_CHARS)!r} is not synced "
            f"(synced: {', '.join(rules.regulations)})",
            event_id,
            event_type,
            org_user_id,
            when,
        )
    bad = _check_email(org_user_id, event_id, event_type)
    if bad is not None:
        return bad
    purposes = tuple(entity.get("consents", {}).get("purposes", ()))
    if deleted:
        # Even one granting nothing now: an earlier version of it may have granted what a
        # record still holds under its id (the writer withdraws that).
        purposes = _granted_withdrawn(purposes)
    return Accepted(
        ConsentChange(
            event_id=event_id,
            event_type=event_type,
            organization_user_id=org_user_id,
            email_key=email_key(org_user_id),
            event_time=when,
            regulation=regulation,
            purposes=purposes,
            full_state=False,
            previous_purposes=previous,
            version_ms=None if deleted else _version_ms(entity, created),
        )
    )


def _version_ms(entity: ConsentEvent, created: datetime) -> int | None:
    """A later version of an event: its ``updated_at`` in milliseconds when that is after
    its ``created_at`` (``created``; merge orders it after the first version,
    :data:`VERSION_PARTITION`); None for a first version."""
    updated = entity.get("updated_at")
    if not updated:
        return None
    moment = epoch_ms(_utc(updated))
    return moment if moment > epoch_ms(created) else None


def _applied_before(
    old: dict[str, Any] | None, new: ConsentEvent, rules: ParseRules
) -> tuple[Purpose, ...] | None:
    """The purposes an ``event.updated``'s ``old_entity`` applied, or None (apply the whole
    new version) when there is none, it cannot be read, it is another person's, or it was
    never applied (pending approval, a regulation not synced): an approval applies the
    event whole."""
    if not isinstance(old, dict) or old.get("status") == "pending_approval":
        return None
    if old.get("regulation", "gdpr") not in rules.regulations:
        return None
    user = old.get("user")
    old_id = user.get("organization_user_id") if isinstance(user, dict) else None
    return _old_purposes(old, old_id, new["user"]["organization_user_id"])


def _granted_withdrawn(purposes: tuple[Purpose, ...]) -> tuple[Purpose, ...]:
    """What a deleted event granted, withdrawn: its purposes enabled become disabled and its
    preferences with a selection are cleared (their value fields false); its withdrawals and
    empty selections are left out (nothing to undo that would not grant)."""
    out: list[Purpose] = []
    for purpose in purposes:
        undone: Purpose = {"id": purpose["id"]}
        if purpose.get("enabled") is True:
            undone["enabled"] = False
        cleared: dict[str, PreferenceSelection] = {
            pref: {"value": ""}
            for pref, selection in (purpose.get("values") or {}).items()
            if selection.get("value", "").strip(", ")
        }
        if cleared:
            undone["values"] = cleared
        if len(undone) > 1:
            out.append(undone)
    return tuple(out)


_CONSENTS: TypeAdapter[Consents] = TypeAdapter(Consents)


def _previous_purposes(old: dict[str, Any] | None, new: User) -> tuple[Purpose, ...] | None:
    """The purposes of ``old_entity``, or None (apply the whole new state) when there is none,
    it cannot be read, or it is another person."""
    if not isinstance(old, dict):
        return None
    return _old_purposes(old, old.get("organization_user_id"), new["organization_user_id"])


def _old_purposes(old: dict[str, Any], old_id: object, new_id: str) -> tuple[Purpose, ...] | None:
    """The purposes of an ``old_entity``, without the malformed parts the new entity's are
    salvaged without (so that the two compare part by part: an old entity no better formed
    than the new one must not make the whole new state apply); None when it is another
    person's (``old_id`` against ``new_id``) or its consents cannot be read otherwise."""
    if not isinstance(old_id, str) or email_key(old_id) != email_key(new_id):
        return None
    consents = old.get("consents", {})
    try:
        return tuple(_CONSENTS.validate_python(consents).get("purposes", ()))
    except ValidationError as exc:
        invalid = exc
    parts: set[_Part] = set()
    for err in invalid.errors(include_url=False, include_input=False):
        loc = err["loc"]
        if len(loc) < 2 or loc[0] != "purposes" or not isinstance(loc[1], int):
            return None
        parts.add(_part(loc[1:]))
    _drop(consents["purposes"], parts)
    try:
        return tuple(_CONSENTS.validate_python(consents).get("purposes", ()))
    except ValidationError:
        return None


def _from_user(
    event_type: str, event_id: str, user: User, previous: tuple[Purpose, ...] | None
) -> ParseResult:
    org_user_id = user["organization_user_id"]
    bad = _check_email(org_user_id, event_id, event_type)
    if bad is not None:
        return bad
    return Accepted(
        ConsentChange(
            event_id=event_id,
            event_type=event_type,
            organization_user_id=org_user_id,
            email_key=email_key(org_user_id),
            event_time=_event_time(user),
            regulation=None,
            purposes=tuple(user.get("consents", {}).get("purposes", ())),
            full_state=True,
            previous_purposes=previous,
        )
    )


def _check_email(org_user_id: str, event_id: str, event_type: str) -> Rejected | None:
    key = org_user_id.strip()
    if len(key) > MAX_EMAIL_LENGTH:
        return Rejected(
            "INVALID_EMAIL",
            f"organization_user_id is {len(key)} characters; a Salesforce email holds at most "
            f"{MAX_EMAIL_LENGTH}",
            event_type,
            clip(event_id, MAX_ID_CHARS),
            clip(org_user_id, MAX_ID_CHARS),
        )
    if not _EMAIL.match(key):
        return Rejected(
            "INVALID_EMAIL",
            "organization_user_id is not an email address (it is matched against the record's "
            "email)",
            event_type,
            clip(event_id, MAX_ID_CHARS),
            clip(org_user_id, MAX_ID_CHARS),
        )
    return None


def _rejected_by_schema(exc: ValidationError, doc: dict[str, Any], event_type: str) -> Rejected:
    errors = exc.errors(include_url=False, include_input=False)
    parts: list[str] = []
    error_class = "SCHEMA_VALIDATION"
    for err in errors[:5]:
        # The first element of loc is the union's tag (the event type); drop it.
        # Dict keys (a preference's value ids) are the producer's: never repeat a long one.
        loc = [clip(str(p), MAX_NAME_CHARS) for p in err["loc"]]
        if loc and loc[0] == event_type:
            loc = loc[1:]
        path = ".".join(loc) or "(message)"
        if loc and loc[-1] == "organization_user_id" and err["type"] == "missing":
            error_class = "MISSING_ORGANIZATION_USER_ID"
        parts.append(f"{path}: {clip(err['msg'], _ERROR_MESSAGE_CHARS)}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    params = doc.get("parameters")
    entity: Any = None
    if isinstance(params, dict):
        entity = params.get("entity") or params.get("new_entity")
    event_id = entity.get("id") if isinstance(entity, dict) else None
    org_user_id: Any = None
    if isinstance(entity, dict):
        user = entity.get("user")
        org_user_id = (
            user.get("organization_user_id")
            if isinstance(user, dict)
            else entity.get("organization_user_id")
        )
    return Rejected(
        error_class,
        "; ".join(parts),
        event_type,
        clip(event_id, MAX_ID_CHARS) if isinstance(event_id, str) else None,
        clip(org_user_id, MAX_ID_CHARS) if isinstance(org_user_id, str) else None,
    )


def _utc(moment: datetime) -> datetime:
    # Didomi sends UTC with a Z; a naive timestamp is taken as UTC so comparisons never fail.
    # Kept to the millisecond: what Salesforce and the sync state hold, so that every ordering
    # decision (within a batch and against a record's state) compares the same values.
    # Most timestamps are whole milliseconds already: replace() with a keyword costs a
    # microsecond, a third of this function, once per event.
    micro = moment.microsecond
    if micro % 1000:
        moment = moment.replace(microsecond=micro - micro % 1000)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _event_time(entity: ConsentEvent | User) -> datetime:
    """When a user's state was made, or an event deleted: ``updated_at`` (never before
    ``created_at``: a deletion dated before the grants it undoes would undo none)."""
    created = _utc(entity["created_at"])
    updated = entity.get("updated_at")
    return max(created, _utc(updated)) if updated else created


def _ignored(
    reason: str, event_id: str, event_type: str, org_user_id: str, when: datetime
) -> Ignored:
    """An ignored result; what it repeats from the input is clipped."""
    return Ignored(
        reason, clip(event_id, MAX_ID_CHARS), event_type, clip(org_user_id, MAX_ID_CHARS), when
    )


def _json_kind(doc: object) -> str:
    if doc is None:
        return "null"
    if isinstance(doc, list):
        return "an array"
    if isinstance(doc, bool):
        return "a boolean"
    if isinstance(doc, str):
        return "a string"
    return "a number"
