"""Duplicate rules (Setup > Duplicate Management) as they act on API saves.

A rule belongs to one sObject and matches on one field, exactly but ignoring case (what the
standard email matching amounts to). On a create, and on an update that changes the matched
field, the saved record is compared with the records already stored (not with the other
records of the same request: Salesforce compares simultaneous saves only with the database).
A match fails the record with ``DUPLICATES_DETECTED`` and a ``duplicateResult`` naming the
duplicates, unless the rule's action is "alert" and the request carries
``Sforce-Duplicate-Rule-Header: allowSave=true``; a "block" rule always fails it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from consumer.devkit.emulator.errors import EmulatorError, JsonObj, record_error
from consumer.devkit.emulator.schema import SObjectSchema
from consumer.devkit.emulator.values import fold

__all__ = [
    "DUPLICATE_RULE_HEADER",
    "DuplicateAction",
    "DuplicateRule",
    "DuplicateRuleHeader",
    "DuplicateRules",
]

DUPLICATE_RULE_HEADER = "Sforce-Duplicate-Rule-Header"
"""The request header that lets "alert" duplicate rules save anyway (API v52.0+)."""

DuplicateAction = Literal["alert", "block"]


@dataclass(frozen=True)
class DuplicateRuleHeader:
    """The parsed ``Sforce-Duplicate-Rule-Header``; every field defaults to false."""

    allow_save: bool = False
    include_record_details: bool = False
    run_as_current_user: bool = False

    @classmethod
    def parse(cls, value: str | None) -> DuplicateRuleHeader:
        """Read ``allowSave=true; includeRecordDetails=false; runAsCurrentUser=false``.

        Tolerant as Salesforce is: names and values ignore case and spaces, parts may come in
        any order or be missing, and unknown parts are ignored.
        """
        flags: dict[str, bool] = {}
        for part in (value or "").replace(",", ";").split(";"):
            name, sep, raw = part.partition("=")
            if sep:
                flags["".join(name.split()).lower()] = raw.strip().lower() == "true"
        return cls(
            allow_save=flags.get("allowsave", False),
            include_record_details=flags.get("includerecorddetails", False),
            run_as_current_user=flags.get("runascurrentuser", False),
        )


@dataclass(frozen=True)
class DuplicateRule:
    """One active duplicate rule: which sObject, which field it matches on, what it does."""

    name: str
    sobject: str
    action: DuplicateAction
    match_field: str
    message: str

    @property
    def matching_rule(self) -> str:
        """The name of the matching rule the duplicate rule uses."""
        return f"{self.sobject}_{self.match_field}_Matching_Rule"


class DuplicateRules:
    """The org's active duplicate rules and the check a save goes through."""

    def __init__(self) -> None:
        self._rules: list[DuplicateRule] = []

    def add(
        self,
        schema: SObjectSchema,
        action: str,
        match_field: str,
        name: str | None,
        message: str,
    ) -> DuplicateRule:
        """Activate a rule on ``schema`` (EmulatorError for an unknown field or action)."""
        if action not in ("alert", "block"):
            raise EmulatorError(f"a duplicate rule's action is 'alert' or 'block', not {action!r}")
        spec = schema.field(match_field)
        if spec is None:
            raise EmulatorError(f"no field {match_field!r} on {schema.name}")
        taken = {rule.name for rule in self._rules}
        if name is None:
            name = f"Standard_{schema.name}_Duplicate_Rule"
            n = 1
            while name in taken:
                n += 1
                name = f"{schema.name}_Duplicate_Rule_{n}"
        elif name in taken:
            raise EmulatorError(f"a duplicate rule named {name!r} already exists")
        rule = DuplicateRule(
            name, schema.name, "alert" if action == "alert" else "block", spec.name, message
        )
        self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Deactivate every rule."""
        self._rules.clear()

    def check(
        self,
        schema: SObjectSchema,
        existing: JsonObj | None,
        values: Mapping[str, Any],
        stored: Mapping[str, JsonObj],
        header: DuplicateRuleHeader,
        version: str,
    ) -> JsonObj | None:
        """The DUPLICATES_DETECTED error for a save, or None when it may go ahead.

        ``existing`` is the stored record an update changes (None for a create; a record
        never matches itself), ``values`` what the save writes, ``stored`` every record of the
        sObject.
        """
        record_id = existing["Id"] if existing is not None else None
        saved: JsonObj = dict(existing) if existing is not None else {}
        saved.update(values)
        found: list[tuple[DuplicateRule, list[JsonObj]]] = []
        for rule in self._rules:
            if rule.sobject != schema.name:
                continue
            # On an edit a rule runs only when the edit changes a field the rule matches on.
            if existing is not None and (
                rule.match_field not in values
                or values[rule.match_field] == existing.get(rule.match_field)
            ):
                continue
            wanted = fold(saved.get(rule.match_field))
            if wanted is None:
                continue  # blank fields never match
            matches = [
                record
                for rid, record in stored.items()
                if rid != record_id and fold(record.get(rule.match_field)) == wanted
            ]
            if matches:
                found.append((rule, matches))
        # A block rule wins over alert rules; alerts only fail without allowSave.
        failing = [(r, m) for r, m in found if r.action == "block"] or [
            (r, m) for r, m in found if not header.allow_save
        ]
        if not failing:
            return None
        rule, matches = failing[0]
        return _duplicates_error(rule, matches, header, version)


def _duplicates_error(
    rule: DuplicateRule, matches: list[JsonObj], header: DuplicateRuleHeader, version: str
) -> JsonObj:
    match_records = []
    for record in matches:
        shown: JsonObj = {
            "attributes": {
                "type": rule.sobject,
                "url": f"/services/data/v{version}/sobjects/{rule.sobject}/{record['Id']}",
            },
            "Id": record["Id"],
        }
        if header.include_record_details:
            shown.update((k, v) for k, v in record.items() if k != "Id")
        match_records.append(
            {
                "additionalInformation": [],
                "fieldDiffs": [],
                "matchConfidence": 100.0,
                "record": shown,
            }
        )
    error = record_error("DUPLICATES_DETECTED", rule.message)
    error["duplicateResult"] = {
        "allowSave": rule.action == "alert",
        "duplicateRule": rule.name,
        "duplicateRuleEntityType": rule.sobject,
        "errorMessage": rule.message,
        "matchResults": [
            {
                "entityType": rule.sobject,
                "errors": [],
                "matchEngine": "ExactMatchEngine",
                "matchRecords": match_records,
                "rule": rule.matching_rule,
                "size": len(match_records),
                "success": True,
            }
        ],
    }
    return error
