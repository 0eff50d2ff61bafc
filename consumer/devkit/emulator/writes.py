"""sObject Collections: create, update, upsert and delete up to 200 records per call.

Each call goes through the same stages, in Salesforce's order:

1. whole-request checks (:func:`_collection_body`, :meth:`CollectionWriter._prepare`): body
   shape, record count, sObject types, field names (any case) and JSON value types. Any
   failure here is a 400 and nothing is written;
2. per record: resolve the target (id or external id) and mark duplicates within the request;
3. per record: a converted Lead refuses any change; then field rules
   (:func:`~consumer.devkit.emulator.values.field_errors`), injected faults and duplicate rules
   (:mod:`~consumer.devkit.emulator.duplicates`), giving either a failure result or a planned
   write;
4. commit: with ``allOrNone`` one failure rolls every record back, otherwise the planned writes
   are applied and each record gets its result, in request order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.devkit.emulator.duplicates import DuplicateRuleHeader, DuplicateRules
from consumer.devkit.emulator.errors import ApiError, JsonObj, failure, not_found, record_error
from consumer.devkit.emulator.faults import FaultPlan
from consumer.devkit.emulator.ids import normalize_id
from consumer.devkit.emulator.limits import Stats
from consumer.devkit.emulator.schema import FieldSpec, SObjectSchema
from consumer.devkit.emulator.store import RecordStore
from consumer.devkit.emulator.values import (
    field_errors,
    fold,
    java_type,
    json_token,
    json_type_ok,
    normalize_value,
    stored_datetimes,
)

__all__ = ["MAX_COLLECTION_RECORDS", "CollectionWriter", "SaveContext"]

MAX_COLLECTION_RECORDS = 200
"""sObject Collections accept at most 200 records (or ids) per call."""

_ROLLED_BACK = (
    "Record rolled back because not all records were valid and the request was using AllOrNone "
    "header"
)


@dataclass(frozen=True)
class SaveContext:
    """What a collections request carries besides its body."""

    version: str  # the API version of the URL, for the record URLs in error details
    duplicate_header: DuplicateRuleHeader = field(default_factory=DuplicateRuleHeader)


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


class CollectionWriter:
    """The four sObject Collections calls over one :class:`RecordStore`."""

    def __init__(
        self, store: RecordStore, faults: FaultPlan, stats: Stats, duplicates: DuplicateRules
    ) -> None:
        self._store = store
        self._faults = faults
        self._stats = stats
        self._duplicates = duplicates

    def create(self, body: object, context: SaveContext) -> list[JsonObj]:
        """``POST composite/sobjects``."""
        all_or_none, raw_records = _collection_body(body)
        prepared = [self._prepare(raw, None) for raw in raw_records]
        results: list[JsonObj | None] = [None] * len(prepared)
        plan: list[_Planned] = []
        for i, item in enumerate(prepared):
            if item.has_id and item.raw_id is not None:
                results[i] = failure(
                    [
                        record_error(
                            "INVALID_FIELD_FOR_INSERT_UPDATE",
                            "cannot specify Id in an insert call",
                            ["Id"],
                        )
                    ]
                )
                continue
            planned = self._plan_write(i, item, None, "create", [item.values.get("Email")], context)
            if isinstance(planned, _Planned):
                plan.append(planned)
            else:
                results[i] = planned
        return self._commit(all_or_none, results, plan, upsert=False)

    def update(self, body: object, context: SaveContext) -> list[JsonObj]:
        """``PATCH composite/sobjects`` (each record carries its id)."""
        all_or_none, raw_records = _collection_body(body)
        prepared = [self._prepare(raw, None) for raw in raw_records]
        results: list[JsonObj | None] = [None] * len(prepared)
        ids: list[str | None] = []
        for i, item in enumerate(prepared):
            record_id, error = self._resolve_id(item)
            ids.append(record_id)
            if error is not None:
                results[i] = failure([error])
        _mark_duplicates(ids, results, lambda key: f"Duplicate id in list: {key}")

        plan: list[_Planned] = []
        for i, item in enumerate(prepared):
            record_id = ids[i]
            if results[i] is not None or record_id is None:
                continue
            existing = self._store.rows[item.schema.name][record_id]
            planned = self._plan_write(
                i,
                item,
                existing,
                "update",
                [item.values.get("Email"), existing.get("Email")],
                context,
            )
            if isinstance(planned, _Planned):
                plan.append(planned)
            else:
                results[i] = planned
        return self._commit(all_or_none, results, plan, upsert=False)

    def upsert(
        self, sobject: str, external_field: str, body: object, context: SaveContext
    ) -> list[JsonObj]:
        """``PATCH composite/sobjects/{sobject}/{external_field}``."""
        schema = self._store.schema_any_case(sobject)
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
                results[i] = failure([error])
        _mark_duplicates(keys, results, lambda key: f"Duplicate external id specified: {key}")

        plan: list[_Planned] = []
        for i, item in enumerate(prepared):
            if results[i] is not None:
                continue
            target = targets[i]
            existing = self._store.rows[schema.name][target] if target else None
            planned = self._plan_write(
                i,
                item,
                existing,
                "upsert",
                [item.values.get("Email"), existing.get("Email") if existing else None],
                context,
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
                results[i] = failure([record_error("MALFORMED_ID", f"malformed id {raw}")])
            elif record_id in self._store.deleted:
                results[i] = failure([record_error("ENTITY_IS_DELETED", "entity is deleted")])
            elif self._store.find(record_id) is None:
                results[i] = failure(
                    [record_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")]
                )
        _mark_duplicates(canonical, results, lambda key: f"Duplicate id in list: {key}")

        plan: list[_Planned] = []
        for i, record_id in enumerate(canonical):
            if results[i] is not None or record_id is None:
                continue
            found = self._store.find(record_id)
            assert found is not None  # checked above
            schema, record = found
            error = self._injected_error("delete", [record.get("Email")], record_id)
            if error is not None:
                results[i] = failure([error])
            else:
                plan.append(_Planned(i, "delete", schema, record_id))
        return self._commit(all_or_none, results, plan, upsert=False)

    # ---- internals ---------------------------------------------------------------------

    def _prepare(self, raw: JsonObj, url_schema: SObjectSchema | None) -> _Prepared:
        """Whole-request checks on one record: its type, field names and JSON value types."""
        attributes = raw.get("attributes")
        type_name = attributes.get("type") if isinstance(attributes, dict) else None
        if not isinstance(type_name, str):
            raise ApiError.of(400, "INVALID_TYPE", "No SObject Type defined in Json")
        schema = self._store.schema_any_case(type_name)
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
            if not json_type_ok(spec, value):
                token, shown = json_token(value)
                raise ApiError.of(
                    400,
                    "JSON_PARSER_ERROR",
                    f"Cannot deserialize instance of {java_type(spec)} from {token} value "
                    f"{shown} or request may be missing a required field",
                )
            if spec.name == "Id":
                prepared.raw_id = value
                prepared.has_id = True
                continue
            prepared.values[spec.name] = normalize_value(spec, value)
        return prepared

    def _resolve_id(self, item: _Prepared) -> tuple[str | None, JsonObj | None]:
        """For an update: the canonical id of an existing record, or the per-record error."""
        if not item.has_id or item.raw_id is None:
            return None, record_error("MISSING_ARGUMENT", "Id not specified in an update call")
        record_id = normalize_id(item.raw_id)
        if record_id is None:
            return None, record_error("MALFORMED_ID", f"malformed id {item.raw_id}", ["Id"])
        if not record_id.startswith(item.schema.key_prefix):
            return None, record_error(
                "MALFORMED_ID",
                f"{item.schema.name} ID: id value of incorrect type: {item.raw_id}",
                ["Id"],
            )
        if record_id in self._store.deleted:
            return record_id, record_error("ENTITY_IS_DELETED", "entity is deleted")
        if record_id not in self._store.rows[item.schema.name]:
            return record_id, record_error(
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
            return None, None, record_error("MISSING_ARGUMENT", f"{key_spec.name} not specified")
        folded = value.casefold() if isinstance(value, str) else str(value)
        matches = [
            str(record["Id"])
            for record in self._store.matching(item.schema.name, key_spec.name, [value])
            if fold(record.get(key_spec.name)) == folded
        ]
        if len(matches) > 1:
            return (
                folded,
                None,
                record_error(
                    "DUPLICATE_EXTERNAL_ID",
                    f"{key_spec.name}: more than one record found for external id field: "
                    f"[{', '.join(matches)}]",
                    [key_spec.name],
                ),
            )
        return folded, matches[0] if matches else None, None

    def _plan_write(
        self,
        index: int,
        item: _Prepared,
        existing: JsonObj | None,
        kind: str,
        emails: Sequence[object],
        context: SaveContext,
    ) -> _Planned | JsonObj:
        """Validate one record against the schema, faults and duplicate rules; the plan or a
        failure result."""
        if existing is not None and item.schema.name == "Lead" and existing.get("IsConverted"):
            # A converted Lead is read-only through the API, whatever the update sets.
            return failure(
                [record_error("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")]
            )
        errors = field_errors(item.schema, item.values, existing)
        if errors:
            return failure(errors)
        error = self._injected_error(kind, emails, existing["Id"] if existing else None)
        if error is not None:
            return failure([error])
        duplicate = self._duplicates.check(
            item.schema,
            existing,
            item.values,
            self._store.rows[item.schema.name],
            context.duplicate_header,
            context.version,
        )
        if duplicate is not None:
            return failure([duplicate])
        if existing is None:
            record_id = self._store.ids.make(item.schema.key_prefix)
            return _Planned(index, "create", item.schema, record_id, item.values)
        return _Planned(index, "update", item.schema, existing["Id"], item.values)

    def _injected_error(
        self, kind: str, emails: Sequence[object], record_id: str | None
    ) -> JsonObj | None:
        fault = self._faults.take_record(kind, emails)
        if fault is not None:
            self._stats.incr("faults_injected")
            return record_error(fault.status_code, fault.message, fault.fields)
        if self._faults.roll_lock():
            self._stats.incr("faults_injected")
            # Creates lock a parent row (the Account); show some id either way.
            locked = record_id or self._store.ids.make("001")
            return record_error(
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
            rolled = failure([record_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", _ROLLED_BACK)])
            return [r if r is not None else dict(rolled) for r in results]
        now = self._store.now()
        for step in plan:
            sobject = step.schema.name
            step.values.update(stored_datetimes(step.schema, step.values))
            if step.action == "create":
                record: JsonObj = dict.fromkeys(step.schema.fields)
                record.update(step.schema.defaults)
                record.update(step.values)
                record.update(Id=step.record_id, CreatedDate=now, LastModifiedDate=now)
                self._store.insert(sobject, record)
                self._stats.incr("records_created")
            elif step.action == "update":
                self._store.change(
                    sobject, step.record_id, {**step.values, "LastModifiedDate": now}
                )
                self._stats.incr("records_updated")
            else:
                self._store.remove(sobject, step.record_id)
                self._stats.incr("records_deleted")
            result: JsonObj = {"id": step.record_id, "success": True, "errors": []}
            if upsert:
                result["created"] = step.action == "create"
            results[step.index] = result
        return [r for r in results if r is not None]


def _mark_duplicates(
    keys: Sequence[str | None],
    results: list[JsonObj | None],
    message: Callable[[str], str],
) -> None:
    """Fail every record whose key (id or external id) appears more than once in the request."""
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    for i, key in enumerate(keys):
        if key is not None and counts[key] > 1:
            results[i] = failure([record_error("DUPLICATE_VALUE", message(key))])


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
            f"{json_token(body)[0]} value",
        )
    all_or_none = body.get("allOrNone", False)
    if not isinstance(all_or_none, bool):
        token, shown = json_token(all_or_none)
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
