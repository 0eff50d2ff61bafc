"""Everything the Salesforce emulator remembers, in plain Python (no HTTP here).

The aiohttp layer in :mod:`consumer.devkit.emulator.app` only translates requests into calls on
:class:`EmulatorState` and results (or :class:`ApiError`) into responses, so the behaviour that
matters (validation rules, per-record results, paging, tokens, limits, faults) can be read and
tested in one place.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import random
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from consumer.devkit.emulator import soql

__all__ = [
    "MAX_COLLECTION_RECORDS",
    "STAT_KEYS",
    "ApiError",
    "EmulatorError",
    "EmulatorState",
    "FieldSpec",
    "HttpFault",
    "SObjectSchema",
    "format_sf_datetime",
    "normalize_id",
]

MAX_COLLECTION_RECORDS = 200
"""sObject Collections accept at most 200 records (or ids) per call."""

STAT_KEYS: tuple[str, ...] = (
    "token",
    "query",
    "query_more",
    "describe",
    "create",
    "update",
    "upsert",
    "delete",
    "limits",
    "versions",
    "api_calls",
    "http_401",
    "http_403",
    "http_414",
    "http_5xx",
    "faults_injected",
    "records_created",
    "records_updated",
    "records_deleted",
)

# Field types whose JSON representation is a string.
STRING_TYPES = frozenset(
    {
        "string",
        "textarea",
        "picklist",
        "multipicklist",
        "email",
        "phone",
        "url",
        "id",
        "reference",
        "combobox",
        "encryptedstring",
    }
)
# Types whose ``length`` is enforced (ids and references have a fixed shape instead).
LENGTH_TYPES = STRING_TYPES - {"id", "reference"}
NUMBER_TYPES = frozenset({"double", "int", "currency", "percent"})
KNOWN_TYPES = STRING_TYPES | NUMBER_TYPES | {"boolean", "datetime", "date"}

_SOAP_TYPES = {
    "boolean": "xsd:boolean",
    "datetime": "xsd:dateTime",
    "date": "xsd:date",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
    "id": "tns:ID",
    "reference": "tns:ID",
}
# The Java type names Salesforce's JSON deserializer mentions in JSON_PARSER_ERROR messages.
_JAVA_TYPES = {"boolean": "boolean", "datetime": "datetime", "date": "date", "int": "int"}

_ID_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "._"
_MAX_OPEN_CURSORS = 100

_ROLLED_BACK = (
    "Record rolled back because not all records were valid and the request was using AllOrNone "
    "header"
)

JsonObj = dict[str, Any]


class EmulatorError(Exception):
    """Misuse of the emulator's Python API (unknown sObject, bad field spec, ...)."""


class ApiError(Exception):
    """A whole-request failure: ``status`` and Salesforce's JSON list of errors."""

    def __init__(self, status: int, errors: list[JsonObj]) -> None:
        super().__init__(f"{status}: {errors}")
        self.status = status
        self.errors = errors

    @classmethod
    def of(
        cls, status: int, error_code: str, message: str, fields: Sequence[str] | None = None
    ) -> ApiError:
        """One error with the usual ``{message, errorCode[, fields]}`` shape."""
        error: JsonObj = {"message": message, "errorCode": error_code}
        if fields is not None:
            error["fields"] = list(fields)
        return cls(status, [error])


def not_found() -> ApiError:
    """Salesforce's answer for a path, version or sObject it does not know."""
    return ApiError.of(404, "NOT_FOUND", "The requested resource does not exist")


@dataclass(frozen=True)
class FieldSpec:
    """One field of an sObject as ``describe`` reports it; drives validation of writes."""

    name: str
    type: str
    length: int = 255
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted_on_create: bool = False
    external_id: bool = False
    picklist_values: tuple[str, ...] = ()
    restricted_picklist: bool = False


# --------------------------------------------------------------------------------------------
# Ids


def _id_suffix(id15: str) -> str:
    """The three checksum characters that make a 15-character id case-insensitive."""
    out = []
    for chunk_start in (0, 5, 10):
        flags = 0
        for bit, ch in enumerate(id15[chunk_start : chunk_start + 5]):
            if "A" <= ch <= "Z":
                flags |= 1 << bit
        out.append(_ID_SUFFIX_ALPHABET[flags])
    return "".join(out)


def normalize_id(value: object) -> str | None:
    """Canonical 18-character form of a 15- or 18-character id, or None if malformed.

    An 18-character id's suffix encodes the case of the first 15 characters, so (as in
    Salesforce) 18-character ids match whatever their case; 15-character ids are case-sensitive.
    """
    if not isinstance(value, str) or not value.isascii() or not value.isalnum():
        return None
    if len(value) == 15:
        return value + _id_suffix(value)
    if len(value) != 18:
        return None
    chars = list(value[:15])
    for chunk, suffix_char in enumerate(value[15:].upper()):
        flags = _ID_SUFFIX_ALPHABET.find(suffix_char)
        if flags < 0:
            return None
        for bit in range(5):
            i = chunk * 5 + bit
            chars[i] = chars[i].upper() if flags & (1 << bit) else chars[i].lower()
    id15 = "".join(chars)
    return id15 + _id_suffix(id15)


class IdFactory:
    """Makes Salesforce-shaped ids: key prefix, pod, reserved digit, sequence, checksum."""

    def __init__(self) -> None:
        self._next = 1

    def make(self, prefix: str) -> str:
        n = self._next
        self._next += 1
        digits = []
        for _ in range(9):
            n, rem = divmod(n, 62)
            digits.append(_BASE62[rem])
        id15 = f"{prefix}Dn0{''.join(reversed(digits))}"
        return id15 + _id_suffix(id15)


def format_sf_datetime(epoch_seconds: float) -> str:
    """``2026-11-28T21:30:00.000+0000``: Salesforce's datetime format (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


# --------------------------------------------------------------------------------------------
# Schemas


def _default_label(name: str) -> str:
    base = name.removesuffix("__c")
    if "_" in base:
        return base.replace("_", " ")
    # CamelCase -> "Camel Case"
    out: list[str] = []
    for i, ch in enumerate(base):
        if i and ch.isupper() and not base[i - 1].isupper():
            out.append(" ")
        out.append(ch)
    return "".join(out)


def _normalize_spec(spec: FieldSpec) -> FieldSpec:
    if spec.type not in KNOWN_TYPES:
        raise EmulatorError(f"field {spec.name}: unknown type {spec.type!r}")
    if spec.type == "boolean":
        # Checkboxes are never null in Salesforce: they default to false on create.
        return replace(spec, nillable=False, defaulted_on_create=True)
    return spec


class SObjectSchema:
    """The describe metadata of one sObject, with case-insensitive field lookup."""

    def __init__(
        self,
        name: str,
        key_prefix: str,
        fields: Iterable[FieldSpec],
        *,
        labels: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        references: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.key_prefix = key_prefix
        self.fields: dict[str, FieldSpec] = {}
        for raw in fields:
            spec = _normalize_spec(raw)
            if spec.name.lower() in self._lower_names():
                raise EmulatorError(f"{name}: field {spec.name} is defined twice")
            self.fields[spec.name] = spec
        self._by_lower = {n.lower(): s for n, s in self.fields.items()}
        self._labels = dict(labels or {})
        self._references = dict(references or {})
        self.defaults: dict[str, Any] = {}
        for spec in self.fields.values():
            if spec.type == "boolean":
                self.defaults[spec.name] = False
            elif spec.defaulted_on_create and spec.picklist_values:
                self.defaults[spec.name] = spec.picklist_values[0]
        self.defaults.update(defaults or {})

    def _lower_names(self) -> set[str]:
        return {n.lower() for n in self.fields}

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name`` (any case), or None."""
        return self._by_lower.get(name.lower())

    def label(self, name: str) -> str:
        """The field's label, as used in Salesforce's per-record error messages."""
        return self._labels.get(name, _default_label(name))

    @property
    def required_on_create(self) -> list[str]:
        """Fields a create must set: not nillable, not defaulted, writable."""
        return [
            s.name
            for s in self.fields.values()
            if not s.nillable and not s.defaulted_on_create and s.createable
        ]

    def describe(self) -> JsonObj:
        """The ``sobjects/{name}/describe`` document (the parts clients look at)."""
        return {
            "name": self.name,
            "label": self.name,
            "labelPlural": f"{self.name}s",
            "keyPrefix": self.key_prefix,
            "custom": self.name.endswith("__c"),
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "fields": [self._describe_field(s) for s in self.fields.values()],
            "urls": {"describe": f"/sobjects/{self.name}/describe"},
        }

    def _describe_field(self, spec: FieldSpec) -> JsonObj:
        default = self.defaults.get(spec.name)
        if spec.type in LENGTH_TYPES:
            length = spec.length
        elif spec.type in ("id", "reference"):
            length = 18
        else:
            length = 0
        picklist = [
            {"active": True, "defaultValue": value == default, "label": value, "value": value}
            for value in spec.picklist_values
        ]
        return {
            "name": spec.name,
            "label": self.label(spec.name),
            "type": spec.type,
            "soapType": _SOAP_TYPES.get(spec.type, "xsd:string"),
            "length": length,
            "nillable": spec.nillable,
            "createable": spec.createable,
            "updateable": spec.updateable,
            "defaultedOnCreate": spec.defaulted_on_create,
            "defaultValue": default if spec.type == "boolean" else None,
            "externalId": spec.external_id,
            "idLookup": spec.type == "id" or spec.name == "Email" or spec.external_id,
            "unique": False,
            "custom": spec.name.endswith("__c"),
            "filterable": True,
            "picklistValues": picklist,
            "restrictedPicklist": spec.restricted_picklist,
            "referenceTo": [self._references[spec.name]] if spec.name in self._references else [],
        }


def builtin_schemas(custom_fields: Mapping[str, Sequence[FieldSpec]]) -> dict[str, SObjectSchema]:
    """Contact and Lead with their standard fields, plus ``custom_fields``."""
    audit = [
        FieldSpec(
            "LastModifiedDate", "datetime", nillable=False, createable=False, updateable=False
        ),
        FieldSpec("CreatedDate", "datetime", nillable=False, createable=False, updateable=False),
    ]
    id_field = FieldSpec("Id", "id", length=18, nillable=False, createable=False, updateable=False)
    contact = [
        id_field,
        FieldSpec("Email", "email", length=80),
        FieldSpec("FirstName", "string", length=40),
        FieldSpec("LastName", "string", length=80, nillable=False),
        FieldSpec("AccountId", "reference", length=18),
        *audit,
    ]
    lead = [
        id_field,
        FieldSpec("Email", "email", length=80),
        FieldSpec("FirstName", "string", length=40),
        FieldSpec("LastName", "string", length=80, nillable=False),
        FieldSpec("Company", "string", length=255, nillable=False),
        FieldSpec(
            "Status",
            "picklist",
            length=255,
            nillable=False,
            defaulted_on_create=True,
            picklist_values=("Open - Not Contacted", "Working - Contacted", "Closed - Converted"),
            restricted_picklist=True,
        ),
        FieldSpec("IsConverted", "boolean", updateable=False),
        *audit,
    ]
    known = {"Contact": ("003", contact), "Lead": ("00Q", lead)}
    for sobject in custom_fields:
        if sobject not in known:
            raise EmulatorError(f"custom fields given for unknown sObject {sobject!r}")
    schemas: dict[str, SObjectSchema] = {}
    for sobject, (prefix, standard) in known.items():
        labels = {
            "Id": f"{sobject} ID",
            "AccountId": "Account ID",
            "Status": "Lead Status",
            "IsConverted": "Converted",
        }
        schemas[sobject] = SObjectSchema(
            sobject,
            prefix,
            [*standard, *custom_fields.get(sobject, ())],
            labels=labels,
            references={"AccountId": "Account"},
        )
    return schemas


# --------------------------------------------------------------------------------------------
# Tokens, usage, stats


@dataclass
class _Token:
    issued_monotonic: float
    calls: int = 0
    revoked: bool = False


class TokenStore:
    """Issued access tokens and the rules that make them expire."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._tokens: dict[str, _Token] = {}
        self._max_calls: int | None = None
        self._max_age: float | None = None
        self.issued = 0

    def issue(self, org_id: str) -> str:
        """A new token shaped like Salesforce's (``00D...!AQ...``)."""
        secret = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(96))
        token = f"{org_id[:15]}!AQ{secret}"
        self._tokens[token] = _Token(self._monotonic())
        self.issued += 1
        return token

    def values(self) -> list[str]:
        """Every token issued (for tests that prove tokens never leak)."""
        return list(self._tokens)

    def expire_after(self, calls: int | None, seconds: float | None) -> None:
        """Each token dies after ``calls`` API calls made with it / ``seconds`` after issue."""
        self._max_calls = calls
        self._max_age = seconds

    def revoke_all(self) -> None:
        """Every token issued so far becomes invalid."""
        for token in self._tokens.values():
            token.revoked = True

    def use(self, value: str | None) -> bool:
        """Validate a token for one API call (and count the call against it)."""
        token = self._tokens.get(value) if value else None
        if token is None or token.revoked:
            return False
        if self._max_calls is not None and token.calls >= self._max_calls:
            return False
        if self._max_age is not None and self._monotonic() - token.issued_monotonic >= (
            self._max_age
        ):
            return False
        token.calls += 1
        return True


class Stats:
    """Counters by call kind and outcome; every key of :data:`STAT_KEYS` is always present."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    def incr(self, key: str, n: int = 1) -> None:
        """Add ``n`` to ``key``."""
        self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters."""
        return dict(self._counts)

    def reset(self) -> None:
        """Zero every counter."""
        self._counts = dict.fromkeys(STAT_KEYS, 0)


@dataclass
class ApiUsage:
    """The org's rolling 24-hour API request count, as shown in ``Sforce-Limit-Info``."""

    used: int
    limit: int

    @property
    def header(self) -> str:
        """The value of the ``Sforce-Limit-Info`` header."""
        return f"api-usage={self.used}/{self.limit}"


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class HttpFault:
    """A canned response given instead of running the next matching call(s)."""

    kind: str | None
    status: int
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    remaining: int


@dataclass
class _RecordFault:
    kind: str
    status_code: str
    message: str
    fields: list[str]
    email: str | None
    remaining: int


@dataclass
class _Hang:
    kind: str | None
    seconds: float
    remaining: int


def html_page(status: int, reason: str, detail: str) -> bytes:
    """The kind of HTML page Salesforce's front end serves for 414 and 5xx answers."""
    return (
        f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1>"
        f"<p>{detail}</p></body></html>"
    ).encode()


def _kind_matches(wanted: str | None, kind: str) -> bool:
    # None means "any API call"; the token endpoint is not an API call and must be asked for.
    return kind == wanted if wanted is not None else kind != "token"


class FaultPlan:
    """Injected faults, random faults, latency and hangs."""

    def __init__(self) -> None:
        self._http: list[HttpFault] = []
        self._records: list[_RecordFault] = []
        self._hangs: list[_Hang] = []
        self.http_503_rate = 0.0
        self.lock_rate = 0.0
        self._fault_rng = random.Random()
        self.latency_base_ms = 0.0
        self.latency_jitter_ms = 0.0
        self._latency_rng = random.Random()

    def add_http(self, fault: HttpFault) -> None:
        """Queue an HTTP fault."""
        self._http.append(fault)

    def add_record(
        self,
        kind: str,
        status_code: str,
        message: str,
        count: int,
        fields: list[str] | None,
        email: str | None,
    ) -> None:
        """Queue a per-record error for collections calls of ``kind``."""
        self._records.append(
            _RecordFault(kind, status_code, message, list(fields or []), email, count)
        )

    def add_hang(self, kind: str | None, seconds: float, count: int) -> None:
        """Queue a delay for the next ``count`` calls of ``kind``."""
        self._hangs.append(_Hang(kind, seconds, count))

    def set_random(self, http_503_rate: float, lock_rate: float, seed: int | None) -> None:
        """Configure random 503s and row-lock errors."""
        self.http_503_rate = http_503_rate
        self.lock_rate = lock_rate
        self._fault_rng = random.Random(seed)

    def set_latency(self, base_ms: float, jitter_ms: float, seed: int | None) -> None:
        """Configure the delay added to every call."""
        self.latency_base_ms = base_ms
        self.latency_jitter_ms = jitter_ms
        self._latency_rng = random.Random(seed)

    def clear(self) -> None:
        """Forget every fault, random rate, latency and hang."""
        self._http.clear()
        self._records.clear()
        self._hangs.clear()
        self.set_random(0.0, 0.0, None)
        self.set_latency(0.0, 0.0, None)

    def take_http(self, kind: str) -> HttpFault | None:
        """The first queued HTTP fault matching ``kind``, consuming one of its uses."""
        for fault in self._http:
            if _kind_matches(fault.kind, kind):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._http.remove(fault)
                return fault
        return None

    def take_hang(self, kind: str) -> float:
        """Seconds to hang before answering a call of ``kind`` (0 when none queued)."""
        for hang in self._hangs:
            if _kind_matches(hang.kind, kind):
                hang.remaining -= 1
                if hang.remaining <= 0:
                    self._hangs.remove(hang)
                return hang.seconds
        return 0.0

    def latency_seconds(self) -> float:
        """The configured base latency plus a random share of the jitter."""
        if self.latency_base_ms <= 0 and self.latency_jitter_ms <= 0:
            return 0.0
        jitter = self._latency_rng.uniform(0.0, self.latency_jitter_ms)
        return max(0.0, self.latency_base_ms + jitter) / 1000.0

    def roll_503(self) -> bool:
        """Whether this API call should get a random 503."""
        return self.http_503_rate > 0 and self._fault_rng.random() < self.http_503_rate

    def roll_lock(self) -> bool:
        """Whether this record should fail with UNABLE_TO_LOCK_ROW."""
        return self.lock_rate > 0 and self._fault_rng.random() < self.lock_rate

    def take_record(self, kind: str, emails: Iterable[object]) -> _RecordFault | None:
        """The first queued per-record fault matching ``kind`` and one of ``emails``."""
        folded = {e.casefold() for e in emails if isinstance(e, str)}
        for fault in self._records:
            if fault.kind != kind:
                continue
            if fault.email is not None and fault.email.casefold() not in folded:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._records.remove(fault)
            return fault
        return None


# --------------------------------------------------------------------------------------------
# Record validation helpers


def _record_error(status_code: str, message: str, fields: Sequence[str] = ()) -> JsonObj:
    return {"statusCode": status_code, "message": message, "fields": list(fields)}


def _failure(errors: list[JsonObj]) -> JsonObj:
    return {"success": False, "errors": errors}


def _json_token(value: object) -> tuple[str, str]:
    """(Jackson token name, value as shown) for a JSON value, as Salesforce's errors name them."""
    if isinstance(value, bool):
        return ("VALUE_TRUE" if value else "VALUE_FALSE"), ("true" if value else "false")
    if isinstance(value, int):
        return "VALUE_NUMBER_INT", str(value)
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT", repr(value)
    if isinstance(value, str):
        return "VALUE_STRING", value
    if isinstance(value, list):
        return "START_ARRAY", "["
    return "START_OBJECT", "{"


def _valid_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("+0000", "+00:00"))
    except ValueError:
        return False
    return True


def _stored_datetimes(schema: SObjectSchema, values: Mapping[str, Any]) -> dict[str, Any]:
    """Datetime values as Salesforce stores and returns them (UTC, ``.000+0000``)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        spec = schema.fields.get(name)
        if spec is not None and spec.type == "datetime" and isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("+0000", "+00:00").replace("Z", "+00:00"))
            moment = (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).astimezone(
                UTC
            )
            # Formatted from the datetime itself: a float epoch could round .512 down to .511.
            millis = moment.microsecond // 1000
            out[name] = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}+0000"
    return out


def _valid_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def _json_type_ok(spec: FieldSpec, value: object) -> bool:
    if value is None:
        return True
    if spec.type == "boolean":
        return isinstance(value, bool)
    if spec.type in STRING_TYPES:
        return isinstance(value, str)
    if spec.type in NUMBER_TYPES:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if spec.type == "datetime":
        return isinstance(value, str) and _valid_datetime(value)
    if spec.type == "date":
        return isinstance(value, str) and _valid_date(value)
    return True


def is_valid_email(value: str) -> bool:
    """One ``@``, a non-empty local part, a dotted domain without empty labels, no spaces."""
    if any(ch.isspace() for ch in value) or value.count("@") != 1:
        return False
    local, domain = value.split("@")
    labels = domain.split(".")
    return bool(local) and len(labels) >= 2 and all(labels)


def _normalize_value(spec: FieldSpec, value: object) -> object:
    # Salesforce stores an empty string as null, and a null checkbox as false.
    if spec.type in STRING_TYPES and value == "":
        return None
    if spec.type == "boolean" and value is None:
        return False
    return value


@dataclass
class _Prepared:
    """One record of a collections request after the whole-request checks."""

    schema: SObjectSchema
    values: dict[str, Any]  # canonical field name -> normalized value (Id excluded)
    raw_id: object = None  # the "id"/"Id" given, if any
    has_id: bool = False


@dataclass
class _Planned:
    """What a record would do if the request commits."""

    index: int
    action: str  # "create" | "update" | "delete"
    schema: SObjectSchema
    record_id: str
    values: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The org


class EmulatorState:
    """All of the emulated org: schemas, records, cursors, tokens, usage, faults and stats."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        api_versions: Sequence[str],
        custom_fields: Mapping[str, Sequence[FieldSpec]] | None,
        api_limit: int,
        page_size: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if page_size < 1:
            raise EmulatorError("page_size must be at least 1")
        for version in api_versions:
            major, _, minor = version.partition(".")
            if not (major.isdigit() and minor.isdigit()):
                raise EmulatorError(f"API version {version!r} is not shaped like '62.0'")
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_versions = tuple(api_versions)
        self.page_size = page_size
        self.schemas = builtin_schemas(custom_fields or {})
        self._schemas_lower = {name.lower(): s for name, s in self.schemas.items()}
        self._clock = clock
        self._ids = IdFactory()
        self.org_id = self._ids.make("00D")
        self.user_id = self._ids.make("005")
        self._records: dict[str, dict[str, JsonObj]] = {name: {} for name in self.schemas}
        self._deleted: set[str] = set()
        self._cursors: OrderedDict[str, list[JsonObj]] = OrderedDict()
        self.tokens = TokenStore(monotonic)
        self.usage = ApiUsage(0, api_limit)
        self.stats = Stats()
        self.faults = FaultPlan()
        self.rest_api_disabled = False

    # ---- lookups -----------------------------------------------------------------------

    def schema(self, sobject: str) -> SObjectSchema:
        """The schema of ``sobject`` (exact name); EmulatorError if unknown."""
        schema = self.schemas.get(sobject)
        if schema is None:
            raise EmulatorError(f"unknown sObject {sobject!r}")
        return schema

    def _schema_any_case(self, sobject: str) -> SObjectSchema | None:
        return self._schemas_lower.get(sobject.lower())

    def _schema_for_id(self, record_id: str) -> SObjectSchema | None:
        for schema in self.schemas.values():
            if record_id.startswith(schema.key_prefix):
                return schema
        return None

    def _now(self) -> str:
        return format_sf_datetime(self._clock())

    # ---- Python-side record access ----------------------------------------------------

    def seed(self, sobject: str, fields: Mapping[str, Any]) -> str:
        """Insert a record directly (no validation beyond field names); return its id."""
        schema = self.schema(sobject)
        record: JsonObj = dict.fromkeys(schema.fields)
        record.update(schema.defaults)
        record_id: str | None = None
        for name, value in fields.items():
            spec = schema.field(name)
            if spec is None:
                raise EmulatorError(f"no field {name!r} on {sobject}")
            if spec.name == "Id":
                record_id = normalize_id(value)
                if record_id is None or not record_id.startswith(schema.key_prefix):
                    raise EmulatorError(f"{value!r} is not a valid {sobject} id")
                if record_id in self._records[sobject]:
                    raise EmulatorError(f"{sobject} {record_id} already exists")
                continue
            record[spec.name] = value
        if record_id is None:
            record_id = self._ids.make(schema.key_prefix)
        now = self._now()
        record["Id"] = record_id
        record["CreatedDate"] = record.get("CreatedDate") or now
        record["LastModifiedDate"] = record.get("LastModifiedDate") or now
        self._records[sobject][record_id] = record
        return record_id

    def records(self, sobject: str) -> list[JsonObj]:
        """Copies of every record of ``sobject``, in creation order."""
        self.schema(sobject)
        return [dict(r) for r in self._records[sobject].values()]

    def get(self, sobject: str, record_id: str) -> JsonObj | None:
        """A copy of one record (15- or 18-character id), or None."""
        self.schema(sobject)
        canonical = normalize_id(record_id)
        record = self._records[sobject].get(canonical) if canonical else None
        return dict(record) if record is not None else None

    def find_by_email(self, sobject: str, email: str) -> list[JsonObj]:
        """Copies of the records whose Email equals ``email`` ignoring case."""
        folded = email.casefold()
        return [
            r
            for r in self.records(sobject)
            if isinstance(r.get("Email"), str) and r["Email"].casefold() == folded
        ]

    # ---- OAuth ---------------------------------------------------------------------------

    def issue_token(self, instance_url: str) -> JsonObj:
        """The client-credentials token response (no expires_in, no refresh_token)."""
        token = self.tokens.issue(self.org_id)
        issued_at = str(int(self._clock() * 1000))
        id_url = f"{instance_url}/id/{self.org_id}/{self.user_id}"
        # Salesforce signs id + issued_at with the consumer secret (HMAC-SHA256, base64).
        digest = hmac.new(
            self.client_secret.encode(), (id_url + issued_at).encode(), hashlib.sha256
        ).digest()
        return {
            "access_token": token,
            "signature": base64.b64encode(digest).decode(),
            "scope": "api",
            "instance_url": instance_url,
            "id": id_url,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }

    # ---- describe / limits / versions -------------------------------------------------

    def describe(self, sobject: str) -> JsonObj:
        """``sobjects/{sobject}/describe``; 404 for an unknown sObject."""
        schema = self._schema_any_case(sobject)
        if schema is None:
            raise not_found()
        return schema.describe()

    def limits(self) -> JsonObj:
        """``limits``: the daily API request allowance."""
        return {
            "DailyApiRequests": {
                "Max": self.usage.limit,
                "Remaining": max(0, self.usage.limit - self.usage.used),
            }
        }

    def versions(self) -> list[JsonObj]:
        """``GET /services/data/``: the supported versions with their release names."""
        out = []
        for version in self.api_versions:
            major = int(version.split(".")[0])
            i = major - 60  # v60.0 is Spring '24; three releases a year
            season = ("Spring", "Summer", "Winter")[i % 3]
            year = 24 + (i + 1) // 3
            out.append(
                {
                    "label": f"{season} '{year:02d}",
                    "url": f"/services/data/v{version}",
                    "version": version,
                }
            )
        return out

    # ---- SOQL ----------------------------------------------------------------------------

    def query(self, source: str | None, version: str) -> JsonObj:
        """Run a SOQL query and return its first page (raises SoqlError for bad queries)."""
        if source is None or not source.strip():
            raise soql.SoqlError("MALFORMED_QUERY", "A query string has to be specified")
        query = soql.parse(source)
        schema = self._schema_any_case(query.sobject.name)
        if schema is None:
            raise soql.error_at(
                source,
                query.sobject.pos,
                f"sObject type '{query.sobject.name}' is not supported. If you are attempting "
                "to use a custom object, be sure to append the '__c' after the entity name. "
                "Please reference your WSDL or the describe call for the appropriate names.",
                "INVALID_TYPE",
            )
        selected = [self._bind_field(query, schema, ref) for ref in query.fields]
        conditions = [self._bind_condition(query, schema, cond) for cond in query.where]
        order = [(self._bind_field(query, schema, o.field), o.descending) for o in query.order_by]

        matched = [
            record
            for record in self._records[schema.name].values()
            if all(_condition_holds(spec, cond, record) for spec, cond in conditions)
        ]
        # Stable sorts from the last key to the first give a multi-key ORDER BY; SOQL puts
        # nulls first when ascending and last when descending.
        for spec, descending in reversed(order):
            matched.sort(key=functools.partial(_sort_key, spec), reverse=descending)
        if query.limit is not None:
            matched = matched[: query.limit]

        rows = []
        for record in matched:
            row: JsonObj = {
                "attributes": {
                    "type": schema.name,
                    "url": f"/services/data/v{version}/sobjects/{schema.name}/{record['Id']}",
                }
            }
            for spec in selected:
                row[spec.name] = record.get(spec.name)
            rows.append(row)

        locator = ""
        if len(rows) > self.page_size:
            locator = self._ids.make("01g")
            self._cursors[locator] = rows
            while len(self._cursors) > _MAX_OPEN_CURSORS:
                self._cursors.popitem(last=False)
        return self._page(rows, 0, locator, version)

    def query_more(self, locator: str, version: str) -> JsonObj:
        """The page a ``nextRecordsUrl`` (``query/<cursor>-<offset>``) points at."""
        cursor, _, offset_text = locator.rpartition("-")
        rows = self._cursors.get(cursor)
        if rows is None or not offset_text.isdigit() or int(offset_text) > len(rows):
            raise ApiError.of(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        self._cursors.move_to_end(cursor)
        return self._page(rows, int(offset_text), cursor, version)

    def _page(self, rows: list[JsonObj], offset: int, locator: str, version: str) -> JsonObj:
        end = offset + self.page_size
        result: JsonObj = {"totalSize": len(rows), "done": end >= len(rows)}
        if end < len(rows):
            result["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        result["records"] = rows[offset:end]
        return result

    @staticmethod
    def _bind_field(query: soql.SoqlQuery, schema: SObjectSchema, ref: soql.FieldRef) -> FieldSpec:
        spec = schema.field(ref.name)
        if spec is None:
            raise soql.error_at(
                query.source,
                ref.pos,
                f"No such column '{ref.name}' on entity '{schema.name}'. If you are attempting "
                "to use a custom field, be sure to append the '__c' after the custom field name. "
                "Please reference your WSDL or the describe call for the appropriate names.",
                "INVALID_FIELD",
            )
        return spec

    def _bind_condition(
        self, query: soql.SoqlQuery, schema: SObjectSchema, cond: soql.Condition
    ) -> tuple[FieldSpec, soql.Condition]:
        spec = self._bind_field(query, schema, cond.field)
        for literal in cond.values:
            if literal.kind == "null":
                continue
            if spec.type == "boolean" and literal.kind != "boolean":
                raise soql.error_at(
                    query.source,
                    literal.pos,
                    f"value of filter criterion for field '{spec.name}' must be of type boolean "
                    "and should not be enclosed in quotes",
                    "INVALID_FIELD",
                )
            if spec.type in STRING_TYPES and literal.kind != "string":
                raise soql.error_at(
                    query.source,
                    literal.pos,
                    f"value of filter criterion for field '{spec.name}' must be of type string "
                    "and should be enclosed in quotes",
                    "INVALID_FIELD",
                )
            if spec.type in NUMBER_TYPES and literal.kind != "number":
                raise soql.error_at(
                    query.source,
                    literal.pos,
                    f"value of filter criterion for field '{spec.name}' must be of type "
                    f"{spec.type} and should not be enclosed in quotes",
                    "INVALID_FIELD",
                )
            if spec.type in ("datetime", "date"):
                # Date literals are unquoted tokens this subset does not parse.
                raise soql.error_at(
                    query.source,
                    literal.pos,
                    f"value of filter criterion for field '{spec.name}' must be of type "
                    f"{spec.type} and should not be enclosed in quotes",
                    "INVALID_FIELD",
                )
            if spec.type in ("id", "reference") and normalize_id(literal.value) is None:
                raise soql.error_at(
                    query.source,
                    literal.pos,
                    f"invalid ID field: {literal.value}",
                    "INVALID_QUERY_FILTER_OPERATOR",
                )
        return spec, cond

    # ---- sObject Collections ----------------------------------------------------------

    def create(self, body: object) -> list[JsonObj]:
        """``POST composite/sobjects``."""
        all_or_none, raw_records = _collection_body(body)
        prepared = [self._prepare(raw, None) for raw in raw_records]
        results: list[JsonObj | None] = [None] * len(prepared)
        plan: list[_Planned] = []
        for i, item in enumerate(prepared):
            if item.has_id and item.raw_id is not None:
                results[i] = _failure(
                    [
                        _record_error(
                            "INVALID_FIELD_FOR_INSERT_UPDATE",
                            "cannot specify Id in an insert call",
                            ["Id"],
                        )
                    ]
                )
                continue
            planned = self._plan_write(i, item, None, "create", emails=[item.values.get("Email")])
            if isinstance(planned, _Planned):
                plan.append(planned)
            else:
                results[i] = planned
        return self._commit(all_or_none, results, plan, upsert=False)

    def update(self, body: object) -> list[JsonObj]:
        """``PATCH composite/sobjects`` (each record carries its id)."""
        all_or_none, raw_records = _collection_body(body)
        prepared = [self._prepare(raw, None) for raw in raw_records]
        results: list[JsonObj | None] = [None] * len(prepared)
        ids: list[str | None] = []
        for i, item in enumerate(prepared):
            record_id, error = self._resolve_id(item)
            ids.append(record_id)
            if error is not None:
                results[i] = _failure([error])
        self._mark_duplicates(ids, results, lambda key: f"Duplicate id in list: {key}")

        plan: list[_Planned] = []
        for i, item in enumerate(prepared):
            record_id = ids[i]
            if results[i] is not None or record_id is None:
                continue
            existing = self._records[item.schema.name][record_id]
            planned = self._plan_write(
                i,
                item,
                existing,
                "update",
                emails=[item.values.get("Email"), existing.get("Email")],
            )
            if isinstance(planned, _Planned):
                plan.append(planned)
            else:
                results[i] = planned
        return self._commit(all_or_none, results, plan, upsert=False)

    def upsert(self, sobject: str, external_field: str, body: object) -> list[JsonObj]:
        """``PATCH composite/sobjects/{sobject}/{external_field}``."""
        schema = self._schema_any_case(sobject)
        if schema is None:
            raise not_found()
        key_spec = schema.field(external_field)
        if key_spec is None or not (key_spec.external_id or key_spec.name == "Id"):
            raise ApiError.of(
                400,
                "INVALID_FIELD",
                f"Field name provided, {external_field} is not an External ID or indexed field "
                f"for {schema.name}",
            )
        all_or_none, raw_records = _collection_body(body)
        prepared = [self._prepare(raw, schema) for raw in raw_records]
        results: list[JsonObj | None] = [None] * len(prepared)

        # Resolve every record to (dedup key, existing id or None) first: duplicates within
        # the request fail together, before any other check.
        keys: list[str | None] = []
        targets: list[str | None] = []
        for i, item in enumerate(prepared):
            key, target, error = self._resolve_upsert_key(item, key_spec)
            keys.append(key)
            targets.append(target)
            if error is not None:
                results[i] = _failure([error])
        self._mark_duplicates(keys, results, lambda key: f"Duplicate external id specified: {key}")

        plan: list[_Planned] = []
        for i, item in enumerate(prepared):
            if results[i] is not None:
                continue
            target = targets[i]
            existing = self._records[schema.name][target] if target else None
            planned = self._plan_write(
                i,
                item,
                existing,
                "upsert",
                emails=[item.values.get("Email"), existing.get("Email") if existing else None],
            )
            if isinstance(planned, _Planned):
                plan.append(planned)
            else:
                results[i] = planned
        return self._commit(all_or_none, results, plan, upsert=True)

    def delete(self, ids: Sequence[str], all_or_none: bool) -> list[JsonObj]:
        """``DELETE composite/sobjects?ids=...``."""
        if not ids:
            raise ApiError.of(400, "REQUIRED_FIELD_MISSING", "At least 1 record is required")
        if len(ids) > MAX_COLLECTION_RECORDS:
            raise _too_many()
        results: list[JsonObj | None] = [None] * len(ids)
        canonical: list[str | None] = []
        for i, raw in enumerate(ids):
            record_id = normalize_id(raw)
            canonical.append(record_id)
            if record_id is None:
                results[i] = _failure([_record_error("MALFORMED_ID", f"malformed id {raw}")])
            elif record_id in self._deleted:
                results[i] = _failure([_record_error("ENTITY_IS_DELETED", "entity is deleted")])
            elif self._find_record(record_id) is None:
                results[i] = _failure(
                    [_record_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")]
                )
        self._mark_duplicates(canonical, results, lambda key: f"Duplicate id in list: {key}")

        plan: list[_Planned] = []
        for i, record_id in enumerate(canonical):
            if results[i] is not None or record_id is None:
                continue
            found = self._find_record(record_id)
            assert found is not None  # checked above
            schema, record = found
            error = self._injected_error("delete", [record.get("Email")], record_id)
            if error is not None:
                results[i] = _failure([error])
            else:
                plan.append(_Planned(i, "delete", schema, record_id))
        return self._commit(all_or_none, results, plan, upsert=False)

    # ---- collections internals --------------------------------------------------------

    def _prepare(self, raw: JsonObj, url_schema: SObjectSchema | None) -> _Prepared:
        """Whole-request checks on one record: its type, field names and JSON value types."""
        attributes = raw.get("attributes")
        type_name = attributes.get("type") if isinstance(attributes, dict) else None
        if not isinstance(type_name, str):
            raise ApiError.of(400, "INVALID_TYPE", "No SObject Type defined in Json")
        schema = self._schema_any_case(type_name)
        if schema is None or (url_schema is not None and schema is not url_schema):
            raise ApiError.of(400, "INVALID_TYPE", f"sObject type '{type_name}' is not supported.")
        prepared = _Prepared(schema, {})
        for name, value in raw.items():
            if name == "attributes":
                continue
            spec = schema.field(name)
            if spec is None:
                raise ApiError.of(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{name}' on sobject of type {schema.name}",
                )
            if not _json_type_ok(spec, value):
                token, shown = _json_token(value)
                java_type = _JAVA_TYPES.get(
                    spec.type, "string" if spec.type in STRING_TYPES else "double"
                )
                raise ApiError.of(
                    400,
                    "JSON_PARSER_ERROR",
                    f"Cannot deserialize instance of {java_type} from {token} value {shown} or "
                    "request may be missing a required field",
                )
            if spec.name == "Id":
                prepared.raw_id = value
                prepared.has_id = True
                continue
            prepared.values[spec.name] = _normalize_value(spec, value)
        return prepared

    def _resolve_id(self, item: _Prepared) -> tuple[str | None, JsonObj | None]:
        """For an update: the canonical id of an existing record, or the per-record error."""
        if not item.has_id or item.raw_id is None:
            return None, _record_error("MISSING_ARGUMENT", "Id not specified in an update call")
        record_id = normalize_id(item.raw_id)
        if record_id is None:
            return None, _record_error("MALFORMED_ID", f"malformed id {item.raw_id}", ["Id"])
        if not record_id.startswith(item.schema.key_prefix):
            return None, _record_error(
                "MALFORMED_ID",
                f"{item.schema.name} ID: id value of incorrect type: {item.raw_id}",
                ["Id"],
            )
        if record_id in self._deleted:
            return record_id, _record_error("ENTITY_IS_DELETED", "entity is deleted")
        if record_id not in self._records[item.schema.name]:
            return record_id, _record_error(
                "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"
            )
        return record_id, None

    def _resolve_upsert_key(
        self, item: _Prepared, key_spec: FieldSpec
    ) -> tuple[str | None, str | None, JsonObj | None]:
        """(dedup key, id of the record to update or None to create, per-record error)."""
        if key_spec.name == "Id":
            if not item.has_id or item.raw_id is None:
                return None, None, None  # no id: upsert by Id creates
            record_id, error = self._resolve_id(item)
            return record_id, record_id if error is None else None, error
        value = item.values.get(key_spec.name)
        if value is None:
            return None, None, _record_error("MISSING_ARGUMENT", f"{key_spec.name} not specified")
        folded = value.casefold() if isinstance(value, str) else str(value)
        matches = [
            rid
            for rid, record in self._records[item.schema.name].items()
            if _fold(record.get(key_spec.name)) == folded
        ]
        if len(matches) > 1:
            return (
                folded,
                None,
                _record_error(
                    "DUPLICATE_EXTERNAL_ID",
                    f"{key_spec.name}: more than one record found for external id field: "
                    f"[{', '.join(matches)}]",
                    [key_spec.name],
                ),
            )
        return folded, matches[0] if matches else None, None

    @staticmethod
    def _mark_duplicates(
        keys: Sequence[str | None],
        results: list[JsonObj | None],
        message: Callable[[str], str],
    ) -> None:
        counts: dict[str, int] = {}
        for key in keys:
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        for i, key in enumerate(keys):
            if key is not None and counts[key] > 1:
                results[i] = _failure([_record_error("DUPLICATE_VALUE", message(key))])

    def _plan_write(
        self,
        index: int,
        item: _Prepared,
        existing: JsonObj | None,
        kind: str,
        emails: Sequence[object],
    ) -> _Planned | JsonObj:
        """Validate one record against the schema and faults; the plan or a failure result."""
        errors = _field_errors(item.schema, item.values, existing)
        if errors:
            return _failure(errors)
        error = self._injected_error(kind, emails, existing["Id"] if existing else None)
        if error is not None:
            return _failure([error])
        if existing is None:
            record_id = self._ids.make(item.schema.key_prefix)
            return _Planned(index, "create", item.schema, record_id, item.values)
        return _Planned(index, "update", item.schema, existing["Id"], item.values)

    def _injected_error(
        self, kind: str, emails: Sequence[object], record_id: str | None
    ) -> JsonObj | None:
        fault = self.faults.take_record(kind, emails)
        if fault is not None:
            self.stats.incr("faults_injected")
            return _record_error(fault.status_code, fault.message, fault.fields)
        if self.faults.roll_lock():
            self.stats.incr("faults_injected")
            # Creates lock a parent row (the Account); show some id either way.
            locked = record_id or self._ids.make("001")
            return _record_error(
                "UNABLE_TO_LOCK_ROW",
                f"unable to obtain exclusive access to this record or 1 records: {locked}",
            )
        return None

    def _commit(
        self,
        all_or_none: bool,
        results: list[JsonObj | None],
        plan: list[_Planned],
        *,
        upsert: bool,
    ) -> list[JsonObj]:
        failed = any(r is not None for r in results)
        if all_or_none and failed:
            rolled = _failure([_record_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", _ROLLED_BACK)])
            return [r if r is not None else dict(rolled) for r in results]
        now = self._now()
        for step in plan:
            store = self._records[step.schema.name]
            step.values.update(_stored_datetimes(step.schema, step.values))
            if step.action == "create":
                record: JsonObj = dict.fromkeys(step.schema.fields)
                record.update(step.schema.defaults)
                record.update(step.values)
                record.update(Id=step.record_id, CreatedDate=now, LastModifiedDate=now)
                store[step.record_id] = record
                self.stats.incr("records_created")
            elif step.action == "update":
                store[step.record_id].update(step.values, LastModifiedDate=now)
                self.stats.incr("records_updated")
            else:
                del store[step.record_id]
                self._deleted.add(step.record_id)
                self.stats.incr("records_deleted")
            result: JsonObj = {"id": step.record_id, "success": True, "errors": []}
            if upsert:
                result["created"] = step.action == "create"
            results[step.index] = result
        return [r for r in results if r is not None]

    def _find_record(self, record_id: str) -> tuple[SObjectSchema, JsonObj] | None:
        schema = self._schema_for_id(record_id)
        if schema is None:
            return None
        record = self._records[schema.name].get(record_id)
        return (schema, record) if record is not None else None


def _too_many() -> ApiError:
    return ApiError.of(
        400,
        "EXCEEDED_ID_LIMIT",
        f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} records into "
        "this call",
    )


def _collection_body(body: object) -> tuple[bool, list[JsonObj]]:
    """``allOrNone`` and ``records`` of a collections body, or the whole-request error."""
    if not isinstance(body, dict):
        raise ApiError.of(
            400,
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of SObjectCollectionRequest from "
            f"{_json_token(body)[0]} value",
        )
    all_or_none = body.get("allOrNone", False)
    if not isinstance(all_or_none, bool):
        token, shown = _json_token(all_or_none)
        raise ApiError.of(
            400,
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of boolean from {token} value {shown} or request may "
            "be missing a required field",
        )
    records = body.get("records")
    if records is None:
        records = []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ApiError.of(
            400, "JSON_PARSER_ERROR", "Cannot deserialize instance of SObject list: bad records"
        )
    if not records:
        raise ApiError.of(400, "REQUIRED_FIELD_MISSING", "At least 1 record is required")
    if len(records) > MAX_COLLECTION_RECORDS:
        raise _too_many()
    return all_or_none, records


def _field_errors(
    schema: SObjectSchema, values: Mapping[str, Any], existing: JsonObj | None
) -> list[JsonObj]:
    """Per-record validation: permissions, lengths, formats, picklists, required fields."""
    creating = existing is None
    errors: list[JsonObj] = []
    forbidden = [
        name
        for name in values
        if not (schema.fields[name].createable if creating else schema.fields[name].updateable)
    ]
    if forbidden:
        errors.append(
            _record_error(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(forbidden)}. Please check the "
                "security settings of this field and verify that it is read/write for your "
                "profile or permission set.",
                forbidden,
            )
        )
    for name, value in values.items():
        spec = schema.fields[name]
        if name in forbidden or not isinstance(value, str):
            continue
        label = schema.label(name)
        if spec.type in LENGTH_TYPES and len(value) > spec.length:
            errors.append(
                _record_error(
                    "STRING_TOO_LONG",
                    f"{label}: data value too large: {value[: spec.length]} "
                    f"(max length={spec.length})",
                    [name],
                )
            )
        elif spec.type == "email" and not is_valid_email(value):
            errors.append(
                _record_error(
                    "INVALID_EMAIL_ADDRESS", f"{label}: invalid email address: {value}", [name]
                )
            )
        elif spec.restricted_picklist and spec.type in ("picklist", "multipicklist"):
            chosen = value.split(";") if spec.type == "multipicklist" else [value]
            bad = [v for v in chosen if v not in spec.picklist_values]
            if bad:
                errors.append(
                    _record_error(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{label}: bad value for restricted picklist field: {bad[0]}",
                        [name],
                    )
                )
    merged: JsonObj = dict(existing) if existing is not None else dict(schema.defaults)
    merged.update(values)
    required = (
        schema.required_on_create
        if creating
        else [n for n in values if n in schema.required_on_create]
    )
    missing = [n for n in required if merged.get(n) is None]
    if missing:
        errors.append(
            _record_error(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        )
    return errors


def _fold(value: object) -> str | None:
    if value is None:
        return None
    return value.casefold() if isinstance(value, str) else str(value)


def _comparable(spec: FieldSpec, value: object) -> object:
    if value is None:
        return None
    if spec.type in ("id", "reference"):
        return normalize_id(value) or value
    if isinstance(value, str):
        return value.casefold()
    return value


def _condition_holds(spec: FieldSpec, cond: soql.Condition, record: JsonObj) -> bool:
    actual = _comparable(spec, record.get(spec.name))
    wanted = [_comparable(spec, literal.value) for literal in cond.values]
    if cond.op in ("=", "IN"):
        return actual in wanted
    # SOQL's != and NOT IN keep rows whose value is null unless null itself is excluded.
    return actual not in wanted


def _sort_key(spec: FieldSpec, record: JsonObj) -> tuple[int, Any]:
    # Values of one field share a type, so comparing the folded values is safe; the leading
    # flag keeps nulls apart from them.
    value = record.get(spec.name)
    if value is None:
        return (0, 0)
    return (1, _comparable(spec, value))
