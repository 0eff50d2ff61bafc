"""Per-record Salesforce errors fail only that person's events; lock errors are retried."""

from __future__ import annotations

import orjson
import pytest

from tests.integration.support import (
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


def event(event_id: str, email: str, minute: int, **purposes: bool) -> tuple[bytes, bytes]:
    when = f"2026-11-22T10:{minute:02d}:00Z"
    doc = {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": event_id,
                "created_at": when,
                "status": "confirmed",
                "regulation": "gdpr",
                "user": {"organization_user_id": email},
                "consents": {"purposes": [{"id": k, "enabled": v} for k, v in purposes.items()]},
            }
        },
    }
    return email.lower().encode(), orjson.dumps(doc)


async def test_one_persons_validation_error_does_not_fail_the_others(kafka_bootstrap: str) -> None:
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 1)
    people = [f"p{i}@example.com" for i in range(6)]
    messages = [event(f"e{i}", p, i, newsletter=True) for i, p in enumerate(people)]
    messages.append(event("e-bad-2", "p1@example.com", 30, analytics=True))
    await produce(kafka_bootstrap, topics.input, messages)
    async with make_emulator() as emulator:
        for p in people:
            emulator.seed("Contact", {"Email": p, "LastName": "X"})
        emulator.inject_record_error(
            "update",
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "Consent changes need a reason",
            fields=["Newsletter_Consent__c"],
            email="p1@example.com",
        )
        emulator.inject_record_error(
            "update",
            "UNABLE_TO_LOCK_ROW",
            "unable to obtain exclusive access",
            email="p2@example.com",
        )
        # One lane, so everybody shares one batch and its calls can be counted.
        settings = settings_for(kafka_bootstrap, topics, emulator.url, sync_concurrency=1)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= len(messages), 60, "outcomes")
            await wait_for(lambda: len(dlq.records) >= 2, 20, "dead letters")
            assert await running.finish() == 0
        for p in people:
            record = emulator.find_by_email("Contact", p)[0]
            assert record["Newsletter_Consent__c"] is (p != "p1@example.com"), p
    by_user: dict[str, list[dict[str, object]]] = {}
    for o in results.values():
        by_user.setdefault(str(o["organization_user_id"]), []).append(o)
    failed = by_user["p1@example.com"]
    assert len(failed) == 2  # both of p1's events share the failed write
    for o in failed:
        assert o["status"] == "failed"
        assert o["error_class"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        contact = next(t for t in o["targets"] if t["sobject"] == "Contact")  # type: ignore[attr-defined]
        assert contact["error"] == {
            "code": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "message": "Consent changes need a reason",
            "fields": ["Newsletter_Consent__c"],
        }
    for p in people:
        if p != "p1@example.com":
            assert [o["status"] for o in by_user[p]] == ["updated"], p
    assert len(dlq.records) == 2
    assert {dict(r.headers)["x-dlq-error-class"] for r in dlq.records} == {
        b"FIELD_CUSTOM_VALIDATION_EXCEPTION"
    }
    retries = running.service.metrics.registry.get_sample_value(
        "consent_sync_salesforce_calls_total", {"operation": "update", "status": "200"}
    )
    assert retries == 2  # the lock error cost one more update call, for p2 only
