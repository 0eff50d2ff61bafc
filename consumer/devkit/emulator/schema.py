"""What the emulated org knows about its sObjects: fields, types, labels, defaults, describe.

:class:`FieldSpec` is how a test declares a field; :class:`SObjectSchema` holds one sObject's
fields (looked up ignoring case, as Salesforce does) and renders ``describe``;
:func:`builtin_schemas` builds Contact and Lead with their standard fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from consumer.devkit.emulator.errors import EmulatorError, JsonObj

__all__ = [
    "KNOWN_TYPES",
    "LENGTH_TYPES",
    "MAX_TEXT_AREA_LENGTH",
    "NUMBER_TYPES",
    "SHORT_TEXT_AREA_LENGTH",
    "STRING_TYPES",
    "FieldSpec",
    "SObjectSchema",
    "builtin_schemas",
]

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

SHORT_TEXT_AREA_LENGTH = 255
"""A Text Area holds 255 characters; a longer ``textarea`` is a Long Text Area."""
MAX_TEXT_AREA_LENGTH = 131_072
"""The largest Long Text Area Salesforce allows."""

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

    @property
    def long_text(self) -> bool:
        """A Long Text Area: ``textarea`` longer than 255 characters."""
        return self.type == "textarea" and self.length > SHORT_TEXT_AREA_LENGTH

    @property
    def filterable(self) -> bool:
        """Whether SOQL may use the field in ``WHERE`` (a Long Text Area may not)."""
        return not self.long_text

    @property
    def sortable(self) -> bool:
        """Whether SOQL may use the field in ``ORDER BY`` (not long text, not multipicklist)."""
        return not self.long_text and self.type != "multipicklist"


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
    if spec.type == "textarea" and not 1 <= spec.length <= MAX_TEXT_AREA_LENGTH:
        raise EmulatorError(
            f"field {spec.name}: a textarea holds 1 to {MAX_TEXT_AREA_LENGTH} characters, "
            f"not {spec.length}"
        )
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
        #: Fields hidden from the API user (deleted, or field-level security), kept to restore.
        self._hidden: dict[str, FieldSpec] = {}
        self._required = self._required_on_create()

    def hide(self, name: str) -> None:
        """Take a field away from the API: describe no longer lists it, and a query or write
        naming it fails as a whole with ``INVALID_FIELD`` (what deleting the field, or taking
        it away from the integration user's field-level security, does). Records keep the
        value, as Salesforce does while a deleted field can be undeleted."""
        spec = self.field(name)
        if spec is None:
            raise EmulatorError(f"{self.name}: no field {name} to hide")
        self._hidden[spec.name] = self.fields.pop(spec.name)
        del self._by_lower[spec.name.lower()]
        self._required = self._required_on_create()

    def require(self, name: str) -> None:
        """Make a field required (a custom field marked Required: describe says it is not
        nillable, and a create without it fails with ``REQUIRED_FIELD_MISSING``)."""
        spec = self.field(name)
        if spec is None:
            raise EmulatorError(f"{self.name}: no field {name} to require")
        self.fields[spec.name] = self._by_lower[spec.name.lower()] = replace(spec, nillable=False)
        self._required = self._required_on_create()

    def show(self, name: str) -> None:
        """Give a hidden field back (undeleted, or visible to the integration user again)."""
        key = next((n for n in self._hidden if n.lower() == name.lower()), None)
        if key is None:
            raise EmulatorError(f"{self.name}: no hidden field {name}")
        spec = self.fields[key] = self._hidden.pop(key)
        self._by_lower[key.lower()] = spec
        self._required = self._required_on_create()

    def _lower_names(self) -> set[str]:
        return {n.lower() for n in self.fields}

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name`` (any case), or None."""
        return self._by_lower.get(name.lower())

    def label(self, name: str) -> str:
        """The field's label, as used in Salesforce's per-record error messages."""
        return self._labels.get(name, _default_label(name))

    @property
    def required_on_create(self) -> tuple[str, ...]:
        """Fields a create must set: not nillable, not defaulted, writable."""
        return self._required

    def _required_on_create(self) -> tuple[str, ...]:
        return tuple(
            s.name
            for s in self.fields.values()
            if not s.nillable and not s.defaulted_on_create and s.createable
        )

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
            "filterable": spec.filterable,
            "sortable": spec.sortable,
            # Salesforce marks plain (not rich) text areas, short or long, this way.
            "extraTypeInfo": "plaintextarea" if spec.type == "textarea" else None,
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
        # Set by lead conversion only (see RecordStore.convert_lead): read-only to the API.
        FieldSpec("IsConverted", "boolean", updateable=False),
        FieldSpec("ConvertedContactId", "reference", createable=False, updateable=False),
        FieldSpec("ConvertedAccountId", "reference", createable=False, updateable=False),
        FieldSpec("ConvertedDate", "date", createable=False, updateable=False),
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
            "ConvertedContactId": "Converted Contact ID",
            "ConvertedAccountId": "Converted Account ID",
            "ConvertedDate": "Converted Date",
        }
        schemas[sobject] = SObjectSchema(
            sobject,
            prefix,
            [*standard, *custom_fields.get(sobject, ())],
            labels=labels,
            references={
                "AccountId": "Account",
                "ConvertedContactId": "Contact",
                "ConvertedAccountId": "Account",
            },
        )
    return schemas
