"""Report stage: one outcome per input message, and the dead letters of a batch.

Pure: takes the batch's messages, their parse results, the merged people and the write
results, and says what to publish. Every input message gets exactly one outcome.

Outcomes are built as plain dicts in the shape (and with the clipping) of
:class:`~consumer.model.outcomes.Outcome`, not as model instances: this runs once per event
on the hot path. The models stay the contract (the JSON Schemas come from them) and a test
shows both serialize to the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from consumer.mapping import TargetPlan
from consumer.model.changes import (
    Accepted,
    Ignored,
    ParseResult,
    PersonResult,
    PersonWrite,
    Rejected,
    Step,
)
from consumer.model.messages import FIRST_SEEN_HEADER, InputMessage
from consumer.model.outcomes import (
    MAX_CODE_CHARS,
    MAX_ID_CHARS,
    MAX_KEY_BYTES,
    MAX_REASON_CHARS,
    DeadLetter,
    Outcome,
    SalesforceErrorInfo,
    clip,
    clip_bytes,
    overall_status,
)

#: The error class of an event some of whose fields were refused (the others were written).
FIELD_REJECTED = "FIELD_REJECTED"

OutcomeDoc = dict[str, Any]
"""An outcome as published (the JSON object of :class:`Outcome`, nulls left out)."""


@dataclass(slots=True)
class Publication:
    """One outcome to publish, with its Kafka key."""

    key: bytes | None
    doc: OutcomeDoc

    @property
    def outcome(self) -> Outcome:
        """The outcome as the model (validated; for tests and tools, not the hot path)."""
        return Outcome.model_validate(self.doc)

    def value(self) -> bytes:
        """The record value: the outcome's JSON."""
        return outcome_json(self.doc)


@dataclass(frozen=True)
class DeadLetterOut:
    """One message to send to the dead-letter topic."""

    message: InputMessage
    info: DeadLetter


def outcome_json(doc: OutcomeDoc) -> bytes:
    """An outcome document as JSON (datetimes as pydantic writes them: UTC with a ``Z``)."""
    return orjson.dumps(doc, option=orjson.OPT_UTC_Z)


def assemble(
    messages: Sequence[InputMessage],
    parsed: Sequence[ParseResult],
    people: Mapping[str, PersonWrite],
    results: Mapping[str, Mapping[str, PersonResult]],
    plans: Sequence[TargetPlan],
    now: datetime,
) -> tuple[list[Publication], list[DeadLetterOut]]:
    """Outcomes (in input order) and dead letters for a processed batch.

    ``results`` is keyed by sObject, then by email key.
    """
    outcomes: list[Publication] = []
    dead: list[DeadLetterOut] = []
    steps = {s.index: s for person in people.values() for s in person.steps}
    # Every event of a person whose outcome on a target has nothing of its own (no field
    # refused, none older than the record) shares one target document: under skew a busy
    # person has hundreds of events in one batch.
    shared: dict[tuple[int, str], dict[str, Any]] = {}
    alike: dict[str, _Verdict] = {}
    for index, (message, result) in enumerate(zip(messages, parsed, strict=True)):
        source = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
        if isinstance(result, Rejected):
            doc = _doc(
                "rejected",
                source,
                now,
                reason=result.reason,
                error_class=result.error_class,
                event_id=result.event_id,
                event_type=result.event_type,
                organization_user_id=result.organization_user_id,
            )
            dead.append(
                DeadLetterOut(
                    message,
                    _dead_letter(message, result.error_class, result.reason, result.event_id, now),
                )
            )
            outcomes.append(Publication(_key(doc, message), doc))
            continue
        if isinstance(result, Ignored):
            doc = _doc(
                "ignored",
                source,
                now,
                reason=result.reason,
                event_id=result.event_id,
                event_type=result.event_type,
                organization_user_id=result.organization_user_id,
                event_time=result.event_time,
            )
            outcomes.append(Publication(_key(doc, message), doc))
            continue
        assert isinstance(result, Accepted)
        change = result.change
        # A person whose results hold nothing per event (no field refused, none older than
        # the record, no event stale) gives each of their events the same targets: worked
        # out once per person, as under skew a busy person has hundreds of events a batch.
        verdict = alike.get(change.email_key)
        if verdict is None:
            person = people[change.email_key]
            verdict, for_all = _verdict(index, person, results, plans, steps.get(index), shared)
            if for_all:
                alike[change.email_key] = verdict
        targets, status, reason, error_class = verdict
        if change.malformed is not None:
            status, reason, error_class = _with_malformed(
                change.malformed, bool(targets), status, reason, error_class
            )
        if error_class is not None and reason is not None:
            dead.append(
                DeadLetterOut(
                    message, _dead_letter(message, error_class, reason, change.event_id, now)
                )
            )
        doc = _doc(
            status,
            source,
            now,
            reason=reason,
            error_class=error_class,
            event_id=change.event_id,
            event_type=change.event_type,
            organization_user_id=change.organization_user_id,
            targets=targets,
            event_time=change.event_time,
        )
        outcomes.append(Publication(_key(doc, message), doc))
    return outcomes, dead


#: What an accepted event came to: its target documents, status, reason and error class.
_Verdict = tuple[list[dict[str, Any]], str, str | None, str | None]


def _verdict(
    index: int,
    person: PersonWrite,
    results: Mapping[str, Mapping[str, PersonResult]],
    plans: Sequence[TargetPlan],
    step: Step | None,
    shared: dict[tuple[int, str], dict[str, Any]],
) -> tuple[_Verdict, bool]:
    """What the event at ``index`` came to on each target its person has fields for, and
    whether every event of the person comes to the same (no result holds anything about
    one event alone: no field refused, none older than the record, no event stale)."""
    for_all = True
    targets: list[dict[str, Any]] = []
    refused: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, Any] | None = None
    for plan in plans:
        if plan.sobject not in person.fields:
            continue
        written = results.get(plan.sobject, {}).get(person.email_key)
        if written is None:
            continue
        if written.older or written.stale_indexes or written.refused or written.undone:
            for_all = False
        mine = step.fields.get(plan.sobject, {}) if step is not None else {}
        if written.undone and index in written.undone:
            # What the deleted event withdrew beyond its own fields is its too (a refusal
            # of it fails the event and dead-letters it).
            mine = {**mine, **dict.fromkeys(written.undone[index])}
        plain = (
            index not in written.older
            and index not in written.stale_indexes
            and not (written.refused and any(f in written.refused for f in mine))
        )
        if plain:
            target = shared.get((id(written), plan.sobject))
            if target is None:
                target = _target(plan.sobject, written, index, mine, len(person.indexes))
                shared[(id(written), plan.sobject)] = target
        else:
            target = _target(plan.sobject, written, index, mine, len(person.indexes))
        targets.append(target)
        if "fields_refused" in target:
            refused.append((plan.sobject, target))
        elif target["status"] == "failed" and failed is None and "error" in target:
            failed = target
    status = overall_status(t["status"] for t in targets)
    reason = None
    error_class = None
    if not targets:
        reason = "the event carries no choice that the mapping writes to any target"
    if failed is not None:
        error_class = failed["error"]["code"]
        reason = f"{failed['sobject']}: {error_class}: {failed['error']['message']}"
    elif refused:
        # Fields Salesforce refused (or describe says it would): the rest was written.
        # Dead-lettered so an operator can fix the field and redrive the event.
        error_class = FIELD_REJECTED
        reason = "; ".join(
            f"{sobject}.{r['field']}: {r['code']}: {r['message']}"
            for sobject, target in refused
            for r in target["fields_refused"]
        )
    return (targets, status, reason, error_class), for_all


def _with_malformed(
    malformed: str, applied: bool, status: str, reason: str | None, error_class: str | None
) -> tuple[str, str, str]:
    """An event some mapped parts of which were left out as malformed (parse): ``partial``
    when its other choices reached a target, ``rejected`` when nothing else was mapped; it is
    dead-lettered either way, so that it can be fixed and redriven."""
    text = f"left out as malformed: {malformed}"
    if not applied:
        return "rejected", text, "SCHEMA_VALIDATION"
    if status != "failed":
        status = "partial"
    return (
        status,
        text if reason is None else f"{reason}; {text}",
        error_class or "SCHEMA_VALIDATION",
    )


def _doc(
    status: str,
    source: dict[str, Any],
    now: datetime,
    *,
    reason: str | None = None,
    error_class: str | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
    organization_user_id: str | None = None,
    targets: list[dict[str, Any]] | None = None,
    event_time: datetime | None = None,
) -> OutcomeDoc:
    """An outcome document: :class:`Outcome`'s fields in its order, clipped as it clips."""
    doc: OutcomeDoc = {"status": status}
    if reason is not None:
        doc["reason"] = clip(reason, MAX_REASON_CHARS)
    if error_class is not None:
        doc["error_class"] = clip(error_class, MAX_CODE_CHARS)
    if event_id is not None:
        doc["event_id"] = clip(event_id, MAX_ID_CHARS)
    if event_type is not None:
        doc["event_type"] = clip(event_type, MAX_CODE_CHARS)
    if organization_user_id is not None:
        doc["organization_user_id"] = clip(organization_user_id, MAX_ID_CHARS)
    doc["targets"] = targets or []
    doc["source"] = source
    if event_time is not None:
        doc["event_time"] = event_time
    doc["processed_at"] = now
    return doc


def _error(info: SalesforceErrorInfo) -> dict[str, Any]:
    return {
        "code": clip(info.code, MAX_CODE_CHARS),
        "message": clip(info.message, MAX_REASON_CHARS),
        "fields": list(info.fields),
    }


def _target(
    sobject: str, written: PersonResult, index: int, mine: Mapping[str, Any], merged: int
) -> dict[str, Any]:
    """What one event's fields came to on one target (a :class:`TargetResult` document).

    The person's write is shared by every event merged into it; what differs per event is
    which of its own fields were refused or older than the record's state.
    """
    status: str = written.status
    error = written.error
    older = written.older.get(index)
    # A field this event's choice was older for was written (or refused) with another
    # event's value: its refusal is that event's.
    refused_here = (
        {f: e for f, e in written.refused.items() if f in mine and not (older and f in older)}
        if written.refused
        else {}
    )
    if status not in ("failed", "not_found"):
        if refused_here:
            applied = sorted(set(mine) - set(refused_here) - set(older or ()))
            status = "partial" if applied else "failed"
            error = None if applied else next(iter(refused_here.values()))
        elif index in written.stale_indexes and not (
            written.undone and written.undone.get(index, set()) & written.written
        ):
            status = "stale"
    doc: dict[str, Any] = {
        "sobject": sobject,
        "status": status,
        "record_ids": list(written.record_ids),
    }
    if written.note is not None:
        doc["note"] = written.note
    if error is not None:
        doc["error"] = _error(error)
    doc["merged_events"] = merged
    if refused_here:
        doc["fields_written"] = sorted(set(mine) - set(refused_here) - set(older or ()))
        doc["fields_refused"] = [
            {
                "field": f,
                "code": clip(e.code, MAX_CODE_CHARS),
                "message": clip(e.message, MAX_REASON_CHARS),
            }
            for f, e in sorted(refused_here.items())
        ]
    if older:
        doc["fields_skipped_older"] = list(older)
    return doc


def _key(doc: OutcomeDoc, message: InputMessage) -> bytes | None:
    """The outcome's Kafka key: its person (as clipped in the outcome), else the input's key.

    Either comes from the producer, so its length is bounded too.
    """
    person = doc.get("organization_user_id")
    key: bytes | None = person.encode() if person else message.key
    return None if key is None else clip_bytes(key, MAX_KEY_BYTES)


def _dead_letter(
    message: InputMessage, error_class: str, reason: str, event_id: str | None, now: datetime
) -> DeadLetter:
    first_seen = now
    earlier = message.header(FIRST_SEEN_HEADER)
    if earlier is not None:
        try:
            first_seen = datetime.fromisoformat(earlier.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            first_seen = now
    return DeadLetter(
        error_class=error_class,
        reason=reason,
        source_topic=message.topic,
        source_partition=message.partition,
        source_offset=message.offset,
        first_seen=first_seen,
        origin=message.origin().encode().decode(),
        event_id=event_id,
    )
