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
            await wait_for(lambda: len(dlq.records) >= 1, 20, "dead letters")
            assert await running.finish() == 0
        for p in people:
            record = emulator.find_by_email("Contact", p)[0]
            assert record["Newsletter_Consent__c"] is (p != "p1@example.com"), p
        # The record was written again without the refused field: p1's other choice landed.
        assert emulator.find_by_email("Contact", "p1@example.com")[0]["Analytics_Consent__c"]
    by_event = {str(o["event_id"]): o for o in results.values()}
    refused = by_event["e1"]  # it carried only the refused field
    assert refused["status"] == "failed"
    assert refused["error_class"] == "FIELD_REJECTED"
    contact = next(t for t in refused["targets"] if t["sobject"] == "Contact")
    assert contact["status"] == "failed"
    assert contact["fields_refused"] == [
        {
            "field": "Newsletter_Consent__c",
            "code": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "message": "Consent changes need a reason",
        }
    ]
    assert contact["error"]["code"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert by_event["e-bad-2"]["status"] == "updated"  # its field was written
    for i, p in enumerate(people):
        if p != "p1@example.com":
            assert by_event[f"e{i}"]["status"] == "updated", p
    assert len(dlq.records) == 1
    headers = dict(dlq.records[0].headers)
    assert headers["x-dlq-error-class"] == b"FIELD_REJECTED"
    assert headers["x-dlq-event-id"] == b"e1"
    retries = running.service.metrics.registry.get_sample_value(
        "consent_sync_salesforce_calls_total", {"operation": "update", "status": "200"}
    )
    # One call for everybody, one more for p1 without the refused field, and the lock error
    # one more for p2 only.
    assert retries == 3
