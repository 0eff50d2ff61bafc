"""Consent stays right with real delivery and real orgs, on the real broker and the emulator:
late events, future dates, a bad value beside a withdrawal, users sharing an id, converted
Leads, duplicate rules, mis-cased field names and a token answer pointing elsewhere."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from consumer.mapping import parse_mapping
from consumer.settings import Settings
from tests.integration.support import (
    EXAMPLE_MAPPING,
    Topics,
    collect,
    make_emulator,
    make_topics,
    produce,
    running_service,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

EXAMPLE = (EXAMPLE_MAPPING).read_text(encoding="utf-8")


def event(
    event_id: str, email: str, when: str, *purposes: dict[str, Any], **entity: Any
) -> tuple[bytes, bytes]:
    body = {
        "id": event_id,
        "created_at": when,
        "user": {"organization_user_id": email},
        "consents": {"purposes": list(purposes)},
        **entity,
    }
    return email.lower().encode(), orjson.dumps(
        {"type": "event.created", "parameters": {"entity": body}}
    )


def newsletter(enabled: bool | None = None, **values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "newsletter"}
    if enabled is not None:
        out["enabled"] = enabled
    if values:
        out["values"] = {k: {"value": v} for k, v in values.items()}
    return out


def analytics(enabled: bool) -> dict[str, Any]:
    return {"id": "analytics", "enabled": enabled}


async def fresh(bootstrap: str) -> Topics:
    topics = Topics.fresh()
    await make_topics(bootstrap, topics, 1)
    return topics


def by_event(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(o["event_id"]): o for o in records}


def contact_of(outcome: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in outcome["targets"] if t["sobject"] == "Contact")


async def test_late_events_lose_only_the_fields_they_are_older_for(kafka_bootstrap: str) -> None:
    email = "late@example.com"
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed("Contact", {"Email": email, "LastName": "L"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url, sync_batch_linger_ms=20)
        # Each event arrives after the previous one was written: separate batches, arrival
        # order unrelated to event time (Didomi retries for minutes and keeps no order).
        steps = [
            event("a", email, "2026-11-22T10:05:00Z", analytics(True)),
            # The newsletter withdrawal from 10:00 is the latest word on newsletter: applied,
            # although the record was written later (10:05) for another field.
            event("b", email, "2026-11-22T10:00:00Z", newsletter(False)),
            # Older than both on every field it mentions: stale, nothing written.
            event("c", email, "2026-11-22T09:59:00Z", newsletter(True), analytics(False)),
            # Older for analytics, the first word on frequency: applied for frequency only.
            event(
                "d", email, "2026-11-22T09:58:00Z", analytics(False), newsletter(frequency="weekly")
            ),
        ]
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            for n, step in enumerate(steps, 1):
                await produce(kafka_bootstrap, topics.input, [step])
                await wait_for(lambda n=n: len(results.records) >= n, 30, f"outcome {n}")
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
        assert record is not None
        assert record["Newsletter_Consent__c"] is False
        assert record["Analytics_Consent__c"] is True
        assert record["Newsletter_Frequency__c"] == "weekly"
    out = by_event(results.values())
    assert out["a"]["status"] == "updated"
    assert out["b"]["status"] == "updated"
    assert out["c"]["status"] == "stale"
    assert contact_of(out["c"])["fields_skipped_older"] == [
        "Analytics_Consent__c",
        "Newsletter_Consent__c",
    ]
    assert out["d"]["status"] == "updated"
    assert contact_of(out["d"])["fields_skipped_older"] == ["Analytics_Consent__c"]


async def test_a_future_dated_event_is_rejected_and_later_choices_still_apply(
    kafka_bootstrap: str,
) -> None:
    email = "future@example.com"
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed("Contact", {"Email": email, "LastName": "F"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        messages = [
            event("from-2206", email, "2206-01-01T00:00:00Z", newsletter(True)),
            event("real", email, "2026-11-22T10:00:00Z", newsletter(False)),
        ]
        await produce(kafka_bootstrap, topics.input, messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 2, 30, "outcomes")
            await wait_for(lambda: len(dlq.records) >= 1, 30, "the dead letter")
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
        assert record is not None and record["Newsletter_Consent__c"] is False
    out = by_event(results.values())
    assert out["from-2206"]["status"] == "rejected"
    assert out["from-2206"]["error_class"] == "EVENT_TIME_IN_FUTURE"
    assert "SYNC_MAX_FUTURE_SKEW_SECONDS" in out["from-2206"]["reason"]
    assert out["real"]["status"] == "updated"
    assert dict(dlq.records[0].headers)["x-dlq-error-class"] == b"EVENT_TIME_IN_FUTURE"


async def test_a_bad_preference_value_never_blocks_the_withdrawal_beside_it(
    kafka_bootstrap: str,
) -> None:
    email = "withdraw@example.com"
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed(
            "Contact",
            {"Email": email, "LastName": "W", "Newsletter_Consent__c": True},
        )
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        # Newsletter_Frequency__c holds 40 characters; "unheard_of" is not a value of the
        # restricted Newsletter_Topics__c picklist.
        bad = newsletter(False, frequency="f" * 100, topics="unheard_of")
        await produce(
            kafka_bootstrap, topics.input, [event("w", email, "2026-11-22T10:00:00Z", bad)]
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 1 and len(dlq.records) >= 1, 30, "it")
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
        assert record is not None
        assert record["Newsletter_Consent__c"] is False  # the withdrawal is applied
        assert record["Topic_Offers__c"] is False
        assert record["Newsletter_Frequency__c"] is None
        assert record["Newsletter_Topics__c"] is None
    (outcome,) = results.values()
    assert outcome["status"] == "partial"
    assert outcome["error_class"] == "FIELD_REJECTED"
    contact = contact_of(outcome)
    assert contact["status"] == "partial"
    assert "Newsletter_Consent__c" in contact["fields_written"]
    refused = {r["field"]: r["code"] for r in contact["fields_refused"]}
    assert refused == {
        "Newsletter_Frequency__c": "STRING_TOO_LONG",
        "Newsletter_Topics__c": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
    }
    headers = dict(dlq.records[0].headers)
    assert headers["x-dlq-error-class"] == b"FIELD_REJECTED"
    assert b"Newsletter_Frequency__c" in headers["x-dlq-reason"]
    assert dlq.records[0].value == event("w", email, "2026-11-22T10:00:00Z", bad)[1]


async def test_a_field_gone_while_running_never_blocks_the_withdrawal_beside_it(
    kafka_bootstrap: str,
) -> None:
    # The org loses Newsletter_Frequency__c after the service started (deleted, or taken out
    # of the integration user's field-level security): queries and writes naming it fail
    # whole. The withdrawal beside it is written; the frequency is refused and dead-lettered.
    email = "gone@example.com"
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed(
            "Contact", {"Email": email, "LastName": "G", "Newsletter_Consent__c": True}
        )
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        first = event("first", "first@example.com", "2026-11-22T09:00:00Z", newsletter(True))
        withdraw = event("w", email, "2026-11-22T10:00:00Z", newsletter(False, frequency="daily"))
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await produce(kafka_bootstrap, topics.input, [first])
            await wait_for(lambda: len(results.records) >= 1, 30, "the first outcome")
            emulator.hide_field("Contact", "Newsletter_Frequency__c")
            await produce(kafka_bootstrap, topics.input, [withdraw])
            await wait_for(lambda: len(results.records) >= 2 and len(dlq.records) >= 1, 30, "it")
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
        assert record is not None
        assert record["Newsletter_Consent__c"] is False
    outcome = by_event(results.values())["w"]
    assert outcome["status"] == "partial"
    assert outcome["error_class"] == "FIELD_REJECTED"
    contact = contact_of(outcome)
    assert "Newsletter_Consent__c" in contact["fields_written"]
    assert [(r["field"], r["code"]) for r in contact["fields_refused"]] == [
        ("Newsletter_Frequency__c", "INVALID_FIELD")
    ]
    (dead,) = dlq.records
    assert dict(dead.headers)["x-dlq-error-class"] == b"FIELD_REJECTED"
    assert dead.value == withdraw[1]


def user_deleted(email: str, when: str) -> tuple[bytes, bytes]:
    entity = {
        "id": f"user-of-{email}",
        "organization_id": "acme",
        "organization_user_id": email,
        "created_at": "2026-10-01T08:00:00Z",
        "updated_at": when,
    }
    return email.lower().encode(), orjson.dumps(
        {"type": "user.deleted", "parameters": {"entity": entity}}
    )


async def test_a_deleted_user_is_withdrawn_and_only_a_later_choice_grants_again(
    kafka_bootstrap: str,
) -> None:
    # on_user_deleted: withdraw. The person was subscribed; Didomi deletes the user at 12:00.
    # An older grant delivered late must not undo the deletion; a choice made after it does.
    email = "erased@example.com"
    mapping = parse_mapping(EXAMPLE + "on_user_deleted: withdraw\n")
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed(
            "Contact",
            {
                "Email": email,
                "LastName": "E",
                "Newsletter_Consent__c": True,
                "Analytics_Consent__c": True,
                "Newsletter_Topics__c": "offers",
                "Topic_Offers__c": True,
                "Newsletter_Frequency__c": "daily",
            },
        )
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        arrivals = [
            user_deleted(email, "2026-11-25T12:00:00Z"),
            event("late", email, "2026-11-25T11:00:00Z", newsletter(True, topics="offers")),
            event("after", email, "2026-11-25T13:00:00Z", analytics(True)),
        ]
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings, mapping) as running,
        ):
            withdrawn = None
            for n, message in enumerate(arrivals, 1):
                await produce(kafka_bootstrap, topics.input, [message])
                await wait_for(lambda n=n: len(results.records) >= n, 30, f"outcome {n}")
                withdrawn = withdrawn or emulator.get("Contact", record_id)
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
    assert withdrawn is not None and record is not None
    for field in ("Newsletter_Consent__c", "Analytics_Consent__c", "Topic_Offers__c"):
        assert withdrawn[field] is False, field
    assert withdrawn["Newsletter_Topics__c"] is None
    assert withdrawn["Newsletter_Frequency__c"] is None
    assert record["Newsletter_Consent__c"] is False  # the late grant stays undone
    assert record["Analytics_Consent__c"] is True  # chosen after the deletion
    out = by_event(results.values())
    assert contact_of(out["user-of-" + email])["status"] == "updated"
    assert out["late"]["status"] == "stale"
    assert contact_of(out["after"])["status"] == "updated"


def user_updated(
    didomi_id: str, email: str, when: str, old: list[dict[str, Any]], new: list[dict[str, Any]]
) -> tuple[bytes, bytes]:
    def user(purposes: list[dict[str, Any]], at: str) -> dict[str, Any]:
        return {
            "id": didomi_id,
            "organization_user_id": email,
            "created_at": "2026-10-01T00:00:00Z",
            "updated_at": at,
            "consents": {"purposes": purposes},
        }

    doc = {
        "type": "user.updated",
        "parameters": {
            "source": {"id": f"src-{didomi_id}-{when}", "created_at": when},
            "old_entity": user(old, "2026-11-01T00:00:00Z"),
            "new_entity": user(new, when),
        },
    }
    return email.lower().encode(), orjson.dumps(doc)


async def test_a_user_aggregate_does_not_reassert_choices_it_did_not_change(
    kafka_bootstrap: str,
) -> None:
    email = "shared@example.com"  # two Didomi users share this organization_user_id
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed("Contact", {"Email": email, "LastName": "S"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        messages = [
            # User B withdraws at 10:05.
            event("b-withdraws", email, "2026-11-22T10:05:00Z", newsletter(False)),
            # User A, at 10:10, changes only analytics; its whole state still says
            # newsletter=true (A's own, older choice).
            user_updated(
                "user-a",
                email,
                "2026-11-22T10:10:00Z",
                old=[newsletter(True), analytics(False)],
                new=[newsletter(True), analytics(True)],
            ),
        ]
        await produce(kafka_bootstrap, topics.input, messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 2, 30, "outcomes")
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
        assert record is not None
        assert record["Newsletter_Consent__c"] is False  # B's withdrawal stands
        assert record["Analytics_Consent__c"] is True  # A's change applies


CONVERTING = """
regulations: [gdpr]
targets:
  - sobject: Lead
    upsert_mode: true
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    create_defaults: {LastName: "Unknown", Company: "Unknown"}
    purposes:
      newsletter: Newsletter_Consent__c
"""


async def test_converted_leads_are_never_written_nor_recreated(kafka_bootstrap: str) -> None:
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        converted = emulator.seed(
            "Lead", {"Email": "conv@example.com", "LastName": "C", "Company": "Co"}
        )
        contact_id = emulator.convert_lead(converted)
        old = emulator.seed("Lead", {"Email": "both@example.com", "LastName": "B", "Company": "Co"})
        emulator.convert_lead(old)
        live = emulator.seed(
            "Lead", {"Email": "both@example.com", "LastName": "B2", "Company": "Co"}
        )
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        messages = [
            event("conv", "conv@example.com", "2026-11-22T10:00:00Z", newsletter(False)),
            event("both", "both@example.com", "2026-11-22T10:00:00Z", newsletter(False)),
        ]
        await produce(kafka_bootstrap, topics.input, messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings, parse_mapping(CONVERTING)) as running,
        ):
            await wait_for(lambda: len(results.records) >= 2, 30, "outcomes")
            assert await running.finish() == 0
        assert len(emulator.find_by_email("Lead", "conv@example.com")) == 1  # none created
        live_lead = emulator.get("Lead", live)
        assert live_lead is not None and live_lead["Newsletter_Consent__c"] is False
        assert emulator.stats["create"] == 0
    out = by_event(results.values())
    conv = out["conv"]["targets"][0]
    assert conv["status"] == "not_found"
    assert contact_id in conv["note"]
    assert "converted" in conv["note"]
    assert out["both"]["status"] == "updated"
    assert out["both"]["targets"][0]["record_ids"] == [live]
    assert dlq.records == []  # a converted Lead is not an error to redrive


async def test_duplicate_rules_alert_saves_and_block_refuses(kafka_bootstrap: str) -> None:
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        # Both new people get LastName "Unknown" (create_defaults), like an existing Contact:
        # the org's rules match on it.
        existing = emulator.seed("Contact", {"Email": "someone@example.com", "LastName": "Unknown"})
        emulator.add_duplicate_rule("Contact", action="alert", match_field="LastName")
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        await produce(
            kafka_bootstrap,
            topics.input,
            [event("alert", "new1@example.com", "2026-11-22T10:00:00Z", newsletter(True))],
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 1, 30, "the alert outcome")
            emulator.clear_duplicate_rules()
            emulator.add_duplicate_rule("Contact", action="block", match_field="LastName")
            await produce(
                kafka_bootstrap,
                topics.input,
                [event("block", "new2@example.com", "2026-11-22T10:00:00Z", newsletter(True))],
            )
            await wait_for(lambda: len(results.records) >= 2, 30, "the block outcome")
            await wait_for(lambda: len(dlq.records) >= 1, 30, "the dead letter")
            assert await running.finish() == 0
        assert len(emulator.find_by_email("Contact", "new1@example.com")) == 1
        assert emulator.find_by_email("Contact", "new2@example.com") == []
    out = by_event(results.values())
    assert out["alert"]["status"] == "created"
    blocked = contact_of(out["block"])
    assert blocked["status"] == "failed"
    assert blocked["error"]["code"] == "DUPLICATES_DETECTED"
    assert existing in blocked["error"]["message"]
    assert dict(dlq.records[0].headers)["x-dlq-error-class"] == b"DUPLICATES_DETECTED"


async def test_an_alert_rule_blocks_when_allow_save_is_turned_off(kafka_bootstrap: str) -> None:
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        emulator.seed("Contact", {"Email": "someone@example.com", "LastName": "Unknown"})
        emulator.add_duplicate_rule("Contact", action="alert", match_field="LastName")
        settings = settings_for(
            kafka_bootstrap, topics, emulator.url, salesforce_duplicate_rule_allow_save=False
        )
        await produce(
            kafka_bootstrap,
            topics.input,
            [event("alert", "new1@example.com", "2026-11-22T10:00:00Z", newsletter(True))],
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 1, 30, "the outcome")
            assert await running.finish() == 0
    assert contact_of(results.values()[0])["error"]["code"] == "DUPLICATES_DETECTED"


async def test_mapping_names_in_another_case_resolve_to_describes_spelling(
    kafka_bootstrap: str,
) -> None:
    miscased = EXAMPLE.replace("match_field: Email", "match_field: email").replace(
        "newsletter: Newsletter_Consent__c", "newsletter: newsletter_consent__C"
    )
    mapping = parse_mapping(miscased)
    assert mapping.targets[0].match_field == "email"
    email = "Case@Example.com"
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        record_id = emulator.seed("Contact", {"Email": email, "LastName": "C"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        await produce(
            kafka_bootstrap,
            topics.input,
            [event("m", email, "2026-11-22T10:00:00Z", newsletter(False))],
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings, mapping) as running,
        ):
            await wait_for(lambda: len(results.records) >= 1, 30, "the outcome")
            assert await running.finish() == 0
        # Found and updated, not a new Contact (upsert_mode is on for Contact).
        assert len(emulator.records("Contact")) == 1
        record = emulator.get("Contact", record_id)
        assert record is not None and record["Newsletter_Consent__c"] is False
    assert contact_of(results.values()[0])["status"] == "updated"


@contextlib.asynccontextmanager
async def trap() -> AsyncIterator[tuple[str, list[str]]]:
    """A server that records every request it gets (it must get none)."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path} {request.headers.get('Authorization')}")
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_a_token_answer_pointing_elsewhere_gets_no_bearer_token(
    kafka_bootstrap: str,
) -> None:
    topics = await fresh(kafka_bootstrap)
    async with trap() as (elsewhere, seen), make_emulator() as emulator:
        emulator.set_instance_url(elsewhere)
        settings: Settings = settings_for(
            kafka_bootstrap, topics, emulator.url, salesforce_auth_retry_seconds=0.2
        )
        async with running_service(settings) as running:
            await wait_for(lambda: emulator.tokens_issued >= 2, 30, "a login tried twice")
            assert not running.service.health.salesforce_ok  # not ready
            assert await running.finish() == 0
    assert seen == []


async def test_people_whose_records_already_hold_everything_are_not_written(
    kafka_bootstrap: str,
) -> None:
    no_state = "".join(
        line.replace("sync_state_field: Didomi_Sync_State__c", "allow_late_overwrites: true")
        for line in EXAMPLE.splitlines(keepends=True)
    )
    mapping = parse_mapping(no_state)
    assert all(t.sync_state_field is None for t in mapping.targets)
    topics = await fresh(kafka_bootstrap)
    async with make_emulator() as emulator:
        same = emulator.seed(
            "Contact",
            {
                "Email": "same@example.com",
                "LastName": "S",
                "Newsletter_Consent__c": True,
                "Newsletter_Topics__c": "offers;product_news",
                "Topic_Product_News__c": True,
                "Topic_Offers__c": True,
            },
        )
        emulator.seed("Contact", {"Email": "differs@example.com", "LastName": "D"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        messages = [
            # Values the record holds already (topics in another order: a multipicklist is a set).
            event("same", "same@example.com", "2026-11-22T10:00:00Z", newsletter(True)),
            event(
                "same-topics",
                "same@example.com",
                "2026-11-22T10:00:01Z",
                newsletter(topics="product_news,offers"),
            ),
            event("differs", "differs@example.com", "2026-11-22T10:00:00Z", newsletter(True)),
        ]
        await produce(kafka_bootstrap, topics.input, messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings, mapping) as running,
        ):
            await wait_for(lambda: len(results.records) >= 3, 30, "outcomes")
            assert await running.finish() == 0
        updated_ids = [
            rid
            for o in results.values()
            for t in o["targets"]
            if t["sobject"] == "Contact" and t["status"] == "updated"
            for rid in t["record_ids"]
        ]
        assert same not in updated_ids
        assert emulator.stats["records_updated"] == 1  # only the Contact that differed
    out = by_event(results.values())
    assert contact_of(out["same"])["status"] == "unchanged"
    assert contact_of(out["same-topics"])["status"] == "unchanged"
    assert contact_of(out["differs"])["status"] == "updated"


WITHDRAWING = parse_mapping(EXAMPLE + "on_user_deleted: withdraw\non_event_deleted: withdraw\n")


def event_deleted(message: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """The ``event.deleted`` Didomi sends for the event of ``message``."""
    doc = orjson.loads(message[1])
    return message[0], orjson.dumps({"type": "event.deleted", "parameters": doc["parameters"]})


async def one_by_one(
    bootstrap: str, arrivals: list[tuple[bytes, bytes]], seed: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each message in its own batch, in this order, with the withdrawing mapping: the
    Contacts afterwards and the outcomes by event id."""
    topics = await fresh(bootstrap)
    async with make_emulator() as emulator:
        if seed is not None:
            emulator.seed("Contact", seed)
        settings = settings_for(bootstrap, topics, emulator.url)
        async with (
            collect(bootstrap, topics.results) as results,
            running_service(settings, WITHDRAWING) as running,
        ):
            for n, message in enumerate(arrivals, 1):
                await produce(bootstrap, topics.input, [message])
                await wait_for(lambda n=n: len(results.records) >= n, 30, f"outcome {n}")
            assert await running.finish() == 0
        return emulator.records("Contact"), by_event(results.values())


async def test_a_redelivered_grant_of_a_deleted_event_stays_withdrawn(
    kafka_bootstrap: str,
) -> None:
    # The deletion carries the grant's own millisecond; Didomi delivers the grant once more
    # after it (a later offset). The deletion wins the tie, in the batch and in the state.
    email = "r@example.com"
    grant = event("g", email, "2026-11-25T11:00:00Z", newsletter(True, topics="offers"))
    (record,), out = await one_by_one(
        kafka_bootstrap, [grant, event_deleted(grant), grant], {"Email": email, "LastName": "R"}
    )
    assert record["Newsletter_Consent__c"] is False
    assert record["Topic_Offers__c"] is False and record["Newsletter_Topics__c"] is None
    assert out["g"]["status"] == "stale"  # the redelivery, last outcome for "g"


async def test_a_redelivered_last_update_of_a_deleted_user_stays_withdrawn(
    kafka_bootstrap: str,
) -> None:
    email, at = "u@example.com", "2026-11-25T12:00:00Z"
    update = user_updated("user-of-" + email, email, at, [newsletter(False)], [newsletter(True)])
    (record,), _ = await one_by_one(
        kafka_bootstrap,
        [update, user_deleted(email, at), update],
        {"Email": email, "LastName": "U"},
    )
    assert record["Newsletter_Consent__c"] is False


async def test_a_deletion_of_a_person_without_a_record_keeps_a_late_older_grant_out(
    kafka_bootstrap: str,
) -> None:
    # Contact is in upsert mode and the person has no record. The user is deleted; then a
    # grant made before the deletion is delivered (a Didomi retry). Creating nothing for the
    # deletion would let that grant create the Contact with a consent: the deletion creates a
    # suppression record instead (no consent, the deletion's stamps), and the grant is stale.
    email = "nobody@example.com"
    late = event("late", email, "2026-11-25T11:00:00Z", newsletter(True, topics="offers"))
    records, out = await one_by_one(
        kafka_bootstrap, [user_deleted(email, "2026-11-25T12:00:00Z"), late], None
    )
    (record,) = records
    assert record["Email"] == email
    assert record["Newsletter_Consent__c"] is False and record["Topic_Offers__c"] is False
    created = contact_of(out["user-of-" + email])
    assert created["status"] == "created" and "suppression record" in created["note"]
    assert out["late"]["status"] == "stale"
