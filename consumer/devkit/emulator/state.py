"""Everything the Salesforce emulator remembers, in plain Python (no HTTP here).

The aiohttp layer in :mod:`consumer.devkit.emulator.app` only translates requests into calls on
:class:`EmulatorState` and results (or :class:`ApiError`) into responses, so the behaviour that
matters can be read and tested without HTTP. :class:`EmulatorState` composes the parts, each in
its own module:

* :mod:`~consumer.devkit.emulator.schema` -- fields, types, describe;
* :mod:`~consumer.devkit.emulator.store` -- the records (and the Python-side seeding);
* :mod:`~consumer.devkit.emulator.query` -- SOQL execution and paging;
* :mod:`~consumer.devkit.emulator.writes` -- sObject Collections (validation in
  :mod:`~consumer.devkit.emulator.values`, duplicate rules in
  :mod:`~consumer.devkit.emulator.duplicates`);
* :mod:`~consumer.devkit.emulator.auth` -- tokens;
* :mod:`~consumer.devkit.emulator.limits` -- API usage and stats;
* :mod:`~consumer.devkit.emulator.faults` -- injected faults, latency, hangs;
* :mod:`~consumer.devkit.emulator.journal` -- when each call and record write happened (off
  unless enabled; for benchmarks);
* :mod:`~consumer.devkit.emulator.ids` and :mod:`~consumer.devkit.emulator.errors`.

The names other modules and tests imported from here before the split stay importable here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consumer.devkit.emulator.auth import TokenStore, token_response
from consumer.devkit.emulator.duplicates import DuplicateRule, DuplicateRuleHeader, DuplicateRules
from consumer.devkit.emulator.errors import ApiError, EmulatorError, JsonObj, not_found
from consumer.devkit.emulator.faults import FaultPlan, HttpFault, html_page
from consumer.devkit.emulator.ids import normalize_id
from consumer.devkit.emulator.journal import Journal
from consumer.devkit.emulator.limits import STAT_KEYS, ApiUsage, Stats
from consumer.devkit.emulator.query import QueryEngine
from consumer.devkit.emulator.schema import FieldSpec, SObjectSchema, builtin_schemas
from consumer.devkit.emulator.store import RecordStore
from consumer.devkit.emulator.values import fold, format_sf_datetime, is_valid_email
from consumer.devkit.emulator.writes import MAX_COLLECTION_RECORDS, CollectionWriter, SaveContext

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
    "html_page",
    "is_valid_email",
    "normalize_id",
    "not_found",
]


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
        self._clock = clock
        self.store = RecordStore(builtin_schemas(custom_fields or {}), clock)
        self.schemas = self.store.schemas
        self.org_id = self.store.ids.make("00D")
        self.user_id = self.store.ids.make("005")
        self.tokens = TokenStore(monotonic)
        self.usage = ApiUsage(0, api_limit)
        self.stats = Stats()
        self.journal = Journal(clock)
        self.faults = FaultPlan()
        self.duplicates = DuplicateRules()
        self.queries = QueryEngine(self.store, page_size)
        self.writes = CollectionWriter(self.store, self.faults, self.stats, self.duplicates)
        self.rest_api_disabled = False
        #: The ``instance_url`` the token endpoint answers with; None: the URL it was called on.
        self.instance_url: str | None = None

    @property
    def page_size(self) -> int:
        """Records per query page (Salesforce's default is 2,000)."""
        return self.queries.page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        if value < 1:
            raise EmulatorError("page_size must be at least 1")
        self.queries.page_size = value

    # ---- Python-side record access ----------------------------------------------------

    def schema(self, sobject: str) -> SObjectSchema:
        """The schema of ``sobject`` (exact name); EmulatorError if unknown."""
        return self.store.schema(sobject)

    def seed(self, sobject: str, fields: Mapping[str, Any]) -> str:
        """Insert a record directly (no validation beyond field names); return its id."""
        return self.store.seed(sobject, fields)

    def records(self, sobject: str) -> list[JsonObj]:
        """Copies of every record of ``sobject``, in creation order."""
        return self.store.records(sobject)

    def get(self, sobject: str, record_id: str) -> JsonObj | None:
        """A copy of one record (15- or 18-character id), or None."""
        return self.store.get(sobject, record_id)

    def find_by_email(self, sobject: str, email: str) -> list[JsonObj]:
        """Copies of the records whose Email equals ``email`` ignoring case."""
        return self.store.find_by_email(sobject, email)

    def convert_lead(
        self, lead_id: str, contact_id: str | None = None, *, account_id: str | None = None
    ) -> str:
        """Convert a Lead (see :meth:`RecordStore.convert_lead`); return the Contact's id."""
        return self.store.convert_lead(lead_id, contact_id, account_id=account_id)

    def add_duplicate_rule(
        self,
        sobject: str,
        action: str = "alert",
        match_field: str = "Email",
        *,
        name: str | None = None,
        message: str = "Use one of these records?",
    ) -> DuplicateRule:
        """Activate a duplicate rule on ``sobject`` matching ``match_field`` ignoring case."""
        return self.duplicates.add(self.store.schema(sobject), action, match_field, name, message)

    # ---- OAuth ---------------------------------------------------------------------------

    def issue_token(self, called_url: str) -> JsonObj:
        """The client-credentials token response (no expires_in, no refresh_token).

        ``called_url`` is the scheme and host the token request came to; the answer's
        ``instance_url`` is that unless :attr:`instance_url` says otherwise.
        """
        return token_response(
            access_token=self.tokens.issue(self.org_id),
            org_id=self.org_id,
            user_id=self.user_id,
            client_secret=self.client_secret,
            instance_url=self.instance_url or called_url,
            issued_at_ms=int(self._clock() * 1000),
        )

    # ---- describe / limits / versions -------------------------------------------------

    def describe(self, sobject: str) -> JsonObj:
        """``sobjects/{sobject}/describe``; 404 for an unknown sObject."""
        schema = self.store.schema_any_case(sobject)
        if schema is None:
            raise not_found()
        return schema.describe()

    def limits(self) -> JsonObj:
        """``limits``: the daily API request allowance."""
        return self.usage.document()

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
        page = self.queries.query(source, version)
        if self.journal.enabled and self.queries.last is not None:
            sobject, values, rows = self.queries.last
            self.journal.call("query", sobject, values, rows)
        return page

    def query_more(self, locator: str, version: str) -> JsonObj:
        """The page a ``nextRecordsUrl`` (``query/<cursor>-<offset>``) points at."""
        return self.queries.query_more(locator, version)

    # ---- sObject Collections ----------------------------------------------------------

    def _save_context(self, version: str | None, duplicate_header: str | None) -> SaveContext:
        return SaveContext(
            version=version or self.api_versions[-1],
            duplicate_header=DuplicateRuleHeader.parse(duplicate_header),
        )

    def create(
        self, body: object, *, version: str | None = None, duplicate_header: str | None = None
    ) -> list[JsonObj]:
        """``POST composite/sobjects``; ``duplicate_header`` is the raw
        ``Sforce-Duplicate-Rule-Header`` value, if any."""
        results = self.writes.create(body, self._save_context(version, duplicate_header))
        return self._journaled("create", body, results)

    def update(
        self, body: object, *, version: str | None = None, duplicate_header: str | None = None
    ) -> list[JsonObj]:
        """``PATCH composite/sobjects`` (each record carries its id)."""
        results = self.writes.update(body, self._save_context(version, duplicate_header))
        return self._journaled("update", body, results)

    def upsert(
        self,
        sobject: str,
        external_field: str,
        body: object,
        *,
        version: str | None = None,
        duplicate_header: str | None = None,
    ) -> list[JsonObj]:
        """``PATCH composite/sobjects/{sobject}/{external_field}``."""
        context = self._save_context(version, duplicate_header)
        results = self.writes.upsert(sobject, external_field, body, context)
        return self._journaled("upsert", body, results, external_field)

    def delete(self, ids: Sequence[str], all_or_none: bool) -> list[JsonObj]:
        """``DELETE composite/sobjects?ids=...``."""
        results = self.writes.delete(ids, all_or_none)
        if self.journal.enabled:
            found = (self.store.schema_for_id(str(r.get("id") or "")) for r in results)
            sobject = next((s.name for s in found if s is not None), "")
            ok = sum(1 for r in results if r.get("success"))
            self.journal.call("delete", sobject, len(results), ok)
        return results

    def _journaled(
        self, kind: str, body: object, results: list[JsonObj], external_field: str | None = None
    ) -> list[JsonObj]:
        """Note a collections call and the records it wrote in the journal (when enabled)."""
        journal = self.journal
        if not journal.enabled:
            return results
        sobject = _body_sobject(body)
        ok = 0
        for result in results:
            if not result.get("success"):
                continue
            ok += 1
            found = self.store.find(str(result.get("id")))
            if found is None:
                continue
            schema, record = found
            sobject = schema.name
            key = record.get("Email")
            if key is None and external_field is not None:
                spec = schema.field(external_field)
                key = record.get(spec.name) if spec is not None else None
            created = kind == "create" or (kind == "upsert" and bool(result.get("created")))
            action = "create" if created else "update"
            journal.write(schema.name, action, str(record["Id"]), fold(key))
        journal.call(kind, sobject, len(results), ok)
        return results


def _body_sobject(body: object) -> str:
    """The type of the first record of a collections body ("" when it has none)."""
    records = body.get("records") if isinstance(body, dict) else None
    first = records[0] if isinstance(records, list) and records else None
    attributes = first.get("attributes") if isinstance(first, dict) else None
    kind = attributes.get("type") if isinstance(attributes, dict) else None
    return kind if isinstance(kind, str) else ""
