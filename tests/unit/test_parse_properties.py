"""Property tests of the parse stage: whatever a producer puts on the topic, ``parse_message``
returns one clean result and never raises.

Inputs: arbitrary bytes, byte-level corruptions of JSON, arbitrary JSON documents, and valid
Didomi events of every type with random mutations (keys dropped or renamed, values replaced by
other JSON or by the wrong type, huge and exotic unicode strings, deep nesting). Valid events
must still be accepted (or ignored, by the product's rules) with the right fields.

Derandomized, so a failure in CI is a failure on every machine; no example database is written.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumer.model.changes import Accepted, Ignored, ParseResult, Rejected
from consumer.model.events import KNOWN_TYPES
from consumer.model.messages import email_key
from consumer.model.outcomes import MAX_CODE_CHARS, MAX_ID_CHARS
from consumer.stages.parse import MAX_EMAIL_LENGTH, ParseRules, parse_message

settings.register_profile(
    "parse-properties",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Applied per test (not loaded globally, so other modules keep their own settings).
PROPERTY = settings.get_profile("parse-properties")

RULES = ParseRules(regulations=("gdpr",), max_message_bytes=1024 * 1024)
SMALL_RULES = ParseRules(regulations=("gdpr", "cpra"), max_message_bytes=600)

ERROR_CLASSES = frozenset(
    {
        "EMPTY_MESSAGE",
        "MESSAGE_TOO_LARGE",
        "INVALID_UTF8",
        "INVALID_JSON",
        "NOT_AN_OBJECT",
        "MISSING_TYPE",
        "UNKNOWN_EVENT_TYPE",
        "SCHEMA_VALIDATION",
        "MISSING_ORGANIZATION_USER_ID",
        "INVALID_EMAIL",
    }
)
MAX_REASON = 2000
#: Longest run of the input a reason may repeat (checked with windows of this length + 1).
MAX_ECHO = 200
_ECHO_STEP = 50

# --- the invariants ----------------------------------------------------------------------


def echoed(reason: str, raw: str) -> str | None:
    """A piece of ``raw`` longer than MAX_ECHO that ``reason`` repeats, if any.

    Windows of MAX_ECHO + 1 characters every _ECHO_STEP characters: any repeated run of
    MAX_ECHO + _ECHO_STEP characters or more contains one of them.
    """
    width = MAX_ECHO + 1
    for start in range(0, max(1, len(reason) - width + 1), _ECHO_STEP):
        window = reason[start : start + width]
        if len(window) == width and window in raw:
            return window
    return None


def check(value: bytes | None, rules: ParseRules = RULES) -> ParseResult:
    """Parse ``value`` and assert what holds for every input; return the result."""
    result = parse_message(value, rules)  # raising fails the test
    kinds = {Accepted: "accepted", Ignored: "ignored", Rejected: "rejected"}
    assert type(result) in kinds, result
    assert result.kind == kinds[type(result)]
    if isinstance(result, Rejected):
        assert result.error_class in ERROR_CLASSES, result.error_class
        assert result.reason.strip(), result
        assert len(result.reason) < MAX_REASON, (result.error_class, len(result.reason))
        raw = (value or b"").decode("utf-8", errors="replace")
        piece = echoed(result.reason, raw)
        assert piece is None, f"{result.error_class} reason repeats the input: {piece[:80]!r}..."
        if result.organization_user_id is not None:
            assert len(result.organization_user_id) <= MAX_ID_CHARS
        if result.event_id is not None:
            assert len(result.event_id) <= MAX_ID_CHARS
        if result.event_type is not None:
            assert len(result.event_type) <= MAX_CODE_CHARS
    elif isinstance(result, Ignored):
        assert result.reason.strip()
        assert len(result.reason) < MAX_REASON
        raw = (value or b"").decode("utf-8", errors="replace")
        piece = echoed(result.reason, raw)
        assert piece is None, f"ignored reason repeats the input: {piece[:80]!r}..."
        if result.organization_user_id is not None:
            assert len(result.organization_user_id) <= MAX_ID_CHARS
        if result.event_id is not None:
            assert len(result.event_id) <= MAX_ID_CHARS
    else:
        change = result.change
        assert change.email_key == email_key(change.organization_user_id)
        assert len(change.email_key) <= MAX_EMAIL_LENGTH
        assert change.event_time.utcoffset() == timedelta(0)
        assert change.event_type in KNOWN_TYPES
    return result


# --- strategies: bytes and JSON ----------------------------------------------------------

# orjson serializes 64-bit integers only; larger numbers are covered by the byte strategies.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def corrupted(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """Bytes of ``base`` with a few bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


# --- strategies: valid Didomi events -----------------------------------------------------

# Letters, digits, punctuation and symbols of any script; never "@", whitespace or controls.
_email_char = st.characters(exclude_categories=("C", "Z"), exclude_characters="@").filter(
    lambda c: not c.isspace()
)
emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(_email_char, min_size=1, max_size=30),
    st.text(_email_char, min_size=1, max_size=20),
    st.text(_email_char, min_size=1, max_size=10),
)
ids = st.text(min_size=1, max_size=40)
zones: st.SearchStrategy[tzinfo] = st.just(UTC) | st.builds(
    lambda m: timezone(timedelta(minutes=m)), st.integers(-14 * 60, 14 * 60)
)
moments = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)) | st.datetimes(
    datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=zones
)
purpose_docs = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "enabled": st.none() | st.booleans(),
        "enabled_li": st.none() | st.booleans(),
        "values": st.dictionaries(
            st.text(max_size=15),
            st.fixed_dictionaries({}, optional={"value": st.text(max_size=40)}),
            max_size=3,
        ),
        # Unknown keys from Didomi are kept, whatever they hold.
        "x_extra": json_values,
    },
)
consents_docs = st.fixed_dictionaries(
    {"purposes": st.lists(purpose_docs, max_size=4)},
    optional={
        "channels": st.lists(
            st.fixed_dictionaries({"id": st.text(max_size=10), "enabled": st.booleans()}),
            max_size=2,
        ),
        "vendors": json_values,
    },
)


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid Didomi message and the status it must get (accepted or ignored)."""
    event_type = draw(st.sampled_from(sorted(KNOWN_TYPES)))
    email = draw(emails)
    padded = draw(st.sampled_from(("", " ", "  ")))
    created = draw(moments)
    entity: dict[str, Any] = {
        "id": draw(ids),
        "created_at": _stamp(created),
        "consents": draw(consents_docs),
    }
    if draw(st.booleans()):
        entity["updated_at"] = _stamp(draw(moments))
    if draw(st.booleans()):
        entity["organization_id"] = draw(st.text(max_size=20))
    expected = "accepted"
    if event_type.startswith("event."):
        status = draw(st.sampled_from(("confirmed", "pending_approval", None)))
        regulation = draw(st.sampled_from(("gdpr", "cpra", "lgpd", None)))
        if status is not None:
            entity["status"] = status
        if regulation is not None:
            entity["regulation"] = regulation
        if status == "pending_approval" or regulation not in ("gdpr", None):
            expected = "ignored"
        entity["user"] = {"id": draw(ids), "organization_user_id": padded + email + padded}
    else:
        entity["organization_user_id"] = padded + email + padded
        if draw(st.booleans()):
            entity["version"] = draw(st.integers(0, 1000))
    if event_type.endswith(".deleted"):
        expected = "ignored"
    if event_type.endswith(".updated"):
        parameters: dict[str, Any] = {"new_entity": entity}
        if draw(st.booleans()):
            parameters["old_entity"] = dict(entity, id="old-" + entity["id"])
        if draw(st.booleans()):
            parameters["source"] = {"id": draw(st.none() | ids)}
    else:
        parameters = {"entity": entity}
    doc = {"type": event_type, "parameters": parameters}
    if draw(st.booleans()):
        doc["x_webhook_meta"] = draw(json_values)
    return doc, expected


# --- mutations of valid events -----------------------------------------------------------

Path = tuple[str | int, ...]
DEEP = "\x00deep-placeholder\x00"
DEEP_JSON = orjson.dumps(DEEP)

huge_strings = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["x", "é", "\u202e", "\U0001d54f", '"', "\\", "@", "\U0001f600", "a@b.c"]),
    st.integers(1_000, 400_000),
)
unicode_strings = st.text(
    st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60
) | st.sampled_from(["\u202eevil@example.com", "a\u0000@x.com", "\ufeff", "Zoë@exämple.de"])


def _paths(node: Any, prefix: Path = ()) -> list[Path]:
    out: list[Path] = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out.extend(_paths(child, (*prefix, i)))
    return out


def _at(doc: Any, path: Path) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, str):
        return 42
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return {"0": value[0] if value else None}
    if isinstance(value, dict):
        return list(value.values())
    return False


# Timestamps pydantic accepts but that may not survive conversion to UTC, and other oddities.
edge_times = (
    st.builds(
        lambda moment: moment.isoformat(),
        st.datetimes(
            timezones=st.none()
            | st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439))
        ),
    )
    | st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:00:60Z",
            "2026-11-22",
            "1e308",
            "",
        ]
    )
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)

MUTATIONS = ("drop", "rename", "replace", "wrong_type", "huge", "unicode", "deep", "add", "time")


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with one to four random mutations, serialized."""
    doc, _ = draw(valid_events())
    # Uniform choices (seeded by Hypothesis): sampled_from would favour the first paths.
    rnd = draw(st.randoms(use_true_random=True))
    deep: int | None = None
    for _ in range(draw(st.integers(1, 4))):
        op = rnd.choice(MUTATIONS)
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        if op == "time":
            paths = [p for p in paths if p[-1] in ("created_at", "updated_at")] or paths
        elif op in ("rename", "add"):
            paths = [p for p in paths if isinstance(_at(doc, p[:-1]), dict)] or paths
        path = rnd.choice(paths)
        parent = _at(doc, path[:-1])
        last = path[-1]
        if op == "drop":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            new_key = draw(st.text(max_size=20) | huge_strings | unicode_strings)
            value = parent.pop(last)
            parent[new_key] = _wrong_type(value) if draw(st.booleans()) else value
        elif op == "replace":
            parent[last] = draw(json_values)
        elif op == "wrong_type":
            parent[last] = _wrong_type(parent[last])
        elif op == "huge":
            parent[last] = draw(huge_strings)
        elif op == "unicode":
            parent[last] = draw(unicode_strings)
        elif op == "deep" and deep is None:
            deep = draw(st.integers(2, 3000))
            parent[last] = DEEP
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
        elif op == "time":
            parent[last] = draw(edge_times)
    raw = orjson.dumps(doc)
    if deep is not None:
        # orjson.dumps stops at 255 levels; nest by hand, as a producer could.
        raw = raw.replace(DEEP_JSON, b"[" * deep + b"]" * deep, 1)
    return raw


# --- properties --------------------------------------------------------------------------


@PROPERTY
@given(value=st.none() | st.binary(max_size=2048), small=st.booleans())
@example(value=b"", small=False)
@example(value=b"\xff\xfe\x00{", small=False)
@example(value=b"[" * 10_000 + b"]" * 10_000, small=False)
@example(value=b"{" * 5_000, small=False)
def test_arbitrary_bytes_never_raise(value: bytes | None, small: bool) -> None:
    check(value, SMALL_RULES if small else RULES)


@PROPERTY
@given(
    value=corrupted(st.builds(orjson.dumps, json_values))
    | corrupted(st.tuples(valid_events()).map(lambda t: orjson.dumps(t[0][0])))
)
def test_corrupted_json_bytes_never_raise(value: bytes) -> None:
    check(value)


@PROPERTY
@given(doc=json_values)
def test_arbitrary_json_documents_are_rejected_cleanly(doc: Any) -> None:
    result = check(orjson.dumps(doc))
    assert isinstance(result, Rejected)  # nothing random is a Didomi event
    if not isinstance(doc, dict):
        assert result.error_class == "NOT_AN_OBJECT"
    elif not isinstance(doc.get("type"), str):
        assert result.error_class == "MISSING_TYPE"


@PROPERTY
@given(
    event_type=st.sampled_from(sorted(KNOWN_TYPES)) | st.text(max_size=300) | huge_strings,
    parameters=json_values,
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
def test_json_documents_with_a_type_are_rejected_cleanly(
    event_type: str, parameters: Any, extra: dict[str, Any]
) -> None:
    doc = {**extra, "type": event_type, "parameters": parameters}
    result = check(orjson.dumps(doc))
    assert isinstance(result, Rejected)
    if event_type not in KNOWN_TYPES:
        assert result.error_class in ("UNKNOWN_EVENT_TYPE", "MESSAGE_TOO_LARGE")


@PROPERTY
@given(case=valid_events())
def test_valid_events_are_accepted_or_ignored_by_rule(case: tuple[dict[str, Any], str]) -> None:
    doc, expected = case
    result = check(orjson.dumps(doc))
    assert result.kind == expected, result
    params = doc["parameters"]
    entity = params.get("entity") or params["new_entity"]
    user_id = (entity.get("user") or entity)["organization_user_id"]
    if isinstance(result, Ignored):
        assert result.event_type == doc["type"]
        assert result.organization_user_id == user_id
        return
    assert isinstance(result, Accepted)
    change = result.change
    assert change.event_type == doc["type"]
    assert change.organization_user_id == user_id
    assert change.email_key == user_id.strip().lower()
    assert change.full_state is doc["type"].startswith("user.")
    source_id = (params.get("source") or {}).get("id") if doc["type"] == "user.updated" else None
    assert change.event_id == (source_id or entity["id"])

    def ms(text: str) -> datetime:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # Kept to the millisecond, like Salesforce and the sync state.
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    created = ms(entity["created_at"])
    updated = ms(entity["updated_at"]) if entity.get("updated_at") else None
    if doc["type"].startswith("event."):
        # Its place in Didomi's order: its creation; a later version says it is one.
        assert change.event_time == created
        later = updated is not None and updated > created
        assert (change.version_ms is not None) is later
    else:
        # A user's state: its last update (never before its creation).
        assert change.event_time == max(created, updated or created)
    assert [p["id"] for p in change.purposes] == [p["id"] for p in entity["consents"]["purposes"]]


def _event(**entity: Any) -> bytes:
    base: dict[str, Any] = {
        "id": "e1",
        "created_at": "2026-11-22T10:00:00Z",
        "user": {"organization_user_id": "a@x.com"},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}]},
    }
    base.update(entity)
    return orjson.dumps({"type": "event.created", "parameters": {"entity": base}})


@PROPERTY
@given(value=mutated_events())
# Found by this test: a timestamp that has no UTC equivalent made parse_message raise.
@example(value=_event(created_at="0001-01-01T00:00:00+01:00"))
@example(value=_event(updated_at="9999-12-31T23:59:59-05:00"))
# Found by this test: a huge key of a preference's values was repeated in the reason.
@example(value=_event(consents={"purposes": [{"id": "n", "values": {"k" * 3_000: {"value": 1}}}]}))
@example(value=_event(user={"organization_user_id": 42}))
@example(value=_event(user={"organization_user_id": "@" * 3_000}))
def test_mutated_events_never_raise_and_reasons_stay_short(value: bytes) -> None:
    check(value)
    check(value, SMALL_RULES)


@PROPERTY
@given(
    values=st.dictionaries(
        st.text(max_size=30) | huge_strings, json_values, min_size=1, max_size=3
    ),
    where=st.sampled_from(("event.created", "user.updated")),
)
def test_reasons_never_repeat_long_keys_of_the_payload(values: dict[str, Any], where: str) -> None:
    # A preference's value ids are the only producer-chosen keys that can appear in an error
    # path; a huge one used to be repeated whole in the reason (and in x-dlq-reason).
    purposes = [{"id": "newsletter", "values": values}]
    if where == "event.created":
        value = _event(consents={"purposes": purposes})
    else:
        entity = {
            "id": "u1",
            "organization_user_id": "a@x.com",
            "created_at": "2026-11-22T10:00:00Z",
            "consents": {"purposes": purposes},
        }
        value = orjson.dumps({"type": where, "parameters": {"new_entity": entity}})
    check(value)


@PROPERTY
@given(junk=st.text(string.printable, min_size=201, max_size=5000))
def test_reasons_never_repeat_a_long_unknown_type(junk: str) -> None:
    result = check(orjson.dumps({"type": junk, "parameters": {"entity": {"id": junk}}}))
    assert isinstance(result, Rejected)
    assert result.error_class == "UNKNOWN_EVENT_TYPE"
