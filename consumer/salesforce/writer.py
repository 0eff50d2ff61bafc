"""Write stage: one batch's merged people onto one target sObject in Salesforce.

Modes per target:

- **match** (default): find records by email (URL-bounded ``IN`` queries that also read the
  mapped fields and the sync state), update every match, create the missing when
  ``upsert_mode`` is on;
- **external id, no sync state** (``external_id_field`` with ``upsert_mode``): upsert by the
  external id, 200 people a call and no query. A person Salesforce cannot create for lack of
  required fields is upserted once more with ``create_defaults`` and the match field, so
  defaults never overwrite an existing record. With a sync state, records are read first (a
  query per 200 people more) and written as in match mode, keyed by the external id.

What a record write holds, per field:

- with ``sync_state_field``, only the fields whose incoming stamp (event time, partition,
  offset) is newer than the one the record's state holds; the new stamps go into the state in
  the same update. Values equal to what the record holds are not sent (their stamps are);
- without it, only the values that differ from what the record holds;
- never a value describe says Salesforce would refuse (too long, not in a restricted
  picklist): it is left out with its own error. When Salesforce still refuses a record for
  named fields, the record is written once more without them. Either way the other fields,
  a withdrawal among them, are written and the person's result is ``partial``.

A person whose records already hold everything is not written: ``stale`` when the sync state
holds a newer (or the same) choice for every field, ``unchanged`` when the values are already
there. Converted Leads are never written: a person whose only Leads are converted is
``not_found`` with a note naming the Contact they became, and no Lead is created for them.

The stamps live on the records, so a person's records gate each other: a grant older than
what any of them holds, on this target (a second Contact, a converted Lead) or on another
target of the batch (the writers exchange their stamps per choice through
:class:`HeldChoices` before planning), is written to none and creates none. A record made
after a withdrawal holds no stamp of it; without this, a late older grant would land there.
What the engine remembers of the person's recent batches (``engine/recent.py``) comes in
through the same exchange and gates alike, also for a writer alone.
An ``event.deleted`` also withdraws what earlier versions of the event granted (``_undo``),
and while a record remembers the deletion (its stamps in the deletions' sort position) a late
version of the deleted event grants nothing (``_without_revoked``).

A mapped field Salesforce stops knowing while the service runs (deleted, or hidden from the
integration user by field-level security) makes a query or a write fail as a whole with
``INVALID_FIELD``. The target is then described again; the fields gone from it are left out of
queries and writes from then on, their choices refused (dead-lettered, for a redrive once the
field is back) and the call sent again, so that one vanished field never blocks a withdrawal
in another. The target is described again every ``SALESFORCE_DESCRIBE_RECHECK_SECONDS`` to
take a field back. A field the service cannot order or find records without (the lookup, match
or sync state field) pauses writing instead (:class:`MappingError`) until it is back.

Per-record answers (in request order) become one result per person. Records that failed for
a transient reason (a lock, a 5xx on their chunk, a lost answer) are retried, and only they;
each retry round re-queries first, so a create whose answer was lost is found, not repeated.
Before every write the org's API usage is checked against the configured share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from consumer.errors import (
    MappingError,
    Reaction,
    RetryBudgetExhaustedError,
    SalesforceError,
    SalesforceRequestError,
)
from consumer.mapping import FieldInfo, TargetMapping, TargetPlan, describe_fields
from consumer.model import sync_state
from consumer.model.changes import (
    DELETION_PARTITION,
    VERSION_PARTITION,
    ChoiceKey,
    FieldValue,
    FieldValues,
    PersonResult,
    PersonWrite,
    Stamp,
    Step,
    grants,
)
from consumer.model.held import HeldChoices
from consumer.model.messages import email_key
from consumer.model.outcomes import SalesforceErrorInfo
from consumer.salesforce.client import COLLECTION_LIMIT, RecordResult, SalesforceClient
from consumer.salesforce.composite import single, together
from consumer.salesforce.fields import FIELD_CODES, refusal
from consumer.salesforce.retry import Backoff
from consumer.salesforce.soql import in_queries_encoded
from consumer.salesforce.wire import format_epoch_ms
from consumer.settings import Settings
from consumer.tasks import gather_or_cancel

logger = logging.getLogger(__name__)

#: Per-record codes worth retrying (the record was fine; Salesforce was busy).
RETRIABLE_RECORD_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK"})
CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"

Operation = Literal["update", "create", "upsert"]


@dataclass(frozen=True)
class Match:
    """A record found for a person: its id, the mapped values and the sync state it holds."""

    id: str
    values: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Stamp] = field(default_factory=dict)
    #: A converted Lead (read-only), and the Contact it became.
    converted: bool = False
    converted_contact: str | None = None


@dataclass
class _Write:
    """One record write of a person in the current round."""

    key: str
    operation: Operation
    #: The record's id (update); None for a create or an upsert.
    record_id: str | None
    #: Mapped values to send.
    values: FieldValues
    #: The record's sync state after this write (None: the target keeps no state).
    state: dict[str, Stamp] | None
    #: Fields the write carries a newer choice for, whether or not their value is sent.
    fields: set[str]
    #: Fields left out already (describe, or Salesforce on the first attempt).
    refused: dict[str, SalesforceErrorInfo] = field(default_factory=dict)
    #: Extra fields of the body: defaults, match and external id (creates and upserts).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The time of the newest choice written (the ``last_synced_field`` stamp).
    newest_ms: int = 0
    #: A second attempt, without the fields Salesforce refused the first time.
    fallback: bool = False
    #: The state the record held before (refused fields keep their stamp from it).
    held: Mapping[str, Stamp] = field(default_factory=dict)
    #: Fields a deleted event withdraws here beyond its own -> that event's batch index.
    undone: dict[str, int] = field(default_factory=dict)

    def without(self, names: Set[str], *, fallback: bool = False) -> _Write:
        """This write less ``names`` (refused, or gone from Salesforce): their choices are not
        written, so the record keeps the stamps it held for them."""
        state = None
        if self.state is not None:
            state = {k: v for k, v in self.state.items() if k not in names}
            state.update({k: v for k, v in self.held.items() if k in names})
        return replace(
            self,
            values={k: v for k, v in self.values.items() if k not in names},
            fields=self.fields - names,
            state=state,
            fallback=self.fallback or fallback,
        )


@dataclass
class _Person:
    """What the records of one person came to in a round."""

    ids: list[str] = field(default_factory=list)
    created: bool = False
    updated: bool = False
    error: SalesforceErrorInfo | None = None
    refused: dict[str, SalesforceErrorInfo] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    note: str | None = None
    not_found: bool = False
    retry: bool = False
    needs_defaults: bool = False
    #: The create_defaults the defaults pass sends (those the errors named, or all).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Writes sent (or about to be) and not answered yet.
    pending: int = 0
    #: Batch index of a deleted event -> fields it withdrew beyond its own (_undo).
    undone: dict[int, set[str]] = field(default_factory=dict)


@dataclass
class _Round:
    """What one pass produced, per person."""

    people: dict[str, _Person] = field(default_factory=dict)
    last_error: str = ""

    def of(self, key: str) -> _Person:
        person = self.people.get(key)
        if person is None:
            person = self.people[key] = _Person()
        return person

    @property
    def retry(self) -> set[str]:
        return {k for k, p in self.people.items() if p.retry}


class TargetWriter:
    """Writes people to one target sObject."""

    def __init__(self, client: SalesforceClient, plan: TargetPlan, settings: Settings) -> None:
        self._client = client
        self._plan = plan
        self._settings = settings
        mapping = plan.mapping
        self._state_field = mapping.sync_state_field
        self._mapped = [name for _, name in mapping.mapped_fields()]
        #: Field -> its "no consent" value (false, or null for a preference): what undoing
        #: a deleted event's grant writes.
        self._no_consent = mapping.withdrawn()
        #: The choice a field's stamp says was made, for the exchange (the same on every
        #: target; ``TargetMapping.choice_keys``).
        self._gate_key = mapping.choice_keys()
        #: Choice -> this target's fields a newer stamp of it holds back (any target's
        #: choices, so filled as they come).
        self._gated: dict[ChoiceKey, tuple[str, ...]] = {}
        #: What the state field holds at least (the mapping check refuses a shorter one).
        self._state_room = sync_state.capacity(self._mapped)
        #: Upsert by the external id without reading first (no state to compare with).
        self._blind = _blind(mapping)
        #: Mapped fields Salesforce stopped letting us write while running, with the refusal
        #: their choices get; and the last_synced_field while it is there (None when gone).
        self._gone: dict[str, SalesforceErrorInfo] = {}
        self._synced_field = mapping.last_synced_field
        #: create_defaults fields gone the same way: creates go without them (a deleted
        #: field requires nothing; without this every create, a withdrawal's included, failed).
        self._defaults_gone: frozenset[str] = frozenset()
        #: Describes started, and the number of the last one answered: a call that failed
        #: for a field describes again unless one started after the failure was answered
        #: (calls failing together describe once; an answer from before the failure is old).
        self._describes = 0
        self._last_described = 0
        self._described_at = 0.0
        self._describe_lock = asyncio.Lock()
        #: Why the last describe found the target unusable (a field it needs is gone).
        self._unusable: str | None = None

    @property
    def sobject(self) -> str:
        """The target's sObject."""
        return self._plan.sobject

    async def write(
        self,
        people: Sequence[PersonWrite],
        done: dict[str, PersonResult] | None = None,
        *,
        backlog: bool = False,
        writers: int | None = None,
        held: HeldChoices | None = None,
    ) -> dict[str, PersonResult]:
        """Write every person that has values for this target; results by email key.

        ``done`` holds the results of people finished by an earlier attempt of the same batch
        (one interrupted by a pause): they are not written again, and the results of this
        attempt are added to it as they are final, even if it is interrupted in turn.

        Raises :class:`RetryBudgetExhaustedError` (with what was done and what was not) when
        transient errors outlast the budget, and the client's pause and configuration errors.

        Writers given the same ``people`` object (the targets of one batch) send their calls
        together as shared composite calls with ``SALESFORCE_COMPOSITE=on``, or with ``auto``
        when the engine says the service is behind (``backlog``). ``writers``: how many
        writers write these people (when known); a writer alone issuing a lone call (one
        query, or writes of a single operation) sends it at once.

        ``held``: shared by the writers of one batch's targets. With a sync state, this
        writer posts there what its records hold and, before planning, waits for the others'
        posts: a grant older than what any of the person's records of any target holds for
        the same choice is written nowhere. Without one, it leaves at once.
        """
        if held is not None and not self._state_field:
            held.leave(self.sobject)
            held = None
        elif held is None and self._state_field:
            # Kept for every round of this write: what a round read (the deletions the
            # records remember) still holds after the round overwrote it.
            held = HeldChoices([self.sobject])
        mode = self._settings.salesforce_composite
        if mode == "on" or (mode == "auto" and backlog):
            with together(people, writers):
                return await self._write(people, done, held)
        return await self._write(people, done, held)

    async def _write(
        self,
        people: Sequence[PersonWrite],
        done: dict[str, PersonResult] | None,
        held: HeldChoices | None = None,
    ) -> dict[str, PersonResult]:
        sobject = self.sobject
        results: dict[str, PersonResult] = done if done is not None else {}
        todo = {
            p.email_key: p for p in people if sobject in p.fields and p.email_key not in results
        }
        s = self._settings
        backoff = Backoff(
            s.salesforce_retry_initial_seconds,
            s.salesforce_retry_max_seconds,
            s.salesforce_retry_budget_seconds,
            asyncio.get_running_loop().time,
        )
        while todo:
            try:
                retry, last_error = await self._round(todo, results, held)
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

    # --- one round -----------------------------------------------------------------------

    async def _round(
        self,
        todo: dict[str, PersonWrite],
        results: dict[str, PersonResult],
        held: HeldChoices | None = None,
    ) -> tuple[set[str], str]:
        """One pass over ``todo``; final results go to ``results``. Returns keys to retry."""
        if self._lost_any() and (
            asyncio.get_running_loop().time() - self._described_at
            >= self._settings.salesforce_describe_recheck_seconds
        ):
            await self._describe_again(self._describes)
        done = _Round()
        matches: dict[str, list[Match]] = {}
        #: Per person, what the other targets' records hold, as a read-only record that
        #: gates like a converted Lead.
        elsewhere: dict[str, Match] = {}
        #: Per person, the batch's grants of events deleted since (the records remember the
        #: deletion), by batch index: left out of the write, reported older.
        revoked: dict[str, dict[int, list[str]]] = {}
        views: dict[str, PersonWrite] = {}
        writes: list[_Write] = []
        skipped: dict[str, PersonResult] = {}
        withdrawals: list[_Write] = []
        if self._blind:
            # People whose newest choices are a deletion's are found first and updated, never
            # upserted: without a sync state a record made for an erased user would hold no
            # stamp to keep an older grant out, so there is nothing to gain by making one.
            erased = [p for p in todo.values() if not p.may_create(self.sobject)]
            if erased:
                matches = await self.find(erased)
            for key, person in todo.items():
                if not person.may_create(self.sobject):
                    planned, result = self._plan_person(
                        key, person, matches.get(key, []), create=False
                    )
                    withdrawals.extend(planned)
                    if result is not None:
                        skipped[key] = result
                    continue
                write = self._upsert_write(key, person)
                if write.values:
                    writes.append(write)
                else:
                    skipped[key] = self._all_refused(person, [], write.refused)
        else:
            matches = await self.find(todo.values())
            tombs = _tombstones(matches) if self._state_field else {}
            if held is not None:
                elsewhere, tombs = await self._exchange(todo, matches, held, tombs)
            for key, person in todo.items():
                if key in tombs:
                    view, gone = self._without_revoked(person, tombs[key])
                    if gone:
                        views[key], revoked[key] = view, gone
                planned, result = self._plan_person(
                    key,
                    views.get(key, person),
                    matches.get(key, []),
                    others=[elsewhere[key]] if key in elsewhere else [],
                )
                writes.extend(planned)
                if result is not None:
                    skipped[key] = result
        try:
            # Withdrawals of erased people first: a pause of the upserts does not hold them.
            await self._send_all(withdrawals, done)
            await self._send_all(writes, done)
            if self._blind:
                again = [
                    self._upsert_write(key, todo[key], defaults=p.defaults)
                    for key, p in sorted(done.people.items())
                    if p.needs_defaults
                ]
                for w in again:
                    done.people[w.key] = _Person()
                await self._send_all(again, done)
        finally:
            # Also when a pause interrupts the round: whoever is finished is kept, so that a
            # later attempt neither writes them again nor reports them stale for finding
            # their own stamps.
            for key, person in todo.items():
                if key in skipped:
                    results[key] = _with_revoked(
                        skipped[key], person, self.sobject, revoked.get(key)
                    )
                    continue
                acc = done.people.get(key)
                if acc is None or acc.retry or acc.pending or acc.needs_defaults:
                    continue
                found = matches.get(key, [])
                live = [m for m in found if not m.converted]
                converted = [m for m in found if m.converted]
                if key in elsewhere:
                    converted.append(elsewhere[key])
                result = self._result(views.get(key, person), acc, live, converted)
                if acc.undone:
                    result.undone = acc.undone
                results[key] = _with_revoked(result, person, self.sobject, revoked.get(key))
        return done.retry, done.last_error

    async def _exchange(
        self,
        todo: Mapping[str, PersonWrite],
        matches: Mapping[str, list[Match]],
        held: HeldChoices,
        tombs: dict[str, dict[str, Stamp]],
    ) -> tuple[dict[str, Match], dict[str, dict[str, Stamp]]]:
        """Post the newest stamp per choice this target's records hold, and the deleted
        events they remember, wait for the batch's other targets, and return per person what
        any target holds for this target's fields (as a read-only record that gates like a
        converted Lead) and the deleted events any target's records remember.

        What ``held`` was seeded with (the choices the service took in lately) counts as
        held. A writer alone waits for nobody; the deletions found in earlier rounds and
        attempts of the batch still count (a round may have replaced the only stamp
        remembering one)."""
        choice_of = self._gate_key
        mine: dict[str, dict[ChoiceKey, Stamp]] = {}
        alone = held.alone(self.sobject)
        for key, found in {} if alone else matches.items():
            newest: dict[ChoiceKey, Stamp] = {}
            for match in found:
                for name, stamp in match.state.items():
                    choice = choice_of.get(name)
                    if choice is not None and ((old := newest.get(choice)) is None or old < stamp):
                        newest[choice] = stamp
            if newest:
                mine[key] = newest
        held.post(self.sobject, mine, tombs)
        sobject = self.sobject
        if not any(grants(v) for p in todo.values() for v in p.fields[sobject].values()):
            # Only grants are gated: a batch that grants nothing here (withdrawals only)
            # never waits for the other targets, however long one of them cannot read. The
            # deletions known so far still say which of its events' grants were revoked.
            return {}, {k: dict(d) for k in todo if (d := held.deleted_of(k))}
        await held.settled()
        elsewhere: dict[str, Match] = {}
        everywhere: dict[str, dict[str, Stamp]] = {}
        gated, gated_by = self._gated, self._plan.mapping.gated_by
        for key in todo:
            state: dict[str, Stamp] = {}
            for choice, stamp in held.of(key).items():
                names = gated.get(choice)
                if names is None:
                    names = gated[choice] = gated_by(choice)
                for name in names:
                    if (old := state.get(name)) is None or old < stamp:
                        state[name] = stamp
            if state:
                elsewhere[key] = Match("", state=state, converted=True)
            if deleted := held.deleted_of(key):
                everywhere[key] = dict(deleted)
        return elsewhere, everywhere

    def _plan_person(
        self,
        key: str,
        person: PersonWrite,
        found: list[Match],
        *,
        create: bool = True,
        others: Sequence[Match] = (),
    ) -> tuple[list[_Write], PersonResult | None]:
        """The writes for one person, or (when nothing is to be written) their result.

        In upsert mode a person without a record is created, also when their newest choices
        are a deletion's: the record holds no consent and the deletion's stamps, so that a
        grant from before the deletion arriving later (a retry, a replay) is stale instead of
        creating the record with a consent (a suppression record, as for any withdrawal).
        ``create`` False (the blind writer's erased people) creates nobody. ``others``:
        read-only records that gate this target's writes and creates as a record of its own
        would: what the person's records of the batch's other targets hold
        (:meth:`_exchange`). ``person`` is already without the grants of deleted events the
        records remember (:meth:`_without_revoked`).
        """
        mapping, sobject = self._plan.mapping, self.sobject
        live = [m for m in found if not m.converted]
        converted = [m for m in found if m.converted]
        gates = [*found, *others]
        converted.extend(others)
        if live:
            writes: list[_Write] = []
            refused: dict[str, SalesforceErrorInfo] = {}
            # Every record found gates, a converted Lead too (read-only, its stamps still
            # say what the person chose last), and so do the other targets' records.
            chosen = self._newest_across(person, gates) if len(gates) > 1 else None
            for match in live:
                write, why = self._update_write(key, person, match, chosen)
                refused.update(why)
                if write is not None:
                    writes.append(write)
            if writes:
                return writes, None
            if refused:
                return [], self._all_refused(person, live, refused, converted)
            if not person.fields[sobject]:
                ids = [m.id for m in live]
                if not person.deleted_events:  # every choice was a revoked grant
                    return [], PersonResult("stale", ids, note=_REVOKED)
                # A deleted event mapping nothing here, and no earlier grant of it held.
                note = "the deleted event holds nothing to withdraw here"
                return [], PersonResult("unchanged", ids, note=note)
            if self._state_field:
                holders = f"every matching {sobject} holds"
                if others:  # other targets' records, and choices taken in lately, count too
                    holders = (
                        f"the person's records ({sobject}s or another target's), or choices "
                        "the service took in lately, hold"
                    )
                note = f"{holders} a newer choice for each field ({self._state_field})"
                result = PersonResult("stale", [m.id for m in live], note=note)
            else:
                note = f"every matching {sobject} already holds these values"
                result = PersonResult("unchanged", [m.id for m in live], note=note)
            return [], self._finish(person, live, result, siblings=converted)
        if found:
            contacts = sorted({m.converted_contact for m in found if m.converted_contact})
            became = f" (to Contact {', '.join(contacts)})" if contacts else ""
            return [], PersonResult(
                "not_found",
                note=f"every {sobject} with this email was converted{became}; converted "
                f"{sobject}s are read-only and no new one is created",
            )
        if not person.fields[sobject]:
            if not person.deleted_events:
                return [], PersonResult("stale", note=f"{_REVOKED}; none is created")
            note = f"no {sobject} has this {mapping.lookup_field}: nothing to withdraw"
            return [], PersonResult("not_found", note=note)
        if mapping.upsert_mode and create:
            chosen = self._newest_across(person, gates) if gates else None
            write = self._create_write(key, person, chosen)
            if write.values:
                return [write], None
            if write.refused:
                return [], self._all_refused(person, [], write.refused)
            # Every choice is older than what the person's other records hold: a record
            # made now would hold none of them, and no stamp to keep the next one out.
            note = (
                f"no {sobject} has this {mapping.lookup_field}, and the person's other "
                "records, or choices the service took in lately, hold a newer choice for "
                "each field: none is created"
            )
            return [], self._finish(person, [], PersonResult("stale", note=note), siblings=gates)
        if mapping.upsert_mode:
            note = (
                f"no {sobject} has this {mapping.lookup_field}; a deletion creates no record "
                "without a sync state"
            )
        else:
            note = f"no {sobject} has this {mapping.lookup_field}; upsert_mode is off"
        return [], PersonResult("not_found", note=note)

    def _all_refused(
        self,
        person: PersonWrite,
        live: list[Match],
        refused: Mapping[str, SalesforceErrorInfo],
        converted: Sequence[Match] = (),
    ) -> PersonResult:
        """The result of a person whose only new choices were refused: nothing is written.

        With records, they are as they were (the events that carried the refused fields fail
        for them, the report says which); without, nobody could be created.
        """
        if live:
            status: Literal["stale", "unchanged"] = "stale" if self._state_field else "unchanged"
            result = PersonResult(status, [m.id for m in live])
        else:
            result = PersonResult("failed", error=next(iter(refused.values())))
        return self._finish(person, live, result, refused=refused, siblings=converted)

    def _without_revoked(
        self, person: PersonWrite, tombs: Mapping[str, Stamp]
    ) -> tuple[PersonWrite, dict[int, list[str]]]:
        """The person without the batch's grants of events deleted since (``tombs``: event id
        as the state shows it -> the deletion's stamp), and those grants by batch index.

        A deletion's stamps (its sort position, the deleted event's id) stay on the fields
        it withdrew until newer choices replace them, on this target's records or another
        target's: while one does, a version of the deleted event delivered late (a Didomi
        retry, a redrive) grants nothing, on any field. Each field such a grant held in the
        batch's merge takes the newest other choice of the batch for it, any event's, grant
        or withdrawal (a choice of another event stands as it would in a batch of its own);
        with none, the field is not written. The deleted event's withdrawals are kept (no
        consent is never the wrong side).
        """
        sobject = self.sobject
        gone: dict[int, list[str]] = {}
        dropped: set[tuple[int, str]] = set()
        for step in person.steps:
            tomb = tombs.get(sync_state.shown(step.stamp.event_id))
            mine = step.fields.get(sobject)
            if tomb is None or not mine or not step.stamp < tomb:
                continue
            names = sorted(n for n, v in mine.items() if grants(v))
            if names:
                gone[step.index] = names
                dropped.update((step.index, n) for n in names)
        if not gone:
            return person, {}
        values = dict(person.fields.get(sobject, {}))
        stamps = dict(person.stamps.get(sobject, {}))
        for name in {n for _, n in dropped}:
            # The merge kept the last step (in merge order) holding the field: when that is a
            # revoked grant, the newest other step's choice takes its place, or none.
            holders = [s for s in person.steps if name in s.fields.get(sobject, ())]
            if not holders or (holders[-1].index, name) not in dropped:
                continue
            kept = [s for s in holders if (s.index, name) not in dropped]
            if kept:
                values[name], stamps[name] = kept[-1].fields[sobject][name], kept[-1].stamp
            else:
                values.pop(name, None)
                stamps.pop(name, None)
        view = replace(
            person,
            fields={**person.fields, sobject: values},
            stamps={**person.stamps, sobject: stamps},
        )
        return view, gone

    def _newest_across(
        self, person: PersonWrite, records: list[Match]
    ) -> tuple[FieldValues, dict[str, Stamp]] | None:
        """The batch's choices, without the grants older than what any of the person's
        records holds: such a grant is written to none of them.

        The stamps live on the records, so a record made after a withdrawal was written (a
        second Contact with the same email) holds none of it: without this gate, a grant
        made before the withdrawal but delivered after it would be written there. Older
        withdrawals still reach a record that holds nothing newer (no consent is never the
        wrong side), and no value is copied between records: a record's value may have been
        changed in Salesforce since the service wrote it; only the stamp is its own.
        """
        if not self._state_field:
            return None
        values = dict(person.fields[self.sobject])
        stamps = dict(person.stamps.get(self.sobject, {}))
        for name, value in person.fields[self.sobject].items():
            mine = stamps.get(name)
            if (
                grants(value)
                and mine is not None
                and any((held := m.state.get(name)) is not None and mine < held for m in records)
            ):
                # The batch's newest withdrawal of the field, if any, goes instead: what
                # separate batches would have written to a record holding nothing newer.
                fallback = self._withdrawal_in(person, name)
                if fallback is None:
                    # Its stamp goes too: a choice written nowhere must not count as what
                    # the batch holds for the field (it kept _undo from withdrawing what an
                    # earlier version of a deleted event granted here).
                    del values[name]
                    del stamps[name]
                else:
                    values[name], stamps[name] = fallback
        return values, stamps

    def _withdrawal_in(self, person: PersonWrite, name: str) -> tuple[FieldValue, Stamp] | None:
        """The newest value of ``name`` in the batch's events that grants nothing."""
        for step in reversed(person.steps):
            mine = step.fields.get(self.sobject)
            if mine is not None and name in mine and not grants(mine[name]):
                return mine[name], step.stamp
        return None

    def _update_write(
        self,
        key: str,
        person: PersonWrite,
        match: Match,
        chosen: tuple[FieldValues, dict[str, Stamp]] | None = None,
    ) -> tuple[_Write | None, dict[str, SalesforceErrorInfo]]:
        """What to write to one record (newer choices only, different values only), and the
        new choices describe says Salesforce would refuse. ``chosen``: the batch's values
        and stamps less what a sibling record holds newer (:meth:`_newest_across`)."""
        sobject = self.sobject
        stamps: Mapping[str, Stamp]
        if chosen is not None:
            values, stamps = chosen
        else:
            values = person.fields[sobject]
            stamps = person.stamps.get(sobject, {})
        values, stamps, undone = self._undo(person, values, stamps, match.state, match.values)
        newer: set[str] = set()
        send: FieldValues = {}
        for name, value in values.items():
            stamp = stamps.get(name)
            if self._state_field:
                held = match.state.get(name)
                if stamp is not None and held is not None and _not_newer(stamp, held):
                    continue
            newer.add(name)
            if not (name in match.values and self._same(name, match.values[name], value)):
                send[name] = value
        send, refused = self._valid(send)
        newer -= refused.keys()
        state: dict[str, Stamp] | None = None
        if self._state_field:
            state = dict(match.state)
            state.update({n: stamps[n] for n in newer if n in stamps})
            if state == dict(match.state) and not send:
                return None, refused
        elif not send:
            return None, refused
        write = _Write(
            key,
            "update",
            match.id,
            send,
            state,
            newer,
            refused,
            newest_ms=_newest(stamps, newer),
            held=match.state,
            undone={n: i for n, i in undone.items() if n in newer},
        )
        return write, refused

    def _undo(
        self,
        person: PersonWrite,
        values: FieldValues,
        stamps: Mapping[str, Stamp],
        state: Mapping[str, Stamp] | None = None,
        held_values: Mapping[str, Any] | None = None,
    ) -> tuple[FieldValues, Mapping[str, Stamp], dict[str, int]]:
        """``values`` plus the withdrawal of each grant a deleted event made that the
        deletion's entity no longer mentions (an earlier version of the event granted it),
        stamped with the deletion, as its own withdrawals are:

        - a grant of that event in the batch, where the record (``state``; none for a create
          or a blind upsert) holds nothing newer: the write would otherwise carry it;
        - a grant on the record whose stamp names the event, where the batch has nothing
          newer for the field: what the record holds would otherwise stay.

        A choice of another event made after the deleted event's stands either way. The state
        keeps an event id's first 64 characters (non-ASCII shown as ``?``), so two ids alike
        there are taken for one: a withdrawal too many at worst, never a grant. Returns the
        values, their stamps, and the fields undone with the batch index of the deletion that
        undid each (the report counts them as that event's): without a deleted event in the
        batch, ``values`` and ``stamps`` as they are.
        """
        if not person.deleted_events:
            return values, stamps, {}
        state = state or {}
        held_values = held_values or {}
        undone: dict[str, Step] = {}
        for step in person.deleted_events:
            deletion = step.stamp
            event_id = deletion.event_id
            shown = sync_state.shown(event_id)
            for name in self._mapped:
                if name in self._gone:
                    continue
                mine, held = stamps.get(name), state.get(name)
                if (
                    mine is not None
                    and mine.event_id == event_id
                    and mine < deletion
                    and grants(values.get(name))
                    and (held is None or held < mine)
                ) or (
                    held is not None
                    and held.event_id == shown
                    and held < deletion
                    and grants(held_values.get(name))
                    and (mine is None or mine <= held)
                ):
                    undone[name] = step
        if not undone:
            return values, stamps, {}
        values, withdrawn = dict(values), dict(stamps)
        by: dict[str, int] = {}
        for name, step in undone.items():
            if (mine := withdrawn.get(name)) is None or mine < step.stamp:
                values[name] = self._no_consent[name]
                withdrawn[name] = step.stamp
                by[name] = step.index
        return values, withdrawn, by

    def _create_write(
        self,
        key: str,
        person: PersonWrite,
        chosen: tuple[FieldValues, dict[str, Stamp]] | None = None,
    ) -> _Write:
        """A create with the batch's choices (``chosen``: less the grants that records of
        other targets hold newer, :meth:`_newest_across`)."""
        mapping, sobject = self._plan.mapping, self.sobject
        stamps: Mapping[str, Stamp]
        if chosen is not None:
            values, stamps = chosen
        else:
            values, stamps = person.fields[sobject], person.stamps.get(sobject, {})
        values, stamps, undone = self._undo(person, values, stamps)
        values, refused = self._valid(values)
        extra: dict[str, Any] = dict(mapping.create_defaults)
        extra[mapping.match_field] = person.email
        if mapping.external_id_field:
            extra[mapping.external_id_field] = person.email
        written = set(values)
        state = {n: stamps[n] for n in written if n in stamps} if self._state_field else None
        return _Write(
            key,
            "create",
            None,
            values,
            state,
            written,
            refused,
            extra,
            newest_ms=_newest(stamps, written),
            undone=undone,
        )

    def _upsert_write(
        self, key: str, person: PersonWrite, *, defaults: Mapping[str, Any] | None = None
    ) -> _Write:
        """A blind upsert by the external id; ``defaults`` (the defaults pass): the
        create_defaults to send, with the match field."""
        mapping = self._plan.mapping
        ext = mapping.external_id_field
        assert ext is not None
        # No record read: only the deleted event's grants in the batch are withdrawn.
        values, stamps, undone = self._undo(
            person, person.fields[self.sobject], person.stamps.get(self.sobject, {})
        )
        values, refused = self._valid(values)
        extra: dict[str, Any] = {ext: person.email}
        if defaults is not None:
            extra = {**defaults, mapping.match_field: person.email, **extra}
        return _Write(
            key,
            "upsert",
            None,
            values,
            None,
            set(values),
            refused,
            extra,
            newest_ms=_newest(stamps, values),
            undone=undone,
        )

    def _defaults_for(
        self, errors: Sequence[SalesforceErrorInfo], sent: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The create_defaults a second pass sends for these errors: those they name and the
        write did not send (a field Salesforce requires of a new record, LastName say, is one
        an existing record holds already), all of them when no field is named, none when only
        the match field or external id is named (the pass sends those), None when a named
        field has no default (a second pass could not succeed: an existing record's own rule,
        most likely, and one that must not be answered by renaming the record)."""
        mapping = self._plan.mapping
        defaults = mapping.create_defaults
        # The pass always sends the match field (and the external id): never missing then.
        always = {mapping.match_field.lower(), (mapping.external_id_field or "").lower()}
        named = _named_missing(errors)
        if named and named <= always:
            return {}  # only those: the pass sends them and no default
        named -= {n.lower() for n in sent} | always
        if not named:
            return dict(defaults)
        chosen = {k: v for k, v in defaults.items() if k.lower() in named}
        if {k.lower() for k in chosen} != named:
            return None
        return chosen

    def _valid(self, values: FieldValues) -> tuple[FieldValues, dict[str, SalesforceErrorInfo]]:
        """``values`` without those describe says Salesforce would refuse, and the refusals."""
        refused: dict[str, SalesforceErrorInfo] = {}
        kept: FieldValues = {}
        gone = self._gone
        for name, value in values.items():
            if gone and name in gone:
                refused[name] = gone[name]
                continue
            if value is None or value.__class__ is bool:  # never refused (most values)
                kept[name] = value
                continue
            why = refusal(self._plan.info(name), value)
            if why is None:
                kept[name] = value
            else:
                refused[name] = why
        return kept, refused

    def _same(self, name: str, held: Any, value: FieldValue) -> bool:
        if held is None or held == "":
            return value is None or value == ""
        info = self._plan.info(name)
        if info is not None and info.type == "multipicklist" and isinstance(value, str):
            return isinstance(held, str) and set(held.split(";")) == set(value.split(";"))
        return bool(held == value)

    # --- sending -------------------------------------------------------------------------

    def _body(self, write: _Write) -> dict[str, Any]:
        record: dict[str, Any] = {"attributes": {"type": self.sobject}}
        if write.record_id is not None:
            record["id"] = write.record_id
        if self._defaults_gone:
            gone = self._defaults_gone
            record.update({k: v for k, v in write.extra.items() if k not in gone})
        else:
            record.update(write.extra)
        record.update(write.values)
        if self._state_field and write.state is not None:
            text = sync_state.encode(write.state)
            if len(text) > self._state_room:
                # A record's state keeps the stamps of fields not mapped any more (a replica
                # still on the previous mapping may write them) while they fit; past the room
                # the field was checked for, only the mapped fields' stamps are kept.
                mapped = set(self._mapped)
                text = sync_state.encode({n: v for n, v in write.state.items() if n in mapped})
            record[self._state_field] = text
        if self._synced_field and write.newest_ms:
            record[self._synced_field] = format_epoch_ms(write.newest_ms)
        return record

    async def _send_all(self, writes: list[_Write], done: _Round) -> None:
        """Send every write (by operation, 200 a call); then, once, the records Salesforce
        refused for named fields, without those fields."""
        for w in writes:
            acc = done.of(w.key)
            acc.refused.update(w.refused)
            acc.pending += 1
            for name, index in w.undone.items():
                acc.undone.setdefault(index, set()).add(name)
        # Updates and creates of one batch go concurrently: one round trip, not two.
        operations: tuple[Operation, ...] = ("update", "create", "upsert")
        by_operation = [
            (operation, mine)
            for operation in operations
            if (mine := [w for w in writes if w.operation == operation])
        ]
        if len(by_operation) == 1:
            # Chunks and fallbacks go one after another: one call at a time.
            with single():
                await self._send_operation(*by_operation[0], done)
            return
        # When one operation fails (a pause, a spent budget), the others are cancelled: a
        # create still in flight when the next attempt looks the person up would be made
        # twice. The next attempt queries first, so whatever they did is found.
        await gather_or_cancel(*(self._send_operation(op, m, done) for op, m in by_operation))

    async def _send_operation(
        self, operation: Operation, writes: list[_Write], done: _Round
    ) -> None:
        fallbacks = await self._send(operation, writes, done)
        if fallbacks:
            await self._send(operation, fallbacks, done)

    async def _send(self, operation: Operation, writes: list[_Write], done: _Round) -> list[_Write]:
        fallbacks: list[_Write] = []
        for start in range(0, len(writes), COLLECTION_LIMIT):
            chunk = writes[start : start + COLLECTION_LIMIT]
            fallbacks += await self._send_chunk(operation, chunk, done)
        return fallbacks

    async def _send_chunk(
        self, operation: Operation, chunk: list[_Write], done: _Round, resends: int = 0
    ) -> list[_Write]:
        """Send one collection call; returns the writes to try once more without fields."""
        # Fields found gone since the chunk was planned (by another chunk or lane) stay out.
        chunk, _ = self._without_gone(chunk, done)
        if not chunk:
            return []
        self._client.check_budget(self._settings.salesforce_api_budget_share)
        synced, sent_at = self._synced_field, self._describes
        left_out = self._defaults_gone  # defaults this call went without already
        try:
            answers = await self._call(operation, [self._body(w) for w in chunk])
        except SalesforceError as exc:
            failed_at = self._describes
            if exc.reaction is Reaction.RETRY:
                # The whole chunk is unknown; the next round re-queries before writing.
                for w in chunk:
                    acc = done.of(w.key)
                    acc.retry = True
                    acc.pending -= 1
                done.last_error = str(exc)
                return []
            if exc.reaction is not Reaction.REPORT:
                raise
            if (
                isinstance(exc, SalesforceRequestError)
                and exc.code == "INVALID_FIELD"
                and resends <= len(self._mapped)
            ):

                def explained() -> bool:
                    gone, defaults = self._gone, self._defaults_gone
                    return (
                        any(n in gone for w in chunk for n in (*w.fields, *w.values))
                        or (
                            synced is not None
                            and self._synced_field is None
                            and any(w.newest_ms for w in chunk)
                        )
                        or bool(
                            defaults - left_out
                            and any(k in defaults - left_out for w in chunk for k in w.extra)
                        )
                    )

                if await self._explain(sent_at, failed_at, explained):
                    # Something the call carried is gone: the rest goes again without it.
                    rest, _ = self._without_gone(chunk, done)
                    return await self._send_chunk(operation, rest, done, resends + 1)
            info = SalesforceErrorInfo(code=exc.code, message=exc.message, fields=list(exc.fields))
            for w in chunk:
                acc = done.of(w.key)
                acc.error = info
                acc.pending -= 1
            return []
        fallbacks: list[_Write] = []
        for w, answer in zip(chunk, answers, strict=True):
            again = self._record(w, answer, done)
            if again is not None:
                fallbacks.append(again)
        return fallbacks

    def _record(self, write: _Write, answer: RecordResult, done: _Round) -> _Write | None:
        """Account for one record's answer; returns the write to try once more, if any."""
        acc = done.of(write.key)
        acc.pending -= 1
        if answer.success:
            if answer.id and answer.id not in acc.ids:
                acc.ids.append(answer.id)
            created = write.operation == "create" or (
                write.operation == "upsert" and bool(answer.created)
            )
            if created:
                acc.created = True
            else:
                acc.updated = True
            acc.written |= write.fields
            return None
        errors = answer.errors or (
            SalesforceErrorInfo(
                code="UNKNOWN", message="Salesforce reported a failure without an error"
            ),
        )
        first = errors[0]
        if first.code in RETRIABLE_RECORD_CODES:
            acc.retry = True
            done.last_error = first.code
            self._client.metrics.salesforce_retries.labels(first.code).inc()
            return None
        if (
            write.operation == "upsert"
            and write.extra.keys() == {self._plan.mapping.external_id_field}
            and any(_missing_beyond(e, write.values) for e in errors)
            and not write.fallback
            and (defaults := self._defaults_for(errors, write.values)) is not None
        ):
            # Salesforce could not create the person without create_defaults: a second pass
            # sends them to those people only, and only the defaults the errors name, so
            # defaults never overwrite an existing record. (A required field the write itself
            # empties is refused like any other field: defaults cannot fill it, and a second
            # pass would rewrite an existing record's name and email with them.)
            acc.needs_defaults = True
            acc.defaults = defaults
            return None
        if first.code == CONVERTED_LEAD:
            acc.not_found = True
            acc.note = f"the {self.sobject} was converted meanwhile and is read-only"
            return None
        refused_now = self._field_refusals(write, errors)
        if refused_now and not write.fallback:
            acc.refused.update(refused_now)
            if not write.fields - refused_now.keys():
                acc.error = acc.error or first
                return None
            acc.pending += 1
            return write.without(refused_now.keys(), fallback=True)
        info = first
        if first.code == "DUPLICATES_DETECTED" and answer.duplicates:
            info = SalesforceErrorInfo(
                code=first.code,
                message=f"{first.message} (duplicate of {', '.join(answer.duplicates)})",
                fields=list(first.fields),
            )
        acc.error = info
        return None

    def _field_refusals(
        self, write: _Write, errors: Iterable[SalesforceErrorInfo]
    ) -> dict[str, SalesforceErrorInfo]:
        """The mapped fields Salesforce named as at fault, when every error names only such
        fields (else the record failed as a whole)."""
        out: dict[str, SalesforceErrorInfo] = {}
        own = {n.lower(): n for n in write.values}
        for err in errors:
            if err.code not in FIELD_CODES or not err.fields:
                return {}
            for name in err.fields:
                mine = own.get(name.lower())
                if mine is None:
                    return {}
                out[mine] = err
        return out

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

    # --- fields gone while running ---------------------------------------------------------

    def _lost_any(self) -> bool:
        """Whether a field of the mapping is left out because Salesforce no longer has it."""
        return (
            bool(self._gone)
            or bool(self._defaults_gone)
            or self._synced_field != self._plan.mapping.last_synced_field
        )

    async def _explain(self, sent_at: int, failed_at: int, explained: Callable[[], bool]) -> bool:
        """Whether fields gone from the target explain a call's ``INVALID_FIELD``.

        ``sent_at`` and ``failed_at``: how many describes had started when the call was sent
        and when its failure came. An answer to a describe started after the send serves
        (calls failing together describe once); when it does not explain the failure, it
        may still predate it, and a describe started after the failure decides.
        """
        await self._describe_again(sent_at)
        if explained():
            return True
        if self._last_described <= failed_at:
            await self._describe_again(failed_at)
            return explained()
        return False

    async def _describe_again(self, since: int) -> None:
        """Describe the target again, unless a describe started after ``since`` (a count of
        describes started) was answered meanwhile, and learn which mapped fields Salesforce
        no longer lets the service write.

        Raises :class:`MappingError` when a field the service cannot work without is gone."""
        async with self._describe_lock:
            if self._last_described <= since:
                self._describes += 1
                number = self._describes
                described = await self._client.describe(self.sobject)
                self._last_described = number
                self._described_at = asyncio.get_running_loop().time()
                self._learn(described)
        if self._unusable is not None:
            raise MappingError(self._unusable)

    def _learn(self, described: Mapping[str, Any]) -> None:
        """Take in a fresh describe of the target: which fields are gone, or whether one the
        service cannot work without is."""
        fields, _ = describe_fields(described.get("fields") or ())
        mapping = self._plan.mapping
        self._unusable = None
        needed = [("lookup field", mapping.lookup_field)]
        if mapping.upsert_mode:
            needed.append(("match_field", mapping.match_field))
        if self._state_field:
            needed.append(("sync_state_field", self._state_field))
        for what, name in needed:
            info = fields.get(name.lower())
            lookup = what == "lookup field"
            if (
                info is None
                or (lookup and name == mapping.external_id_field and not info.external_id)
                or (not lookup and not info.updateable)
            ):
                self._unusable = (
                    f"{self.sobject}: the {what} {name} is gone, or no longer usable by the "
                    "integration user (deleted, changed, or field-level security); writing is "
                    "paused until it is back"
                )
                return
        gone: dict[str, SalesforceErrorInfo] = {}
        for name in self._mapped:
            info = fields.get(name.lower())
            if info is None or not info.updateable:
                gone[name] = _gone_error(self.sobject, name, info)
        defaults_gone = frozenset(
            name
            for name in mapping.create_defaults
            if (info := fields.get(name.lower())) is None or not info.createable
        )
        if defaults_gone != self._defaults_gone:
            logger.warning(
                "create_defaults fields gone from salesforce; creates go without them"
                if defaults_gone
                else "create_defaults fields are back",
                extra={"sobject": self.sobject, "fields": sorted(defaults_gone)},
            )
            self._defaults_gone = defaults_gone
        synced = mapping.last_synced_field
        if synced:
            info = fields.get(synced.lower())
            now = synced if info is not None and info.updateable else None
            if now != self._synced_field:
                logger.warning(
                    "last_synced_field gone from salesforce; not written until it is back"
                    if now is None
                    else "last_synced_field is back",
                    extra={"sobject": self.sobject, "field": synced},
                )
            self._synced_field = now
        if gone.keys() != self._gone.keys():
            if gone:
                logger.error(
                    "mapped fields gone from salesforce; their choices are refused and "
                    "dead-lettered until they are back",
                    extra={"sobject": self.sobject, "fields": sorted(gone)},
                )
            else:
                logger.warning("mapped fields are back", extra={"sobject": self.sobject})
        self._gone = gone
        self._client.metrics.fields_unavailable.labels(self.sobject).set(len(gone))

    def _without_gone(self, chunk: list[_Write], done: _Round) -> tuple[list[_Write], bool]:
        """The chunk's writes without the fields known gone, and whether any carried one. A
        write left with no field is dropped: its refusals are the person's, not an error (the
        person's other records may have taken their choices)."""
        gone = self._gone
        if not gone:
            return chunk, False
        rest: list[_Write] = []
        changed = False
        for w in chunk:
            names = {n for n in w.fields if n in gone} | {n for n in w.values if n in gone}
            if not names:
                rest.append(w)
                continue
            changed = True
            acc = done.of(w.key)
            acc.refused.update({n: gone[n] for n in sorted(names)})
            if not w.fields - names:
                acc.pending -= 1
                continue
            rest.append(w.without(names))
        return rest, changed

    # --- results -------------------------------------------------------------------------

    def _result(
        self, person: PersonWrite, acc: _Person, live: list[Match], converted: Sequence[Match] = ()
    ) -> PersonResult:
        # A record converted meanwhile (read-only now) says nothing of the person's other
        # records: what they took, failed or refused is the result.
        if acc.not_found and not (acc.updated or acc.created or acc.error):
            result = PersonResult("not_found", note=acc.note)
            result.refused = dict(acc.refused)  # refused up front (describe): dead-lettered
            return result
        # A field any record refused is reported, even when another record with the same
        # email took it: that record still holds the old value (a withdrawal refused there
        # leaves it subscribed), and only a refusal sends the event to the dead letters.
        refused = dict(acc.refused)
        if refused and not (acc.updated or acc.created or acc.error):
            # Every write lost its fields (gone from Salesforce meanwhile): nothing written.
            return self._all_refused(person, live, refused, converted)
        ids = acc.ids or [m.id for m in live]
        if acc.error is not None:
            result = PersonResult("failed", ids, error=acc.error)
        elif acc.created:
            result = PersonResult("created", ids)
            if not person.may_create(self.sobject):
                result.note = (
                    "a suppression record: created holding no consent for a deletion, so "
                    "that choices made before it and delivered later stay out"
                )
        else:
            result = PersonResult("updated", ids)
        if acc.not_found:  # one record was converted meanwhile
            updated = "; the others with this email were updated"
            result.note = f"{acc.note}{updated if result.status == 'updated' else ''}"
        elif result.status == "updated" and len(live) > 1:
            result.note = f"{len(live)} {self.sobject} records share this email; " + (
                "one or more refused fields (fields_refused)" if refused else "all were updated"
            )
        return self._finish(
            person, live, result, refused=refused, written=acc.written, siblings=converted
        )

    def _finish(
        self,
        person: PersonWrite,
        live: list[Match],
        result: PersonResult,
        *,
        refused: Mapping[str, SalesforceErrorInfo] | None = None,
        written: set[str] | None = None,
        siblings: Sequence[Match] = (),
    ) -> PersonResult:
        """Add which of each event's fields were older than every record's state.

        ``siblings``: records found but not writable (converted Leads), whose stamps gate
        all the same (:meth:`_newest_across`)."""
        result.refused = dict(refused or {})
        result.written = set(written or ())
        if not (self._state_field and (live or siblings)):
            return result
        # A field is older for an event when every record holds a stamp at least as new (a
        # replay, a duplicate), or, for a grant, one holds a newer one than the batch's
        # newest choice for it: then none of the batch's was written (_newest_across). (A
        # record holding the batch's own stamp took it in an earlier round of this write.)
        floor: dict[str, Stamp] = {}
        ceiling: dict[str, Stamp] = {}
        #: The batch's withdrawal written instead of a gated grant: it and the events before
        #: it (superseded within the batch, as usual) are not older for that field.
        spared: dict[str, Stamp] = {}
        if len(live) == 1 and not siblings:  # most people: one record
            state = live[0].state
            floor = {n: state[n] for n in person.fields.get(self.sobject, {}) if n in state}
        else:
            merged = person.stamps.get(self.sobject, {})
            for name, value in person.fields.get(self.sobject, {}).items():
                held = [h for m in live if (h := m.state.get(name)) is not None]
                gates = held + [h for m in siblings if (h := m.state.get(name)) is not None]
                if not gates:
                    continue
                top, ours = max(gates), merged.get(name)
                if grants(value) and ours is not None and top > ours:
                    ceiling[name] = top
                    fallback = self._withdrawal_in(person, name)
                    # Only when a record took it (it may have been refused, or its record
                    # converted meanwhile).
                    if fallback is not None and name in result.written:
                        spared[name] = fallback[1]
                if held and len(held) == len(live):
                    floor[name] = min(held)
        if not (floor or ceiling):
            return result
        for step in person.steps:
            mine = step.fields.get(self.sobject)
            if not mine:
                continue
            older = sorted(
                name
                for name in mine
                if ((f := floor.get(name)) is not None and _not_newer(step.stamp, f))
                or (
                    (c := ceiling.get(name)) is not None
                    and step.stamp < c
                    and ((w := spared.get(name)) is None or step.stamp > w)
                )
            )
            if older:
                result.older[step.index] = older
                if len(older) == len(mine):
                    result.stale_indexes.add(step.index)
        return result

    # --- lookups -------------------------------------------------------------------------

    async def find(self, people: Iterable[PersonWrite]) -> dict[str, list[Match]]:
        """Records by email key, for every person given (absent key: no record)."""
        people = list(people)
        while True:
            before, sent_at = set(self._gone), self._describes
            try:
                return await self._find(people)
            except SalesforceRequestError as exc:
                failed_at = self._describes
                if exc.code != "INVALID_FIELD":
                    raise
                if not await self._explain(sent_at, failed_at, partial(self._more_gone, before)):
                    raise  # describe lists every field the query read: something else

    def _more_gone(self, than: set[str]) -> bool:
        return not self._gone.keys() <= than

    async def _find(self, people: list[PersonWrite]) -> dict[str, list[Match]]:
        mapping = self._plan.mapping
        lookup = mapping.lookup_field
        select = ["Id", lookup, *(n for n in self._mapped if n not in self._gone)]
        if self._state_field:
            select.append(self._state_field)
        if self._plan.converts:
            # Converted Leads are read too, to know whom not to create and what they became;
            # they are never written.
            select += ["IsConverted", "ConvertedContactId"]
        queries = in_queries_encoded(
            path=self._client.query_path(),
            select=tuple(dict.fromkeys(select)),
            sobject=self.sobject,
            field=lookup,
            values=(p.email for p in people),
            max_url_bytes=self._settings.salesforce_max_url_bytes,
        )
        found: dict[str, list[Match]] = {}
        for encoded in queries:
            with single():  # queries go one after another
                rows = await self._client.query_all(encoded)
            for row in rows:
                value = row.get(lookup)
                if not isinstance(value, str):
                    continue
                matches = found.setdefault(email_key(value), [])
                if all(m.id != row["Id"] for m in matches):
                    matches.append(
                        Match(
                            str(row["Id"]),
                            {n: row.get(n) for n in self._mapped if n in row},
                            sync_state.decode(row.get(self._state_field))
                            if self._state_field
                            else {},
                            converted=row.get("IsConverted") is True,
                            converted_contact=row.get("ConvertedContactId") or None,
                        )
                    )
        return found


#: Why a person's choices were all left out: grants of events deleted since.
_REVOKED = (
    "every choice is a grant made by an event before its deletion, which the person's "
    "records remember"
)


def _tombstones(matches: Mapping[str, list[Match]]) -> dict[str, dict[str, Stamp]]:
    """Per person, the deleted events their records remember: event id (as the state shows
    it) -> the newest deletion stamp naming it (a stamp in the deletions' sort position)."""
    out: dict[str, dict[str, Stamp]] = {}
    for key, found in matches.items():
        for match in found:
            for held in match.state.values():
                if held.partition == DELETION_PARTITION:
                    mine = out.setdefault(key, {})
                    if (t := mine.get(held.event_id)) is None or t < held:
                        mine[held.event_id] = held
    return out


def _with_revoked(
    result: PersonResult, person: PersonWrite, sobject: str, gone: Mapping[int, list[str]] | None
) -> PersonResult:
    """``result`` with the revoked grants of deleted events reported older on ``sobject``
    (their event stale there when none of its fields was newer)."""
    if not gone:
        return result
    for step in person.steps:
        names = gone.get(step.index)
        if not names:
            continue
        older = sorted({*result.older.get(step.index, ()), *names})
        result.older[step.index] = older
        result.revoked[step.index] = list(names)
        if set(step.fields.get(sobject, {})) <= set(older):
            result.stale_indexes.add(step.index)
    return result


def _named_missing(errors: Iterable[SalesforceErrorInfo]) -> set[str]:
    """The fields ``REQUIRED_FIELD_MISSING`` errors name, lower-cased."""
    return {f.lower() for e in errors if e.code == "REQUIRED_FIELD_MISSING" for f in e.fields}


def _missing_beyond(error: SalesforceErrorInfo, values: Mapping[str, Any]) -> bool:
    """Whether ``error`` says a required field is missing that the write does not carry (one
    that create_defaults may supply; an error naming no field counts as such)."""
    if error.code != "REQUIRED_FIELD_MISSING":
        return False
    sent = {n.lower() for n in values}
    return not error.fields or any(f.lower() not in sent for f in error.fields)


def _gone_error(sobject: str, name: str, info: FieldInfo | None) -> SalesforceErrorInfo:
    why = "is gone" if info is None else "is read-only"
    return SalesforceErrorInfo(
        code="INVALID_FIELD",
        message=f"{sobject}.{name} {why} for the integration user (deleted, or field-level "
        "security changed while the service ran); the choice was not written",
        fields=[name],
    )


def _blind(mapping: TargetMapping) -> bool:
    """Whether a target's writer upserts by the external id without reading first."""
    return bool(mapping.external_id_field and mapping.upsert_mode and not mapping.sync_state_field)


def calls_at_once(mapping: TargetMapping) -> int:
    """The most calls a writer of this target has in flight for one batch: its queries go
    one after another, as do the chunks of one operation; its updates go beside its creates
    (upsert mode with records found first); a blind upsert goes alone."""
    return 2 if mapping.upsert_mode and not _blind(mapping) else 1


def _newest(stamps: Mapping[str, Stamp], names: Iterable[str]) -> int:
    """The time of the newest choice among ``names`` (0 when none has a stamp)."""
    return max((stamps[n].time_ms for n in names if n in stamps), default=0)


def _not_newer(stamp: Stamp, held: Stamp) -> bool:
    """Whether a choice stamped ``stamp`` is no newer than what a record holds (``held``).

    Two versions of one event edited in the same millisecond carry equal stamps (their
    ``updated_at`` is the stamp's offset): the one written later is taken, as the later read
    is within a batch. Any other equal stamp is the same choice again. A record may hold a
    version of the same event stamped by a release that dated versions by their
    ``updated_at``: a later version of it is newer when its ``updated_at`` is (or an edit
    after the upgrade, a withdrawal among them, would be lost there).
    """
    if (
        stamp.partition == VERSION_PARTITION
        and held.partition < VERSION_PARTITION
        and held.time_ms > stamp.time_ms
        and held.event_id == sync_state.shown(stamp.event_id)
    ):
        return stamp.offset <= held.time_ms
    return stamp < held or (stamp == held and stamp.partition != VERSION_PARTITION)
