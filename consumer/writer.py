"""Write stage: one batch's merged people onto each target sObject in Salesforce.

For each target: find records by email (URL-bounded ``IN`` queries), update every match in
collections of up to 200, create the missing when ``upsert_mode`` is on, and turn the
per-record answers (in request order) into a result per person. Records that failed for a
transient reason (a lock, a 5xx on their chunk, a lost answer) are retried, and only they:
each retry round re-queries first, so a create whose answer was lost is found, not repeated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from consumer.dedup import PersonWrite
from consumer.errors import (
    RetryBudgetExhaustedError,
    SalesforceRequestError,
    SalesforceTransientError,
)
from consumer.mapping import TargetPlan
from consumer.outcomes import SalesforceErrorInfo
from consumer.parse import email_key
from consumer.retry import Backoff
from consumer.salesforce import COLLECTION_LIMIT, RecordResult, SalesforceClient
from consumer.settings import Settings
from consumer.soql import encode_query, in_queries

logger = logging.getLogger(__name__)

#: Per-record codes worth retrying (the record was fine; Salesforce was busy).
RETRIABLE_RECORD_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK"})


@dataclass
class PersonResult:
    """What happened to one person on one target."""

    status: Literal["updated", "created", "not_found", "failed"]
    record_ids: list[str] = field(default_factory=list)
    error: SalesforceErrorInfo | None = None
    note: str | None = None


@dataclass
class _Pending:
    """One record write of a person in the current round."""

    key: str
    record: dict[str, Any]


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
        """Write every person that has values for this target; results by email key."""
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
            retry, last_error = await self._round(todo, results)
            todo = {k: todo[k] for k in retry}
            if not todo:
                break
            delay = backoff.next_delay()
            if delay is None:
                raise RetryBudgetExhaustedError(
                    f"{sobject}: {len(todo)} records still failing after "
                    f"{backoff.elapsed():.0f}s: {last_error}",
                )
            logger.warning(
                "retrying records",
                extra={"sobject": sobject, "records": len(todo), "delay_s": round(delay, 3)},
            )
            await asyncio.sleep(delay)
        return results

    async def _round(
        self, todo: dict[str, PersonWrite], results: dict[str, PersonResult]
    ) -> tuple[set[str], str]:
        """One pass: query, then update and create. Returns the keys to retry."""
        plan, sobject = self._plan, self._plan.sobject
        matches = await self.find(todo.values())
        updates: list[_Pending] = []
        creates: list[_Pending] = []
        for key, person in todo.items():
            values = person.fields[sobject]
            ids = matches.get(key)
            if ids:
                for record_id in ids:
                    updates.append(
                        _Pending(key, {"attributes": {"type": sobject}, "id": record_id, **values})
                    )
            elif plan.mapping.upsert_mode:
                record: dict[str, Any] = {"attributes": {"type": sobject}}
                record.update(plan.mapping.create_defaults)
                record[plan.mapping.match_field] = person.email
                record.update(values)
                creates.append(_Pending(key, record))
            else:
                results[key] = PersonResult(
                    "not_found",
                    note=f"no {sobject} has this {plan.mapping.match_field}; upsert_mode is off",
                )
        retry: set[str] = set()
        outcome: dict[str, PersonResult] = {}
        last_error = ""
        for operation, pending in (("update", updates), ("create", creates)):
            for start in range(0, len(pending), COLLECTION_LIMIT):
                chunk = pending[start : start + COLLECTION_LIMIT]
                try:
                    answers = await self._call(operation, [p.record for p in chunk])
                except SalesforceTransientError as exc:
                    # The whole chunk is unknown; the next round re-queries before writing.
                    retry.update(p.key for p in chunk)
                    last_error = str(exc)
                    continue
                except SalesforceRequestError as exc:
                    info = SalesforceErrorInfo(
                        code=exc.code, message=exc.message, fields=list(exc.fields)
                    )
                    for p in chunk:
                        outcome[p.key] = PersonResult("failed", error=info)
                    continue
                for p, answer in zip(chunk, answers, strict=True):
                    self._record(operation, p.key, answer, outcome, retry)
                    if not answer.success and answer.errors:
                        last_error = answer.errors[0].code
        for key, result in outcome.items():
            if key in retry:
                continue
            ids = matches.get(key) or []
            if result.status == "updated" and len(ids) > 1:
                result.note = f"{len(ids)} {sobject} records share this email; all were updated"
            results[key] = result
        return retry, last_error

    def _record(
        self,
        operation: str,
        key: str,
        answer: RecordResult,
        outcome: dict[str, PersonResult],
        retry: set[str],
    ) -> None:
        current = outcome.get(key)
        if answer.success:
            status: Literal["updated", "created"] = (
                "created" if operation == "create" else "updated"
            )
            if current is None:
                current = outcome[key] = PersonResult(status)
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
            retry.add(key)
            return
        if current is None:
            outcome[key] = PersonResult("failed", error=first)
        else:
            current.status = "failed"
            current.error = first

    async def _call(self, operation: str, records: list[dict[str, Any]]) -> list[RecordResult]:
        if operation == "update":
            return await self._client.update(records)
        return await self._client.create(records)

    async def find(self, people: Iterable[PersonWrite]) -> dict[str, list[str]]:
        """Record ids by email key, for every person given (absent key: no record)."""
        match_field = self._plan.mapping.match_field
        queries = in_queries(
            path=self._client.query_path(),
            select=("Id", match_field),
            sobject=self._plan.sobject,
            field=match_field,
            values=(p.email for p in people),
            max_url_bytes=self._settings.salesforce_max_url_bytes,
        )
        found: dict[str, list[str]] = {}
        for soql in queries:
            for row in await self._client.query_all(encode_query(soql)):
                value = row.get(match_field)
                if isinstance(value, str):
                    ids = found.setdefault(email_key(value), [])
                    if row["Id"] not in ids:
                        ids.append(str(row["Id"]))
        return found
