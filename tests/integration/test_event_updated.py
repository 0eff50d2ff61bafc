"""``event.updated``: the event keeps its place in Didomi's order (its creation), and only
what the update changed is applied.

Didomi: an event carries the choices made in that event; a ``pending_approval`` event is
applied once approved, and "events are re-applied in order of their dates". An update of an
older event (its approval, a proof attached) must not move its choices after the person's
later choices made in other events (review finding: it re-asserted every choice of the event
at its ``updated_at``, a wrong true over a newer withdrawal).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from consumer.model import sync_state
from consumer.model.changes import Stamp, epoch_ms
from tests.integration.support import example_mapping, make_emulator
from tests.integration.test_consent_order import running
from tests.integration.test_recent_choices import EMAIL, deliver, event, form_contact, target
from tests.integration.test_redrive_order import iso
from tests.unit.helpers import T0

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


def entity(
    event_id: str, created: int, updated: int, status: str, *purposes: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": event_id,
        "created_at": iso(T0 + timedelta(minutes=created)),
        "updated_at": iso(T0 + timedelta(minutes=updated)),
        "status": status,
        "user": {"organization_user_id": EMAIL},
        "consents": {"purposes": list(purposes)},
        "proofs_id": [] if updated == created else ["proof-1"],
    }


def created(version: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "event.created", "parameters": {"entity": version}})


def updated(old: dict[str, Any] | None, new: dict[str, Any]) -> bytes:
    params: dict[str, Any] = {"source": {"id": new["id"]}, "new_entity": new}
    if old is not None:
        params["old_entity"] = old
    return orjson.dumps({"type": "event.updated", "parameters": params})


GRANT = {"id": "newsletter", "enabled": True}
WITHDRAWAL = {"id": "newsletter", "enabled": False}


@pytest.mark.parametrize("first_status", ["confirmed", "pending_approval"])
@pytest.mark.parametrize("with_old", [True, False], ids=["old-entity", "no-old-entity"])
async def test_an_update_of_an_older_event_does_not_undo_a_newer_withdrawal(
    first_status: str, with_old: bool
) -> None:
    # Minute 0: event E grants the newsletter (confirmed, or pending approval: ignored).
    # Minute 5: event F withdraws it. Minute 10: E is updated (a proof attached, or its
    # approval): its newsletter choice is still E's, of minute 0, older than F's.
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, first_status, GRANT)
            await deliver(run, created(first))
            withdrawal = await deliver(run, event("F", 5, WITHDRAWAL))
            assert target(withdrawal, "Contact")["status"] == "updated", withdrawal
            update = await deliver(
                run, updated(first if with_old else None, entity("E", 0, 10, "confirmed", GRANT))
            )
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (update, record)
    assert update["event_time"].startswith(iso(T0)[:19]), update


async def test_an_approval_applies_the_event() -> None:
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            pending = entity("E", 0, 0, "pending_approval", GRANT)
            assert (await deliver(run, created(pending)))["status"] == "ignored"
            approved = await deliver(run, updated(pending, entity("E", 0, 10, "confirmed", GRANT)))
        record = emulator.get("Contact", contact)
    assert target(approved, "Contact")["status"] == "updated", approved
    assert record is not None and record["Newsletter_Consent__c"] is True


async def test_an_edit_applies_what_it_changed() -> None:
    # E granted the newsletter and analytics; an edit withdraws the newsletter and leaves
    # analytics as it was. A withdrawal of analytics in a later event (F) is not undone by
    # the edit, which does not change analytics.
    analytics_on = {"id": "analytics", "enabled": True}
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", GRANT, analytics_on)
            await deliver(run, created(first))
            await deliver(run, event("F", 5, {"id": "analytics", "enabled": False}))
            edit = await deliver(
                run, updated(first, entity("E", 0, 10, "confirmed", WITHDRAWAL, analytics_on))
            )
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (edit, record)
    assert record["Analytics_Consent__c"] is False, (edit, record)


async def test_a_late_retry_of_the_first_version_does_not_undo_an_edits_withdrawal() -> None:
    # Review finding: E's creation is retried by Didomi after E was edited to withdraw; the
    # edit is read first. Both versions dated by E's creation, the later read won: a wrong
    # true. A later version sorts after the first one in its millisecond.
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", GRANT)
            edit = await deliver(run, updated(first, entity("E", 0, 10, "confirmed", WITHDRAWAL)))
            assert target(edit, "Contact")["status"] == "updated", edit
            retry = await deliver(run, created(first))
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (retry, record)
    assert target(retry, "Contact")["status"] == "stale", retry


def at_ms(event_id: str, ms: int, *purposes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "created_at": iso(T0 + timedelta(milliseconds=ms)),
        "user": {"organization_user_id": EMAIL},
        "consents": {"purposes": list(purposes)},
        **extra,
    }


async def test_an_approval_does_not_beat_a_withdrawal_made_the_next_millisecond() -> None:
    # Review finding: a later version dated a millisecond after its creation took the next
    # millisecond's place, and beat a withdrawal made there (a wrong true). It now sorts
    # after the first version within its own millisecond only.
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            pending = at_ms("E", 0, GRANT, status="pending_approval")
            assert (await deliver(run, created(pending)))["status"] == "ignored"
            withdrawal = await deliver(run, created(at_ms("F", 1, WITHDRAWAL)))
            assert target(withdrawal, "Contact")["status"] == "updated", withdrawal
            approved = {
                **pending,
                "status": "confirmed",
                "updated_at": iso(T0 + timedelta(minutes=10)),
            }
            approval = await deliver(run, updated(pending, approved))
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (approval, record)


@pytest.mark.parametrize("deleted_updated_at", ["absent", "null", "created_at"])
async def test_a_deletion_undoes_what_an_edit_of_the_event_granted(deleted_updated_at: str) -> None:
    # Review finding: a deletion dated by the event's creation sorted before an edit dated a
    # millisecond after it, so it withdrew nothing the edit granted (a wrong true).
    mapping = example_mapping().model_copy(update={"on_event_deleted": "withdraw"})
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, mapping) as run:
            first = entity("E", 0, 0, "confirmed", WITHDRAWAL)
            await deliver(run, created(first))
            edit = await deliver(run, updated(first, entity("E", 0, 10, "confirmed", GRANT)))
            assert target(edit, "Contact")["status"] == "updated", edit
            gone = entity("E", 0, 10, "confirmed", GRANT)
            if deleted_updated_at == "absent":
                del gone["updated_at"]
            elif deleted_updated_at == "null":
                gone["updated_at"] = None
            else:
                gone["updated_at"] = gone["created_at"]
            deletion = await deliver(
                run, orjson.dumps({"type": "event.deleted", "parameters": {"entity": gone}})
            )
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (deletion, record)


async def test_two_edits_of_one_event_are_ordered_by_their_updated_at() -> None:
    # A later edit (minute 20, withdrawing) read before an earlier one (minute 10, granting):
    # the later edit stands.
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", WITHDRAWAL)
            await deliver(run, created(first))
            second = entity("E", 0, 10, "confirmed", GRANT)
            third = entity("E", 0, 20, "confirmed", WITHDRAWAL)
            await deliver(run, updated(second, third))
            late = await deliver(run, updated(first, second))
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (late, record)


@pytest.mark.parametrize(
    "ahead", [timedelta(days=1), timedelta(days=365 * 300)], ids=["1d", "300y"]
)
async def test_a_version_dated_in_the_future_is_rejected_and_outranks_nothing(
    ahead: timedelta,
) -> None:
    # Review finding: a version's updated_at orders it among the event's versions, and it was
    # not bounded like event times: a version dated ahead (a clock gone wrong) outranked
    # every later real edit for good (a withdrawal among them: a wrong true).
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", WITHDRAWAL)
            await deliver(run, created(first))
            skewed = {
                **entity("E", 0, 10, "confirmed", GRANT),
                "updated_at": iso(datetime.now(UTC) + ahead),
            }
            bad = await deliver(run, updated(first, skewed))
            edit = await deliver(run, updated(skewed, entity("E", 0, 20, "confirmed", WITHDRAWAL)))
        record = emulator.get("Contact", contact)
    assert bad["status"] == "rejected", bad
    assert bad["error_class"] in ("EVENT_TIME_IN_FUTURE", "EVENT_TIME_OUT_OF_RANGE"), bad
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (edit, record)


async def test_two_versions_of_one_millisecond_the_later_written_stands() -> None:
    # Review finding: two versions edited in the same millisecond carry equal stamps; the
    # second, in a later batch, was stale against the first (a wrong true). Within a batch
    # the later read wins; across batches now too.
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", WITHDRAWAL)
            await deliver(run, created(first))
            grant = entity("E", 0, 10, "confirmed", GRANT)
            await deliver(run, updated(first, grant))
            withdraw = entity("E", 0, 10, "confirmed", WITHDRAWAL)
            last = await deliver(run, updated(grant, withdraw))
            again = await deliver(run, updated(grant, withdraw))  # a Didomi retry
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (last, record)
    assert target(again, "Contact")["status"] in ("stale", "unchanged"), again


async def test_an_edit_after_the_upgrade_is_newer_than_a_version_stamped_before_it() -> None:
    # Review finding: a record written by a release that dated versions by their
    # updated_at holds E's approval stamped at minute 10; a later edit of E withdrawing
    # (minute 20) is stamped by E's creation (minute 0) now, and was stale there (a lost
    # withdrawal).
    approved_at = epoch_ms(T0 + timedelta(minutes=10))
    async with make_emulator() as emulator:
        contact = emulator.seed(
            "Contact",
            {
                "Email": EMAIL,
                "LastName": "Form",
                "Newsletter_Consent__c": True,
                "Didomi_Sync_State__c": sync_state.encode(
                    {"Newsletter_Consent__c": Stamp(approved_at, 0, 5, "E")}
                ),
            },
        )
        async with running(emulator, example_mapping()) as run:
            approved = entity("E", 0, 10, "confirmed", GRANT)
            edit = await deliver(
                run, updated(approved, entity("E", 0, 20, "confirmed", WITHDRAWAL))
            )
            # An earlier version of E (minute 5), delivered late: older than the record's.
            earlier = updated(
                entity("E", 0, 0, "confirmed", WITHDRAWAL), entity("E", 0, 5, "confirmed", GRANT)
            )
            retry = await deliver(run, earlier)
        record = emulator.get("Contact", contact)
    assert target(edit, "Contact")["status"] == "updated", edit
    assert target(retry, "Contact")["status"] == "stale", retry
    assert record is not None
    assert record["Newsletter_Consent__c"] is False, (edit, record)


async def test_an_edit_that_drops_a_grant_withdraws_it() -> None:
    # Review finding: E granted the newsletter and analytics; an edit grants the newsletter
    # only. Nothing the person still chooses gives analytics: it was left standing (a wrong
    # true). What an earlier version granted and the new one no longer mentions is withdrawn.
    analytics_on = {"id": "analytics", "enabled": True}
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", GRANT, analytics_on)
            await deliver(run, created(first))
            edit = await deliver(run, updated(first, entity("E", 0, 10, "confirmed", GRANT)))
            # A later grant of analytics in another event still wins over the withdrawal.
            later = await deliver(run, event("F", 5, analytics_on))
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is True, (edit, record)
    assert record["Analytics_Consent__c"] is True, (later, record)
    assert target(edit, "Contact")["status"] == "updated", edit


async def test_an_edit_that_drops_a_grant_alone_leaves_no_consent() -> None:
    analytics_on = {"id": "analytics", "enabled": True}
    async with make_emulator() as emulator:
        contact = form_contact(emulator)
        async with running(emulator, example_mapping()) as run:
            first = entity("E", 0, 0, "confirmed", GRANT, analytics_on)
            await deliver(run, created(first))
            edit = await deliver(run, updated(first, entity("E", 0, 10, "confirmed", GRANT)))
        record = emulator.get("Contact", contact)
    assert record is not None
    assert record["Newsletter_Consent__c"] is True, (edit, record)
    assert record["Analytics_Consent__c"] is False, (edit, record)
