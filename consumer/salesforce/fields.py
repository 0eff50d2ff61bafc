"""Field values checked against describe before they are sent (pure).

A value Salesforce would refuse (too long for its field, not a value of a restricted
picklist, too many values in a multipicklist) is left out of the write with its own error, so
that it never fails the rest of the record: a withdrawal next to a bad preference value is
still written. The codes and wording follow Salesforce's own per-record errors.
"""

from __future__ import annotations

from consumer.mapping import MAX_MULTIPICKLIST_VALUES, FieldInfo
from consumer.model.changes import FieldValue
from consumer.model.outcomes import SalesforceErrorInfo

#: Field types whose values Salesforce bounds by ``length``.
LENGTH_TYPES = frozenset({"string", "textarea", "picklist", "multipicklist", "email", "url"})
#: Per-record codes that name the fields at fault: the record is written again without them.
FIELD_CODES = frozenset(
    {
        "STRING_TOO_LONG",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "TOO_MANY_ENUM_VALUE",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "FIELD_INTEGRITY_EXCEPTION",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "INVALID_FIELD",
        "INVALID_EMAIL_ADDRESS",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "REQUIRED_FIELD_MISSING",
    }
)


def refusal(info: FieldInfo | None, value: FieldValue) -> SalesforceErrorInfo | None:
    """Why Salesforce would refuse ``value`` for this field, or None when it would not."""
    if info is None or value is None or isinstance(value, bool):
        return None
    if info.type in LENGTH_TYPES and info.length and len(value) > info.length:
        return SalesforceErrorInfo(
            code="STRING_TOO_LONG",
            message=f"{info.name}: data value too large: {len(value)} characters "
            f"(max length={info.length})",
            fields=[info.name],
        )
    if info.type == "multipicklist":
        chosen = value.split(";")
        if len(chosen) > MAX_MULTIPICKLIST_VALUES:
            return SalesforceErrorInfo(
                code="TOO_MANY_ENUM_VALUE",
                message=f"{info.name}: too many values selected: {len(chosen)} "
                f"(max {MAX_MULTIPICKLIST_VALUES})",
                fields=[info.name],
            )
    else:
        chosen = [value]
    if info.restricted and info.type in ("picklist", "multipicklist"):
        bad = [v for v in chosen if v not in info.picklist_values]
        if bad:
            return SalesforceErrorInfo(
                code="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                message=f"{info.name}: bad value for restricted picklist field: {bad[0][:80]}",
                fields=[info.name],
            )
    return None
