"""Write stage: one batch's merged people onto each target sObject in Salesforce.

Two modes per target:

- **match** (default): find records by email (URL-bounded ``IN`` queries), update every match
  in collections of up to 200, create the missing when ``upsert_mode`` is on;
- **external id** (``external_id_field`` with ``upsert_mode``): upsert by the external id,
  200 people a call and no query. A person Salesforce cannot create for lack of required
  fields is upserted once more with ``create_defaults`` and the match field, so defaults never
  overwrite an existing record.

Per-record answers (in request order) become one result per person. Records that failed for
a transient reason (a lock, a 5xx on their chunk, a lost answer) are retried, and only they;
each retry round re-queries first, so a create whose answer was lost is found, not repeated.
Before every write the org's API usage is checked against the configured share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from consumer.errors import (
    RetryBudgetExhaustedError,
    SalesforceRequestError,
    SalesforceTransientError,
)
from consumer.mapping import TargetPlan
from consumer.model.changes import PersonResult, PersonWrite
from consumer.model.messages import email_key
from consumer.model.outcomes import SalesforceErrorInfo
from consumer.salesforce.client import COLLECTION_LIMIT, RecordResult, SalesforceClient
from consumer.salesforce.retry import Backoff
from consumer.salesforce.soql import encode_query, in_queries
from consumer.salesforce.wire import format_datetime, parse_datetime
from consumer.settings import Settings

logger = logging.getLogger(__name__)

#: Per-record codes worth retrying (the record was fine; Salesforce was busy).
RETRIABLE_RECORD_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK"})

Operation = Literal["update", "create", "upsert"]


@dataclass(frozen=True)
class Match:
    """A record found for a person, with its last-synced stamp when the target has one."""

    id: str
    synced: datetime | None = None


@dataclass
class _Pending:
    """One record write of a person in the current round."""

    key: str
    record: dict[str, Any]


@dataclass
class _Round:
    """What one pass produced."""

    outcome: dict[str, PersonResult] = field(default_factory=dict)
    retry: set[str] = field(default_factory=set)
    #: People an external-id upsert could not create without create_defaults.
    needs_defaults: set[str] = field(default_factory=set)
    last_error: str = ""


class TargetWriter:
    """Writes people to one target sObject."""

    def __init__(self, client: SalesforceClient, plan: TargetPlan, settings: Settings) -> None:
        self._client = client
        self._plan = plan
        self._settings = settings

    @property
    def sobject(self) -> str:
        """The target's sObject."""
        return self._plan.sobject

    async def write(self, people: Sequence[PersonWrite]) -> dict[str, PersonResult]:
        """Write every person that has values for this target; results by email key.

        Raises :class:`RetryBudgetExhaustedError` (with what was done and what was not) when
        transient errors outlast the budget, and the client's pause and configuration errors.
        """
        sobject = self._plan.sobject
        todo = {p.email_key: p for p in people if p.fields.get(sobject)}
        results: dict[str, PersonResult] = {}
        s = self._settings
        backoff = Backoff(
            s.salesforce_retry_initial_seconds,
            s.salesforce_retry_max_seconds,
            s.salesforce_retry_budget_seconds,
            asyncio.get_running_loop().time,
        )
        while todo:
            try:
                retry, last_error = await self._round(todo, results)
            except RetryBudgetExhaustedError as exc:
                raise RetryBudgetExhaustedError(
                    f"{sobject}: {exc.message}", done=dict(results), pending=tuple(todo)
                ) from None
            todo = {k: todo[k] for k in retry}
            if not todo:
                break
            delay = backoff.next_delay()
            if delay is None:
                raise RetryBudgetExhaustedError(
                    f"{sobject}: {len(todo)} people still failing after "
                    f"{backoff.elapsed():.0f}s: {last_error}",
                    done=dict(results),
                    pending=tuple(todo),
                )
            self._client.metrics.salesforce_retries.labels("records").inc()
            logger.warning(
                "retrying records",
                extra={"sobject": sobject, "people": len(todo), "delay_s": round(delay, 3)},
            )
            await asyncio.sleep(delay)
        return results

    async def _round(
        self, todo: dict[str, PersonWrite], results: dict[str, PersonResult]
    ) -> tuple[set[str], str]:
        """One pass over ``todo``; final results go to ``results``. Returns keys to retry."""
        mapping = self._plan.mapping
        # The stale-write guard needs each record's stamp, so it always looks records up.
        if mapping.external_id_field and mapping.upsert_mode and not mapping.last_synced_field:
            done = await self._upsert_round(todo)
            matches: dict[str, list[Match]] = {}
        else:
            matches = await self.find(todo.values())
            done = await self._match_round(todo, matches, results)
        for key, result in done.outcome.items():
            if key in done.retry:
                continue
            ids = matches.get(key) or []
            if result.status == "updated" and len(ids) > 1:
                result.note = (
                    f"{len(ids)} {self.sobject} records share this email; all were updated"
                )
            results[key] = result
        return done.retry, done.last_error

    async def _match_round(
        self,
        todo: dict[str, PersonWrite],
        matches: dict[str, list[Match]],
        results: dict[str, PersonResult],
    ) -> _Round:
        mapping, sobject = self._plan.mapping, self.sobject
        updates: list[_Pending] = []
        creates: list[_Pending] = []
        stale: dict[str, set[int]] = {}
        for key, person in todo.items():
            found = matches.get(key)
            if found:
                writes, stale[key] = self._updates_for(key, person, found)
                if writes:
                    updates.extend(writes)
                else:
                    results[key] = PersonResult(
                        "stale",
                        record_ids=[m.id for m in found],
                        stale_indexes=stale[key],
                        note=f"every matching {sobject} holds newer data "
                        f"({mapping.last_synced_field})",
                    )
            elif mapping.upsert_mode:
                creates.append(_Pending(key, self._create_record(person)))
            else:
                results[key] = PersonResult(
                    "not_found",
                    note=f"no {sobject} has this {mapping.lookup_field}; upsert_mode is off",
                )
        done = _Round()
        await self._send("update", updates, done)
        await self._send("create", creates, done)
        for key, indexes in stale.items():
            if key in done.outcome:
                done.outcome[key].stale_indexes = indexes
        return done

    def _updates_for(
        self, key: str, person: PersonWrite, found: list[Match]
    ) -> tuple[list[_Pending], set[int]]:
        """Record updates for a person, skipping what each record already has newer.

        Returns the updates and the events that were stale on every record.
        """
        sobject, synced_field = self.sobject, self._plan.mapping.last_synced_field
        mentioned = {s.index for s in person.steps if s.fields.get(sobject)}
        stale_everywhere = set(mentioned)
        writes: list[_Pending] = []
        for match in found:
            since = match.synced if synced_field else None
            values, used = person.fields_after(sobject, since)
            stale_everywhere &= mentioned - {s.index for s in used}
            if not values:
                continue
            record: dict[str, Any] = {"attributes": {"type": sobject}, "id": match.id, **values}
            if synced_field:
                record[synced_field] = format_datetime(max(s.event_time for s in used))
            writes.append(_Pending(key, record))
        return writes, stale_everywhere

    async def _upsert_round(self, todo: dict[str, PersonWrite]) -> _Round:
        mapping, sobject = self._plan.mapping, self.sobject
        ext = mapping.external_id_field
        assert ext is not None
        done = _Round()
        plain = [
            _Pending(
                key,
                {"attributes": {"type": sobject}, ext: person.email, **person.fields[sobject]},
            )
            for key, person in todo.items()
        ]
        await self._send("upsert", plain, done)
        if done.needs_defaults:
            again = [
                _Pending(key, self._create_record(todo[key]) | {ext: todo[key].email})
                for key in sorted(done.needs_defaults)
            ]
            for key in done.needs_defaults:
                done.outcome.pop(key, None)
            done.needs_defaults = set()
            await self._send("upsert", again, done, second_pass=True)
        return done

    def _create_record(self, person: PersonWrite) -> dict[str, Any]:
        mapping = self._plan.mapping
        record: dict[str, Any] = {"attributes": {"type": self.sobject}}
        record.update(mapping.create_defaults)
        record[mapping.match_field] = person.email
        if mapping.external_id_field:
            record[mapping.external_id_field] = person.email
        record.update(person.fields[self.sobject])
        if mapping.last_synced_field:
            _, used = person.fields_after(self.sobject, None)
            record[mapping.last_synced_field] = format_datetime(max(s.event_time for s in used))
        return record

    async def _send(
        self,
        operation: Operation,
        pending: list[_Pending],
        done: _Round,
        *,
        second_pass: bool = False,
    ) -> None:
        for start in range(0, len(pending), COLLECTION_LIMIT):
            chunk = pending[start : start + COLLECTION_LIMIT]
            self._client.check_budget(self._settings.salesforce_api_budget_share)
            try:
                answers = await self._call(operation, [p.record for p in chunk])
            except SalesforceTransientError as exc:
                # The whole chunk is unknown; the next round re-queries before writing.
                done.retry.update(p.key for p in chunk)
                done.last_error = str(exc)
                continue
            except SalesforceRequestError as exc:
                info = SalesforceErrorInfo(
                    code=exc.code, message=exc.message, fields=list(exc.fields)
                )
                for p in chunk:
                    done.outcome[p.key] = PersonResult("failed", error=info)
                continue
            for p, answer in zip(chunk, answers, strict=True):
                if (
                    operation == "upsert"
                    and not second_pass
                    and not answer.success
                    and any(e.code == "REQUIRED_FIELD_MISSING" for e in answer.errors)
                ):
                    done.needs_defaults.add(p.key)
                    continue
                self._record(operation, p.key, answer, done)

    def _record(self, operation: Operation, key: str, answer: RecordResult, done: _Round) -> None:
        current = done.outcome.get(key)
        if answer.success:
            created = operation == "create" or (operation == "upsert" and bool(answer.created))
            status: Literal["updated", "created"] = "created" if created else "updated"
            if current is None:
                current = done.outcome[key] = PersonResult(status)
            if answer.id:
                current.record_ids.append(answer.id)
            return
        first = (
            answer.errors[0]
            if answer.errors
            else SalesforceErrorInfo(
                code="UNKNOWN", message="Salesforce reported a failure without an error"
            )
        )
        if first.code in RETRIABLE_RECORD_CODES:
            done.retry.add(key)
            done.last_error = first.code
            self._client.metrics.salesforce_retries.labels(first.code).inc()
            return
        if current is None:
            done.outcome[key] = PersonResult("failed", error=first)
        else:
            current.status = "failed"
            current.error = first

    async def _call(
        self, operation: Operation, records: list[dict[str, Any]]
    ) -> list[RecordResult]:
        if operation == "update":
            return await self._client.update(records)
        if operation == "create":
            return await self._client.create(records)
        ext = self._plan.mapping.external_id_field
        assert ext is not None
        return await self._client.upsert(self.sobject, ext, records)

    async def find(self, people: Iterable[PersonWrite]) -> dict[str, list[Match]]:
        """Records by email key, for every person given (absent key: no record)."""
        lookup = self._plan.mapping.lookup_field
        synced_field = self._plan.mapping.last_synced_field
        select = ("Id", lookup, synced_field) if synced_field else ("Id", lookup)
        queries = in_queries(
            path=self._client.query_path(),
            select=select,
            sobject=self._plan.sobject,
            field=lookup,
            values=(p.email for p in people),
            max_url_bytes=self._settings.salesforce_max_url_bytes,
        )
        found: dict[str, list[Match]] = {}
        for soql in queries:
            for row in await self._client.query_all(encode_query(soql)):
                value = row.get(lookup)
                if not isinstance(value, str):
                    continue
                matches = found.setdefault(email_key(value), [])
                if all(m.id != row["Id"] for m in matches):
                    synced = parse_datetime(row.get(synced_field)) if synced_field else None
                    matches.append(Match(str(row["Id"]), synced))
        return found
