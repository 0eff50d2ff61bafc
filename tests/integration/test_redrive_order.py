"""A redriven event sorts and is dated where it was first read, not where the redrive put it.

A redrive re-publishes a dead letter as a new record: a new offset, a new timestamp. The
event's stamp orders two choices of one millisecond by (partition, offset), and a
``user.deleted`` without ``updated_at`` is dated by its record: read from the new record, a
redriven grant would win a tie against the withdrawal read after it (a wrong true), and a
redriven deletion would withdraw a choice made after it (a wrong false). Dead letters carry
``x-dlq-origin`` and the redrive keeps it.

Pipeline over in-memory Kafka (tests/unit/fakes.py), writer over HTTP against the emulator;
the dead letter is the one the service published, re-published with the redrive's headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from consumer.devkit.emulator import SalesforceEmulator
from consumer.model.changes import epoch_ms
from consumer.ops.redrive import redriven_headers
from tests.integration.scenario import T0
from tests.integration.support import example_mapping, make_emulator
from tests.integration.test_consent_order import Run, running
from tests.unit.fakes import Sent

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

EMAIL = "ada@example.com"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def choice(event_id: str, at: datetime, newsletter: bool) -> bytes:
    entity = {
        "id": event_id,
        "created_at": iso(at),
        "user": {"organization_user_id": EMAIL},
        "consents": {"purposes": [{"id": "newsletter", "enabled": newsletter}]},
    }
    return orjson.dumps({"type": "event.created", "parameters": {"entity": entity}})


@asynccontextmanager
async def pipeline() -> AsyncIterator[tuple[SalesforceEmulator, Run, str]]:
    """A running pipeline (``on_user_deleted: withdraw``) and EMAIL's Contact id."""
    async with make_emulator() as emulator:
        contact = emulator.seed("Contact", {"Email": EMAIL, "LastName": "A"})
        mapping = example_mapping().model_copy(update={"on_user_deleted": "withdraw"})
        async with running(emulator, mapping) as run:
            yield emulator, run, contact


def refuse_next_newsletter(emulator: SalesforceEmulator) -> None:
    emulator.inject_record_error(
        "update",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Consent changes need a reason",
        fields=["Newsletter_Consent__c"],
        email=EMAIL,
    )


async def feed(
    run: Run, value: bytes, at_ms: int, headers: list[tuple[str, bytes]], email: str = EMAIL
) -> None:
    """Append one record to partition 0 and wait for its outcome."""
    before = len(run.outcomes())
    run.consumer.append(0, value, email.encode(), timestamp=at_ms, headers=headers)
    await run.until(lambda: len(run.outcomes()) > before, "its outcome")


def redriven(dead: Sent) -> list[tuple[str, bytes]]:
    return redriven_headers(dead.headers, "dlq/0/0", datetime.now(UTC))


def newsletter(emulator: SalesforceEmulator, contact: str) -> object:
    record = emulator.get("Contact", contact)
    assert record is not None
    return record["Newsletter_Consent__c"]


async def test_a_redriven_grant_loses_the_tie_it_lost_when_first_read() -> None:
    # A grant and a withdrawal made in the same millisecond; the grant was read first. A
    # validation rule refused the grant (dead-lettered); the withdrawal was written. Once
    # the rule is fixed, the grant is redriven: read from its new offset it would come
    # after the withdrawal and write consent.
    same = T0 + timedelta(seconds=5)
    async with pipeline() as (emulator, run, contact):
        refuse_next_newsletter(emulator)
        await feed(run, choice("g", same, True), epoch_ms(same), [])
        await feed(run, choice("w", same, False), epoch_ms(same), [])
        assert newsletter(emulator, contact) is False
        (dead,) = run.producer.topics["dlq"]
        assert dict(dead.headers)["x-dlq-origin"] == f"0/0/{epoch_ms(same)}".encode()
        await feed(run, dead.value or b"", epoch_ms(same) + 60_000, redriven(dead))
        outcome = run.outcomes()[-1]
        assert newsletter(emulator, contact) is False
    assert outcome["status"] == "stale", outcome


async def test_a_redriven_deletion_is_dated_by_its_first_read() -> None:
    # A user.deleted without updated_at is dated by its Kafka record. A validation rule
    # refused it (dead-lettered); the person then granted again. The redriven deletion is a new
    # record, newer than the grant: dated by it, it would withdraw the later choice.
    deleted_at = T0 + timedelta(seconds=5)
    user = {"id": "u", "organization_user_id": EMAIL, "created_at": iso(T0)}
    deletion = orjson.dumps({"type": "user.deleted", "parameters": {"entity": user}})
    async with pipeline() as (emulator, run, contact):
        refuse_next_newsletter(emulator)
        await feed(run, deletion, epoch_ms(deleted_at), [])
        grant_at = deleted_at + timedelta(seconds=30)
        await feed(run, choice("g", grant_at, True), epoch_ms(grant_at), [])
        assert newsletter(emulator, contact) is True
        (dead,) = run.producer.topics["dlq"]
        await feed(run, dead.value or b"", epoch_ms(grant_at) + 60_000, redriven(dead))
        outcome = run.outcomes()[-1]
        assert newsletter(emulator, contact) is True
    # Its other withdrawals (never written: the whole record was refused) are written now.
    (written,) = [t for t in outcome["targets"] if t["sobject"] == "Contact"]
    assert written["status"] == "updated", outcome
    assert written["fields_skipped_older"] == ["Newsletter_Consent__c"], outcome


@pytest.mark.parametrize(
    "origin", [b"0/0/", b"0/0/0", b"0/0/9999999999999"], ids=["undated", "zero", "later"]
)
async def test_an_origin_header_cannot_lift_the_future_time_check(origin: bytes) -> None:
    # A grant dated a year after its record, carrying a made-up origin (as a producer could
    # send it, with the redrive's own header too): still rejected as from the future.
    now = datetime.now(UTC)
    headers = [("x-dlq-origin", origin), ("x-redriven-from", b"dlq/0/0")]
    async with pipeline() as (emulator, run, contact):
        await feed(run, choice("f", now + timedelta(days=365), True), epoch_ms(now), headers)
        outcome = run.outcomes()[-1]
        assert newsletter(emulator, contact) is not True
    assert outcome["status"] == "rejected" and outcome["error_class"] == "EVENT_TIME_IN_FUTURE"
