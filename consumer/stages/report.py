"""Report stage: one outcome per input message, and the dead letters of a batch.

Pure: takes the batch's messages, their parse results, the merged people and the write
results, and says what to publish. Every input message gets exactly one outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from consumer.mapping import TargetPlan
from consumer.model.changes import (
    Accepted,
    Ignored,
    ParseResult,
    PersonResult,
    PersonWrite,
    Rejected,
)
from consumer.model.messages import FIRST_SEEN_HEADER, InputMessage
from consumer.model.outcomes import (
    MAX_KEY_BYTES,
    DeadLetter,
    FieldRefusal,
    Outcome,
    SourcePosition,
    TargetResult,
    TargetStatus,
    clip_bytes,
    overall_status,
)

#: The error class of an event some of whose fields were refused (the others were written).
FIELD_REJECTED = "FIELD_REJECTED"


@dataclass(frozen=True)
class Publication:
    """One outcome to publish, with its Kafka key."""

    key: bytes | None
    outcome: Outcome


@dataclass(frozen=True)
class DeadLetterOut:
    """One message to send to the dead-letter topic."""

    message: InputMessage
    info: DeadLetter


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
    for index, (message, result) in enumerate(zip(messages, parsed, strict=True)):
        source = SourcePosition(
            topic=message.topic, partition=message.partition, offset=message.offset
        )
        if isinstance(result, Rejected):
            outcome = Outcome(
                status="rejected",
                reason=result.reason,
                error_class=result.error_class,
                event_id=result.event_id,
                event_type=result.event_type,
                organization_user_id=result.organization_user_id,
                source=source,
                processed_at=now,
            )
            dead.append(
                DeadLetterOut(
                    message,
                    _dead_letter(message, result.error_class, result.reason, result.event_id, now),
                )
            )
            outcomes.append(Publication(_key(outcome, message), outcome))
            continue
        if isinstance(result, Ignored):
            outcome = Outcome(
                status="ignored",
                reason=result.reason,
                event_id=result.event_id,
                event_type=result.event_type,
                organization_user_id=result.organization_user_id,
                source=source,
                event_time=result.event_time,
                processed_at=now,
            )
            outcomes.append(Publication(_key(outcome, message), outcome))
            continue
        assert isinstance(result, Accepted)
        change = result.change
        person = people[change.email_key]
        step = steps.get(index)
        targets: list[TargetResult] = []
        for plan in plans:
            if plan.sobject not in person.fields:
                continue
            written = results.get(plan.sobject, {}).get(change.email_key)
            if written is None:
                continue
            mine = set(step.fields.get(plan.sobject, {})) if step is not None else set()
            targets.append(_target(plan.sobject, written, index, mine, len(person.indexes)))
        status = overall_status(targets)
        reason = None
        error_class = None
        if not targets:
            reason = "the event carries no choice that the mapping writes to any target"
        refused = [t for t in targets if t.fields_refused]
        failed = [t for t in targets if t.status == "failed" and not t.fields_refused]
        if failed and failed[0].error is not None:
            error_class = failed[0].error.code
            reason = f"{failed[0].sobject}: {failed[0].error.code}: {failed[0].error.message}"
        elif refused:
            # Fields Salesforce refused (or describe says it would): the rest was written.
            # Dead-lettered so an operator can fix the field and redrive the event.
            error_class = FIELD_REJECTED
            reason = "; ".join(
                f"{t.sobject}.{r.field}: {r.code}: {r.message}"
                for t in refused
                for r in t.fields_refused or ()
            )
        if error_class is not None and reason is not None:
            dead.append(
                DeadLetterOut(
                    message, _dead_letter(message, error_class, reason, change.event_id, now)
                )
            )
        outcome = Outcome(
            status=status,
            reason=reason,
            error_class=error_class,
            event_id=change.event_id,
            event_type=change.event_type,
            organization_user_id=change.organization_user_id,
            targets=targets,
            source=source,
            event_time=change.event_time,
            processed_at=now,
        )
        outcomes.append(Publication(_key(outcome, message), outcome))
    return outcomes, dead


def _target(
    sobject: str, written: PersonResult, index: int, mine: set[str], merged: int
) -> TargetResult:
    """What one event's fields came to on one target.

    The person's write is shared by every event merged into it; what differs per event is
    which of its own fields were refused or older than the record's state.
    """
    status: TargetStatus = written.status
    error = written.error
    older = written.older.get(index, [])
    refused_here = {f: e for f, e in written.refused.items() if f in mine}
    applied = sorted(mine - set(refused_here) - set(older))
    if status not in ("failed", "not_found"):
        if refused_here:
            status = "partial" if applied else "failed"
            error = None if applied else next(iter(refused_here.values()))
        elif index in written.stale_indexes:
            status = "stale"
    return TargetResult(
        sobject=sobject,
        status=status,
        record_ids=list(written.record_ids),
        note=written.note,
        error=error,
        merged_events=merged,
        fields_written=applied if refused_here else None,
        fields_refused=[
            FieldRefusal(field=f, code=e.code, message=e.message)
            for f, e in sorted(refused_here.items())
        ]
        or None,
        fields_skipped_older=list(older) or None,
    )


def _key(outcome: Outcome, message: InputMessage) -> bytes | None:
    """The outcome's Kafka key: its person (as clipped in the outcome), else the input's key.

    Either comes from the producer, so its length is bounded too.
    """
    if outcome.organization_user_id:
        key: bytes | None = outcome.organization_user_id.encode()
    else:
        key = message.key
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
        event_id=event_id,
    )
