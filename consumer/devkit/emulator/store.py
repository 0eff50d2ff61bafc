"""The org's data: every record of every sObject, the ids of deleted ones, and the id factory.

Queries (:mod:`~consumer.devkit.emulator.query`) read it, collections
(:mod:`~consumer.devkit.emulator.writes`) change it, and tests seed and inspect it directly
through the Python-side methods here (no validation on that path, so a test can set up states
the API would refuse).

Every change goes through :meth:`RecordStore.insert`, :meth:`RecordStore.change` or
:meth:`RecordStore.remove`, which keep the lookup indexes right: an equality filter or an
external id is then found without scanning every record, so an org of 100,000 records answers
a 200-value ``IN`` query or upsert in milliseconds (a benchmark drives the emulator that hard).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from consumer.devkit.emulator.errors import EmulatorError, JsonObj
from consumer.devkit.emulator.ids import IdFactory, normalize_id
from consumer.devkit.emulator.schema import SObjectSchema
from consumer.devkit.emulator.values import fold, format_sf_datetime

__all__ = ["ACCOUNT_KEY_PREFIX", "CONVERTED_LEAD_STATUS", "RecordStore"]

ACCOUNT_KEY_PREFIX = "001"
"""Accounts are not stored, but conversion names one (``ConvertedAccountId``)."""
CONVERTED_LEAD_STATUS = "Closed - Converted"


class RecordStore:
    """Records by sObject and id (insertion order kept), plus the schemas that shape them."""

    def __init__(self, schemas: dict[str, SObjectSchema], clock: Callable[[], float]) -> None:
        self.schemas = schemas
        self._schemas_lower = {name.lower(): s for name, s in schemas.items()}
        self._clock = clock
        self.ids = IdFactory()
        # sObject name -> record id -> the stored record (every field present, null or not).
        # Read freely; change only through insert/change/remove (they keep the indexes right).
        self.rows: dict[str, dict[str, JsonObj]] = {name: {} for name in schemas}
        self.deleted: set[str] = set()
        # sObject -> field -> folded value -> ids holding it (a dict: an ordered set). Built on
        # first use of a field, then kept up to date by every change.
        self._indexes: dict[str, dict[str, dict[str | None, dict[str, None]]]] = {
            name: {} for name in schemas
        }
        # Record id -> creation number, so indexed lookups answer in creation order as a scan.
        self._created: dict[str, int] = {}
        self._sequence = itertools.count()

    # ---- lookups -----------------------------------------------------------------------

    def schema(self, sobject: str) -> SObjectSchema:
        """The schema of ``sobject`` (exact name); EmulatorError if unknown."""
        schema = self.schemas.get(sobject)
        if schema is None:
            raise EmulatorError(f"unknown sObject {sobject!r}")
        return schema

    def schema_any_case(self, sobject: str) -> SObjectSchema | None:
        """The schema of ``sobject`` ignoring case, as the API looks names up; None if unknown."""
        return self._schemas_lower.get(sobject.lower())

    def schema_for_id(self, record_id: str) -> SObjectSchema | None:
        """The sObject whose key prefix starts ``record_id``."""
        for schema in self.schemas.values():
            if record_id.startswith(schema.key_prefix):
                return schema
        return None

    def find(self, record_id: str) -> tuple[SObjectSchema, JsonObj] | None:
        """The live (not a copy) record with canonical id ``record_id`` and its schema."""
        schema = self.schema_for_id(record_id)
        if schema is None:
            return None
        record = self.rows[schema.name].get(record_id)
        return (schema, record) if record is not None else None

    def now(self) -> str:
        """The current time in Salesforce's datetime format."""
        return format_sf_datetime(self._clock())

    def matching(self, sobject: str, field: str, values: Iterable[object]) -> list[JsonObj]:
        """The live records of ``sobject`` whose ``field`` equals one of ``values`` ignoring
        case (as :func:`~consumer.devkit.emulator.values.fold` compares), in creation order.

        ``field`` is the field's own spelling. Answered from an index, so callers with a
        stricter notion of equality filter the answer again (it never misses a record).
        """
        index = self._index(sobject, field)
        found: set[str] = set()
        for value in values:
            found.update(index.get(fold(value), ()))
        rows = self.rows[sobject]
        return [rows[i] for i in sorted(found, key=self._created.__getitem__)]

    def _index(self, sobject: str, field: str) -> dict[str | None, dict[str, None]]:
        indexes = self._indexes[sobject]
        index = indexes.get(field)
        if index is None:
            index = {}
            for record_id, record in self.rows[sobject].items():
                index.setdefault(fold(record.get(field)), {})[record_id] = None
            indexes[field] = index
        return index

    # ---- changes (the only paths that write rows) ------------------------------------

    def insert(self, sobject: str, record: JsonObj) -> None:
        """Store a new record (``record["Id"]`` set, every field present)."""
        record_id = str(record["Id"])
        self.rows[sobject][record_id] = record
        self._created[record_id] = next(self._sequence)
        for field, index in self._indexes[sobject].items():
            index.setdefault(fold(record.get(field)), {})[record_id] = None

    def change(self, sobject: str, record_id: str, values: Mapping[str, Any]) -> None:
        """Set fields of a stored record."""
        record = self.rows[sobject][record_id]
        for field, index in self._indexes[sobject].items():
            if field not in values:
                continue
            before, after = fold(record.get(field)), fold(values[field])
            if before != after:
                self._unindex(index, before, record_id)
                index.setdefault(after, {})[record_id] = None
        record.update(values)

    def remove(self, sobject: str, record_id: str) -> None:
        """Delete a stored record (its id is remembered as deleted)."""
        record = self.rows[sobject].pop(record_id)
        self._created.pop(record_id, None)
        for field, index in self._indexes[sobject].items():
            self._unindex(index, fold(record.get(field)), record_id)
        self.deleted.add(record_id)

    @staticmethod
    def _unindex(index: dict[str | None, dict[str, None]], key: str | None, record_id: str) -> None:
        holders = index.get(key)
        if holders is not None:
            holders.pop(record_id, None)
            if not holders:
                del index[key]

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
                if record_id in self.rows[sobject]:
                    raise EmulatorError(f"{sobject} {record_id} already exists")
                continue
            record[spec.name] = value
        if record_id is None:
            record_id = self.ids.make(schema.key_prefix)
        now = self.now()
        record["Id"] = record_id
        record["CreatedDate"] = record.get("CreatedDate") or now
        record["LastModifiedDate"] = record.get("LastModifiedDate") or now
        self.insert(sobject, record)
        return record_id

    def records(self, sobject: str) -> list[JsonObj]:
        """Copies of every record of ``sobject``, in creation order."""
        self.schema(sobject)
        return [dict(r) for r in self.rows[sobject].values()]

    def get(self, sobject: str, record_id: str) -> JsonObj | None:
        """A copy of one record (15- or 18-character id), or None."""
        self.schema(sobject)
        canonical = normalize_id(record_id)
        record = self.rows[sobject].get(canonical) if canonical else None
        return dict(record) if record is not None else None

    def find_by_email(self, sobject: str, email: str) -> list[JsonObj]:
        """Copies of the records whose Email equals ``email`` ignoring case."""
        folded = email.casefold()
        # Filter first, copy only the matches: tests call this once per person.
        return [
            dict(r)
            for r in self.rows[self.schema(sobject).name].values()
            if isinstance(r.get("Email"), str) and r["Email"].casefold() == folded
        ]

    def convert_lead(
        self, lead_id: str, contact_id: str | None = None, *, account_id: str | None = None
    ) -> str:
        """Convert a Lead as Salesforce's lead conversion does; return the Contact's id.

        Without ``contact_id`` a Contact is created from the Lead's name and email (as
        conversion does); with it, that existing Contact is the one the Lead became. The
        account is ``account_id``, else the Contact's ``AccountId``, else a new Account id
        (Accounts are not stored here), set on the Contact when it has none. The Lead stays
        in the Lead table, read-only: ``IsConverted`` true, ``ConvertedContactId``,
        ``ConvertedAccountId``, ``ConvertedDate`` today, ``Status`` "Closed - Converted".
        """
        canonical = normalize_id(lead_id)
        lead = self.rows["Lead"].get(canonical) if canonical else None
        if lead is None:
            raise EmulatorError(f"no Lead {lead_id!r}")
        if lead.get("IsConverted"):
            raise EmulatorError(f"Lead {lead['Id']} is already converted")
        if contact_id is None:
            contact_id = self.seed(
                "Contact",
                {
                    "Email": lead.get("Email"),
                    "FirstName": lead.get("FirstName"),
                    "LastName": lead.get("LastName"),
                },
            )
        contact_key = normalize_id(contact_id)
        contact = self.rows["Contact"].get(contact_key) if contact_key else None
        if contact is None:
            raise EmulatorError(f"no Contact {contact_id!r}")
        if account_id is not None:
            account = normalize_id(account_id)
            if account is None or not account.startswith(ACCOUNT_KEY_PREFIX):
                raise EmulatorError(f"{account_id!r} is not an Account id")
        else:
            account = contact.get("AccountId") or self.ids.make(ACCOUNT_KEY_PREFIX)
        now = self.now()
        if contact.get("AccountId") is None:
            self.change("Contact", contact["Id"], {"AccountId": account, "LastModifiedDate": now})
        self.change(
            "Lead",
            lead["Id"],
            {
                "IsConverted": True,
                "ConvertedContactId": contact["Id"],
                "ConvertedAccountId": account,
                "ConvertedDate": datetime.fromtimestamp(self._clock(), tz=UTC).date().isoformat(),
                "Status": CONVERTED_LEAD_STATUS,
                "LastModifiedDate": now,
            },
        )
        return str(contact["Id"])
