"""Field values on the wire: JSON type checks, datetimes, emails, and per-record validation.

Two levels of checking, as in Salesforce:

* :func:`json_type_ok` / :func:`json_token` -- a value of the wrong JSON type (``"true"`` for a
  checkbox) fails the *whole request* with ``JSON_PARSER_ERROR``;
* :func:`field_errors` -- a well-typed value that breaks a field rule (too long, not an email,
  not in a restricted picklist, required but missing, read-only) fails *that record* only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from consumer.devkit.emulator.errors import JsonObj, record_error
from consumer.devkit.emulator.schema import (
    LENGTH_TYPES,
    NUMBER_TYPES,
    STRING_TYPES,
    FieldSpec,
    SObjectSchema,
)

__all__ = [
    "MAX_MULTIPICKLIST_VALUES",
    "field_errors",
    "fold",
    "format_sf_datetime",
    "is_valid_email",
    "java_type",
    "json_token",
    "json_type_ok",
    "normalize_value",
    "stored_datetimes",
]

MAX_MULTIPICKLIST_VALUES = 100
"""A multi-select picklist holds at most 100 selected values."""

# The Java type names Salesforce's JSON deserializer mentions in JSON_PARSER_ERROR messages.
_JAVA_TYPES = {"boolean": "boolean", "datetime": "datetime", "date": "date", "int": "int"}


def format_sf_datetime(epoch_seconds: float) -> str:
    """``2026-11-28T21:30:00.000+0000``: Salesforce's datetime format (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def java_type(spec: FieldSpec) -> str:
    """The type name a JSON_PARSER_ERROR message gives for ``spec``'s values."""
    return _JAVA_TYPES.get(spec.type, "string" if spec.type in STRING_TYPES else "double")


def json_token(value: object) -> tuple[str, str]:
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


def stored_datetimes(schema: SObjectSchema, values: Mapping[str, Any]) -> dict[str, Any]:
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


def json_type_ok(spec: FieldSpec, value: object) -> bool:
    """Whether ``value`` has a JSON type Salesforce accepts for ``spec`` (null always does)."""
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


_SPACE = re.compile(r"\s")


def is_valid_email(value: str) -> bool:
    """One ``@``, a non-empty local part, a dotted domain without empty labels, no spaces."""
    if _SPACE.search(value) or value.count("@") != 1:
        return False
    local, domain = value.split("@")
    labels = domain.split(".")
    return bool(local) and len(labels) >= 2 and all(labels)


def normalize_value(spec: FieldSpec, value: object) -> object:
    """The value as Salesforce stores it."""
    # Salesforce stores an empty string as null, and a null checkbox as false.
    if spec.type in STRING_TYPES and value == "":
        return None
    if spec.type == "boolean" and value is None:
        return False
    return value


def fold(value: object) -> str | None:
    """A value as Salesforce compares it for matching: strings ignoring case."""
    if value is None:
        return None
    return value.casefold() if isinstance(value, str) else str(value)


def field_errors(
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
            record_error(
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
        if spec.type in LENGTH_TYPES and len(value) > spec.length:
            errors.append(
                record_error(
                    "STRING_TOO_LONG",
                    f"{schema.label(name)}: data value too large: {value[: spec.length]} "
                    f"(max length={spec.length})",
                    [name],
                )
            )
        elif spec.type == "email" and not is_valid_email(value):
            errors.append(
                record_error(
                    "INVALID_EMAIL_ADDRESS",
                    f"{schema.label(name)}: invalid email address: {value}",
                    [name],
                )
            )
        elif spec.type == "multipicklist" and len(value.split(";")) > MAX_MULTIPICKLIST_VALUES:
            # TOO_MANY_ENUM_VALUE is the status code Salesforce's StatusCode enum has for this
            # (clients list it with STRING_TOO_LONG and the picklist errors); the message
            # wording is ours, Salesforce does not document it.
            errors.append(
                record_error(
                    "TOO_MANY_ENUM_VALUE",
                    f"{schema.label(name)}: too many values selected: {len(value.split(';'))} "
                    f"(max {MAX_MULTIPICKLIST_VALUES})",
                    [name],
                )
            )
        elif spec.restricted_picklist and spec.type in ("picklist", "multipicklist"):
            chosen = value.split(";") if spec.type == "multipicklist" else [value]
            bad = [v for v in chosen if v not in spec.picklist_values]
            if bad:
                errors.append(
                    record_error(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{schema.label(name)}: bad value for restricted picklist field: {bad[0]}",
                        [name],
                    )
                )
    required = (
        schema.required_on_create
        if creating
        else [n for n in values if n in schema.required_on_create]
    )
    missing = []
    if required:
        merged: JsonObj = dict(existing) if existing is not None else dict(schema.defaults)
        merged.update(values)
        missing = [n for n in required if merged.get(n) is None]
    if missing:
        errors.append(
            record_error(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        )
    return errors
