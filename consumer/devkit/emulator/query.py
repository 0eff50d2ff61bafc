"""Running SOQL against the store: binding names, checking filter values, filtering, sorting,
and paging through ``nextRecordsUrl`` cursors.

Parsing lives in :mod:`~consumer.devkit.emulator.soql`; this module gives the parsed names a
meaning (sObject and fields, both ignoring case) and answers with rows that use each field's
own spelling, as Salesforce does.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from consumer.devkit.emulator import soql
from consumer.devkit.emulator.errors import ApiError, JsonObj
from consumer.devkit.emulator.ids import normalize_id
from consumer.devkit.emulator.schema import (
    LENGTH_TYPES,
    NUMBER_TYPES,
    STRING_TYPES,
    FieldSpec,
    SObjectSchema,
)
from consumer.devkit.emulator.store import RecordStore

__all__ = ["QueryEngine"]

_MAX_OPEN_CURSORS = 100


class QueryEngine:
    """The ``query`` and ``query/<locator>`` resources over one :class:`RecordStore`."""

    def __init__(self, store: RecordStore, page_size: int) -> None:
        self._store = store
        self.page_size = page_size
        # Locator -> every row of the result; the oldest cursors are dropped past the cap.
        self._cursors: OrderedDict[str, list[JsonObj]] = OrderedDict()
        #: The last query's sObject, filter values (all conditions) and total rows, for the
        #: journal.
        self.last: tuple[str, int, int] | None = None

    def query(self, source: str | None, version: str) -> JsonObj:
        """Run a SOQL query and return its first page (raises SoqlError for bad queries)."""
        if source is None or not source.strip():
            raise soql.SoqlError("MALFORMED_QUERY", "A query string has to be specified")
        query = soql.parse(source)
        schema = self._store.schema_any_case(query.sobject.name)
        if schema is None:
            raise soql.error_at(
                source,
                query.sobject.pos,
                f"sObject type '{query.sobject.name}' is not supported. If you are attempting "
                "to use a custom object, be sure to append the '__c' after the entity name. "
                "Please reference your WSDL or the describe call for the appropriate names.",
                "INVALID_TYPE",
            )
        selected = [_bind_field(query, schema, ref) for ref in query.fields]
        conditions = [_bind_condition(query, schema, cond) for cond in query.where]
        order = [(_bind_sort(query, schema, o.field), o.descending) for o in query.order_by]

        tests = [_Test(spec, cond) for spec, cond in conditions]
        matched = [
            record for record in self._candidates(schema, tests) if all(t(record) for t in tests)
        ]
        # Stable sorts from the last key to the first give a multi-key ORDER BY; SOQL puts
        # nulls first when ascending and last when descending.
        for spec, descending in reversed(order):
            matched.sort(key=functools.partial(_sort_key, spec), reverse=descending)
        if query.limit is not None:
            matched = matched[: query.limit]
        self.last = (schema.name, sum(len(t.literals) for t in tests), len(matched))

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
            locator = self._store.ids.make("01g")
            self._cursors[locator] = rows
            while len(self._cursors) > _MAX_OPEN_CURSORS:
                self._cursors.popitem(last=False)
        return self._page(rows, 0, locator, version)

    def _candidates(self, schema: SObjectSchema, tests: list[_Test]) -> Iterable[JsonObj]:
        """The records a query must test: those an equality filter on a text field finds in
        the store's index (a superset, tested again), else every record."""
        for test in tests:
            if test.indexable:
                return self._store.matching(schema.name, test.spec.name, test.literals)
        return self._store.rows[schema.name].values()

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


def _bind_sort(query: soql.SoqlQuery, schema: SObjectSchema, ref: soql.FieldRef) -> FieldSpec:
    spec = _bind_field(query, schema, ref)
    if not spec.sortable:
        raise soql.error_at(
            query.source,
            ref.pos,
            f"field '{spec.name}' can not be sorted in a query call",
            "INVALID_FIELD",
        )
    return spec


def _bind_condition(
    query: soql.SoqlQuery, schema: SObjectSchema, cond: soql.Condition
) -> tuple[FieldSpec, soql.Condition]:
    spec = _bind_field(query, schema, cond.field)
    if not spec.filterable:
        # Long Text Areas can be selected but never filtered on.
        raise soql.error_at(
            query.source,
            cond.field.pos,
            f"field '{spec.name}' can not be filtered in a query call",
            "INVALID_FIELD",
        )
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


def _comparable(spec: FieldSpec, value: object) -> object:
    if value is None:
        return None
    if spec.type in ("id", "reference"):
        return normalize_id(value) or value
    if isinstance(value, str):
        return value.casefold()
    return value


class _Test:
    """One bound WHERE condition, its values made comparable once (not once per record)."""

    def __init__(self, spec: FieldSpec, cond: soql.Condition) -> None:
        self.spec = spec
        self.literals = [literal.value for literal in cond.values]
        self._wanted = frozenset(_comparable(spec, value) for value in self.literals)
        self._positive = cond.op in ("=", "IN")
        # Text fields compare folded strings, as the store's index does; ids are normalised
        # (15 or 18 characters), which the index does not know about.
        self.indexable = self._positive and spec.type in LENGTH_TYPES

    def __call__(self, record: JsonObj) -> bool:
        actual = _comparable(self.spec, record.get(self.spec.name))
        if self._positive:
            return actual in self._wanted
        # SOQL's != and NOT IN keep rows whose value is null unless null itself is excluded.
        return actual not in self._wanted


def _sort_key(spec: FieldSpec, record: JsonObj) -> tuple[int, Any]:
    # Values of one field share a type, so comparing the folded values is safe; the leading
    # flag keeps nulls apart from them.
    value = record.get(spec.name)
    if value is None:
        return (0, 0)
    return (1, _comparable(spec, value))
