"""The mapping file: which Didomi choices go to which Salesforce fields, for each target.

Loading checks the file's shape (field names are Salesforce API names, each field mapped once
per target); :func:`validate_against_describe` checks it against the org's real fields and
:func:`plan_targets` turns both into what the mapper needs (how each preference is written).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consumer.errors import MappingError
from consumer.model import sync_state
from consumer.model.changes import ChoiceKey, FieldValues

_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ApiName = Annotated[str, Field(pattern=_API_NAME.pattern, max_length=80)]
"""A Salesforce API name (``Email``, ``Newsletter_Consent__c``)."""

PreferenceFormat = Literal["auto", "text", "multipicklist"]
DeletionPolicy = Literal["ignore", "withdraw"]


class TargetMapping(BaseModel):
    """One Salesforce object that consent is written to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sobject: ApiName
    upsert_mode: bool = False
    match_field: ApiName = "Email"
    #: An External ID field holding organization_user_id: with upsert_mode on, people are
    #: upserted by it (no query); with upsert_mode off, records are found by it.
    external_id_field: ApiName | None = None
    #: A Long Text Area field in which the service keeps, per mapped field, the stamp (event
    #: time, partition, offset, event id) of the value it last wrote. A write includes only the
    #: fields whose incoming choice is newer, so that whatever order events arrive in (late
    #: retries, replays, redrives, several replicas), each field ends with the latest choice.
    #: Required unless ``allow_late_overwrites`` says otherwise.
    sync_state_field: ApiName | None = None
    #: Run without ``sync_state_field``, accepting that a late event (a Didomi retry, a
    #: replay, a redrive) overwrites a newer choice: a withdrawal can be rolled back to a
    #: consent. For orgs that cannot add the field; ``check`` still warns.
    allow_late_overwrites: bool = False
    #: A datetime field stamped with the event time of the newest choice written: a
    #: human-readable "last synced" mark for administrators (not an ordering guard).
    last_synced_field: ApiName | None = None
    create_defaults: dict[ApiName, str | int | float | bool] = Field(default_factory=dict)
    purposes: dict[str, ApiName] = Field(default_factory=dict)
    preferences: dict[str, ApiName] = Field(default_factory=dict)
    preference_values: dict[str, dict[str, ApiName]] = Field(default_factory=dict)
    #: How a preference's selected values are written: ``auto`` follows the field's type
    #: (``;`` for a multipicklist, Didomi's comma list for text); the others force it.
    preference_format: dict[str, PreferenceFormat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _each_field_once(self) -> TargetMapping:
        seen: dict[str, str] = {}
        for where, name in self.mapped_fields():
            key = name.lower()
            if key in seen:
                raise ValueError(f"field {name} is mapped twice ({seen[key]} and {where})")
            if key == self.match_field.lower():
                raise ValueError(f"field {name} ({where}) is the match field; it cannot be mapped")
            if self.external_id_field and key == self.external_id_field.lower():
                raise ValueError(f"field {name} ({where}) is the external id field")
            if self.last_synced_field and key == self.last_synced_field.lower():
                raise ValueError(f"field {name} ({where}) is the last_synced_field")
            if self.sync_state_field and key == self.sync_state_field.lower():
                raise ValueError(f"field {name} ({where}) is the sync_state_field")
            seen[key] = where
        special = [
            f.lower()
            for f in (self.match_field, self.external_id_field, self.last_synced_field)
            if f
        ]
        if self.sync_state_field and self.sync_state_field.lower() in special:
            raise ValueError(
                f"sync_state_field {self.sync_state_field} is also the match, external id or "
                "last_synced field"
            )
        # A default is written when a record is created: on a consent field it would be a
        # choice nobody made (a `true` without consent when the event did not mention it, or
        # in place of a value Salesforce refused); the other fields are the service's own.
        own = {
            f.lower(): what
            for what, f in (
                ("sync_state_field", self.sync_state_field),
                ("last_synced_field", self.last_synced_field),
                ("match_field", self.match_field),
                ("external_id_field", self.external_id_field),
            )
            if f
        }
        for name in self.create_defaults:
            if name.lower() in seen:
                raise ValueError(
                    f"create_defaults names {name}, which is mapped ({seen[name.lower()]}): "
                    "a created record would hold a choice nobody made"
                )
            if name.lower() in own:
                raise ValueError(
                    f"create_defaults names {name}, the {own[name.lower()]}: the service "
                    "writes it itself"
                )
        for pref in self.preference_format:
            if pref not in self.preferences:
                raise ValueError(f"preference_format names {pref!r}, which is not in preferences")
        if not (self.purposes or self.preferences or self.preference_values):
            raise ValueError("the target maps no purpose, preference or preference value")
        if not self.sync_state_field and not self.allow_late_overwrites:
            raise ValueError(
                "sync_state_field is not set: without a per-field sync state, an event that "
                "arrives late (Didomi retries for minutes and does not keep order; replays and "
                "redrives re-send old events) overwrites a newer choice, and a withdrawal can "
                "be rolled back to a consent. Set it to a Long Text Area field (e.g. "
                "Didomi_Sync_State__c), or set allow_late_overwrites: true to accept that"
            )
        if self.sync_state_field and self.allow_late_overwrites:
            raise ValueError(
                "allow_late_overwrites is for a target without sync_state_field: with the "
                "sync state, late events never overwrite newer choices"
            )
        return self

    @property
    def lookup_field(self) -> str:
        """The field records are found by: the external id field if any, else match_field."""
        return self.external_id_field or self.match_field

    def mapped_fields(self) -> Iterable[tuple[str, str]]:
        """Yield ``(where in the mapping, field name)`` for every mapped field."""
        for purpose, name in self.purposes.items():
            yield f"purposes.{purpose}", name
        for pref, name in self.preferences.items():
            yield f"preferences.{pref}", name
        for pref, values in self.preference_values.items():
            for value, name in values.items():
                yield f"preference_values.{pref}.{value}", name

    def choice_keys(self) -> dict[str, ChoiceKey]:
        """Field -> the choice its stamp dates, named the same on every target.

        A purpose's field dates ``("purposes", P)``; a preference value's field dates
        ``("preference_values", P, V)``: a ``user.updated`` or ``event.updated`` stamps
        only the values that changed, so a value's stamp says nothing of the others. A
        preference's text field
        dates ``("preferences", P, *values)``, naming the values its target maps as fields
        too: their own stamps say when each was chosen, so the text speaks only for the
        others (for every value when the target maps none).
        """
        keys: dict[str, ChoiceKey] = {n: ("purposes", p) for p, n in self.purposes.items()}
        for p, name in self.preferences.items():
            keys[name] = ("preferences", p, *sorted(self.preference_values.get(p, {})))
        for p, values in self.preference_values.items():
            keys.update({name: ("preference_values", p, v) for v, name in values.items()})
        return keys

    def gated_by(self, choice: ChoiceKey) -> tuple[str, ...]:
        """This target's fields whose grants a newer stamp of ``choice`` (from any target's
        :meth:`choice_keys`) holds back: the text field by any stamp of its preference (a
        value chosen later changed the selection); a value's field by the value's stamps and
        by a text whose target does not map that value (the text is its only record
        there)."""
        kind, pref = choice[0], choice[1]
        if kind == "purposes":
            name = self.purposes.get(pref)
            return (name,) if name else ()
        text = self.preferences.get(pref)
        out = [text] if text else []
        values = self.preference_values.get(pref, {})
        if kind == "preferences":
            covered = set(choice[2:])
            out.extend(name for value, name in values.items() if value not in covered)
        elif kind == "preference_values" and (name := values.get(choice[2])):
            out.append(name)
        return tuple(out)

    def withdrawn(self) -> FieldValues:
        """Every mapped field at "no consent": purposes and preference values false,
        preferences cleared (a new dict on each call)."""
        out: FieldValues = dict.fromkeys(self.purposes.values(), False)
        out.update(dict.fromkeys(self.preferences.values()))
        for value_fields in self.preference_values.values():
            out.update(dict.fromkeys(value_fields.values(), False))
        return out


class MappingConfig(BaseModel):
    """The whole mapping file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regulations: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["gdpr"])
    #: ``user.deleted``: ``ignore`` keeps what Salesforce holds; ``withdraw`` sets every mapped
    #: field of the person to "no consent" (purposes and preference values false, preferences
    #: cleared), stamped with the deletion's time, so any later choice still wins.
    on_user_deleted: DeletionPolicy = "ignore"
    #: ``event.deleted`` (Didomi recomputes the user's state without the event): ``ignore``
    #: keeps what Salesforce holds; ``withdraw`` withdraws what the deleted event granted (its
    #: purposes enabled, its selected preferences), stamped with the event's own time, so a
    #: later choice still wins. What it withdrew stays withdrawn: the state before it is not
    #: known here.
    on_event_deleted: DeletionPolicy = "ignore"
    targets: Annotated[list[TargetMapping], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct_targets(self) -> MappingConfig:
        names = [t.sobject.lower() for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("each sobject may be a target once")
        return self


def load_mapping(path: str | Path) -> MappingConfig:
    """Read and validate a mapping file; raise :class:`MappingError` saying what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read mapping file {path}: {exc.strerror}") from None
    return parse_mapping(text, source=str(path))


def parse_mapping(text: str, *, source: str = "<mapping>") -> MappingConfig:
    """Validate a mapping document given as YAML text."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{source} is not valid YAML: {exc}") from None
    try:
        return MappingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MappingError(f"{source} is invalid: {problems}") from None


# --- against the org's describe --------------------------------------------------------

BOOLEAN_TYPES = frozenset({"boolean"})
STRING_TYPES = frozenset({"string", "textarea", "picklist", "multipicklist"})
#: Salesforce's limit on the values selected in one multipicklist.
MAX_MULTIPICKLIST_VALUES = 100


@dataclass(frozen=True)
class FieldInfo:
    """What the mapper and the check need to know of one Salesforce field (from describe)."""

    name: str
    type: str
    length: int = 0
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    defaulted_on_create: bool = False
    external_id: bool = False
    picklist_values: tuple[str, ...] = ()
    #: A restricted picklist takes only its active values.
    restricted: bool = False
    filterable: bool = True

    @classmethod
    def from_describe(cls, raw: Mapping[str, Any]) -> FieldInfo:
        """Build from one entry of describe's ``fields``."""
        return cls(
            name=str(raw["name"]),
            type=str(raw.get("type", "")),
            length=int(raw.get("length") or 0),
            createable=bool(raw.get("createable", False)),
            updateable=bool(raw.get("updateable", False)),
            nillable=bool(raw.get("nillable", True)),
            defaulted_on_create=bool(raw.get("defaultedOnCreate", False)),
            external_id=bool(raw.get("externalId", False)),
            picklist_values=tuple(
                str(v["value"]) for v in raw.get("picklistValues") or () if v.get("active", True)
            ),
            restricted=bool(raw.get("restrictedPicklist", False)),
            filterable=bool(raw.get("filterable", True)),
        )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a target's mapping, phrased for an operator."""

    sobject: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.sobject} {self.where}: {self.message}"


def describe_fields(
    raw_fields: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, FieldInfo], set[str]]:
    """Describe's fields keyed by lower-cased name, and the lower-cased names that more than one
    field answers to (ambiguous: a mapping cannot say which it means)."""
    fields: dict[str, FieldInfo] = {}
    ambiguous: set[str] = set()
    for raw in raw_fields:
        info = FieldInfo.from_describe(raw)
        key = info.name.lower()
        if key in fields:
            ambiguous.add(key)
        fields[key] = info
    return fields, ambiguous


def validate_against_describe(
    target: TargetMapping, fields: Mapping[str, FieldInfo], ambiguous: Set[str] = frozenset()
) -> list[Problem]:
    """Compare a target's mapping with its sObject's fields; return every problem found.

    ``fields`` is keyed by lower-cased field name (Salesforce names are case-insensitive).
    """
    problems: list[Problem] = []

    def add(where: str, message: str) -> None:
        problems.append(Problem(target.sobject, where, message))

    for where, name in _named_fields(target):
        if name.lower() in ambiguous:
            add(where, f"field name {name} is ambiguous: several fields answer to it")
    match = fields.get(target.match_field.lower())
    if match is None:
        add("match_field", f"field {target.match_field} does not exist")
    if target.external_id_field:
        ext = fields.get(target.external_id_field.lower())
        if ext is None:
            add("external_id_field", f"field {target.external_id_field} does not exist")
        elif not ext.external_id:
            add(
                "external_id_field", f"field {target.external_id_field} is not an External ID field"
            )
        elif target.upsert_mode and not (ext.createable and ext.updateable):
            add("external_id_field", f"field {target.external_id_field} is not writable")
    if target.last_synced_field:
        synced = fields.get(target.last_synced_field.lower())
        if synced is None:
            add("last_synced_field", f"field {target.last_synced_field} does not exist")
        elif synced.type != "datetime":
            add("last_synced_field", f"field {synced.name} is {synced.type}, expected datetime")
        elif not synced.updateable or (target.upsert_mode and not synced.createable):
            add("last_synced_field", f"field {synced.name} is not writable")
    if target.sync_state_field:
        problems.extend(_check_state_field(target, fields))
    for where, name in target.mapped_fields():
        info = fields.get(name.lower())
        if info is None:
            add(where, f"field {name} does not exist")
            continue
        want = STRING_TYPES if where.startswith("preferences.") else BOOLEAN_TYPES
        if info.type not in want:
            add(where, f"field {name} is {info.type}, expected {' or '.join(sorted(want))}")
        if not info.updateable:
            add(where, f"field {name} is not updateable")
        if target.upsert_mode and not info.createable:
            add(where, f"field {name} is not createable (upsert_mode is on)")
    for pref, values in target.preference_values.items():
        pref_field = target.preferences.get(pref)
        info = fields.get(pref_field.lower()) if pref_field else None
        if info is not None and info.type in {"picklist", "multipicklist"}:
            allowed = {v.lower() for v in info.picklist_values}
            for value in values:
                if value.lower() not in allowed:
                    add(
                        f"preference_values.{pref}.{value}",
                        f"value {value!r} is not a picklist value of {info.name}",
                    )
    if target.upsert_mode:
        given = {k.lower() for k in target.create_defaults}
        given |= {target.match_field.lower(), (target.external_id_field or "").lower()}
        for info in fields.values():
            required = info.createable and not info.nillable and not info.defaulted_on_create
            # Checkboxes are never null: Salesforce defaults them to false.
            if required and info.name.lower() not in given and info.type not in BOOLEAN_TYPES:
                add("create_defaults", f"required field {info.name} has no default")
        for name in target.create_defaults:
            info = fields.get(name.lower())
            if info is None:
                add(f"create_defaults.{name}", f"field {name} does not exist")
            elif not info.createable:
                # Salesforce would refuse every create carrying it (and while running, the
                # writer would leave it out and describe the target again for ever).
                add(f"create_defaults.{name}", f"field {name} cannot be set on create")
    return problems


def _check_state_field(target: TargetMapping, fields: Mapping[str, FieldInfo]) -> list[Problem]:
    name = target.sync_state_field
    assert name is not None
    info = fields.get(name.lower())
    where = "sync_state_field"
    if info is None:
        return [Problem(target.sobject, where, f"field {name} does not exist")]
    out: list[Problem] = []
    if info.type != "textarea":
        out.append(
            Problem(
                target.sobject,
                where,
                f"field {info.name} is {info.type}, expected a Long Text Area (textarea)",
            )
        )
    need = sync_state.capacity(n for _, n in target.mapped_fields())
    if info.length < need:
        out.append(
            Problem(
                target.sobject,
                where,
                f"field {info.name} holds {info.length} characters; the state of "
                f"{sum(1 for _ in target.mapped_fields())} mapped fields needs up to {need} "
                "(use a Long Text Area, up to 131,072)",
            )
        )
    if not info.updateable or (target.upsert_mode and not info.createable):
        out.append(Problem(target.sobject, where, f"field {info.name} is not writable"))
    return out


def warnings_for(target: TargetMapping) -> list[Problem]:
    """What is allowed but risky in a target's mapping (``check`` prints it; it does not fail)."""
    if target.sync_state_field:
        return []
    return [
        Problem(
            target.sobject,
            "sync_state_field",
            "not set (allow_late_overwrites): without a per-field sync state, an event that "
            "arrives late (Didomi retries for minutes and does not keep order; replays and "
            "redrives re-send old events) overwrites a newer choice, and a withdrawal can be "
            "rolled back. Set it to a Long Text Area field (e.g. Didomi_Sync_State__c).",
        )
    ]


def _named_fields(target: TargetMapping) -> Iterable[tuple[str, str]]:
    yield "match_field", target.match_field
    for where in ("external_id_field", "last_synced_field", "sync_state_field"):
        value = getattr(target, where)
        if value:
            yield where, value
    yield from target.mapped_fields()
    for name in target.create_defaults:
        yield f"create_defaults.{name}", name


def resolve_names(target: TargetMapping, fields: Mapping[str, FieldInfo]) -> TargetMapping:
    """The mapping with every field name in describe's own spelling.

    Salesforce takes names in any case, but query results and describe use the field's own
    spelling: lookups and writes must use it too. Unknown names are left as they are (the
    check reports them).
    """

    def own(name: str) -> str:
        info = fields.get(name.lower())
        return info.name if info is not None else name

    def own_opt(name: str | None) -> str | None:
        return own(name) if name else name

    return target.model_copy(
        update={
            "match_field": own(target.match_field),
            "external_id_field": own_opt(target.external_id_field),
            "last_synced_field": own_opt(target.last_synced_field),
            "sync_state_field": own_opt(target.sync_state_field),
            "create_defaults": {own(k): v for k, v in target.create_defaults.items()},
            "purposes": {k: own(v) for k, v in target.purposes.items()},
            "preferences": {k: own(v) for k, v in target.preferences.items()},
            "preference_values": {
                k: {vk: own(vv) for vk, vv in v.items()}
                for k, v in target.preference_values.items()
            },
        }
    )


@dataclass(frozen=True)
class TargetPlan:
    """A target mapping resolved against the org: what the pure mapper and the writer use."""

    mapping: TargetMapping
    #: preference id -> the separator its selected values are joined with
    preference_separators: dict[str, str] = field(default_factory=dict)
    #: Describe's fields by lower-cased name (empty when planned without describe).
    fields: Mapping[str, FieldInfo] = field(default_factory=dict)

    @property
    def sobject(self) -> str:
        """The target's sObject name."""
        return self.mapping.sobject

    @property
    def converts(self) -> bool:
        """True for an sObject whose records can be converted (Lead: ``IsConverted``)."""
        return self.mapping.sobject.lower() == "lead" and "isconverted" in self.fields

    def info(self, name: str) -> FieldInfo | None:
        """Describe's entry of a field."""
        return self.fields.get(name.lower())


def plan_target(target: TargetMapping, fields: Mapping[str, FieldInfo] | None) -> TargetPlan:
    """Resolve names to describe's spelling and decide how each preference is written."""
    if fields is not None:
        target = resolve_names(target, fields)
    separators: dict[str, str] = {}
    for pref, name in target.preferences.items():
        fmt = target.preference_format.get(pref, "auto")
        if fmt == "auto":
            info = fields.get(name.lower()) if fields is not None else None
            fmt = "multipicklist" if info is not None and info.type == "multipicklist" else "text"
        separators[pref] = ";" if fmt == "multipicklist" else ","
    return TargetPlan(mapping=target, preference_separators=separators, fields=fields or {})
