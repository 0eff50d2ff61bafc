"""Pipeline runs where the session expires midway, and where emails need SOQL escaping."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from tests.integration.scenario import build
from tests.integration.support import (
    Topics,
    assert_final_state,
    assert_outcomes,
    collect,
    make_emulator,
    make_topics,
    produce,
    running_service,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


async def test_token_expiring_mid_run_is_replaced_once_per_expiry(kafka_bootstrap: str) -> None:
    scenario = build(n_people=80, n_events=1200, seed=23)
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 3)
    pairs = [(m.key, m.value) for m in scenario.messages]
    quarters = [pairs[i * 300 : (i + 1) * 300] for i in range(4)]
    await produce(kafka_bootstrap, topics.input, quarters[0])
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.set_latency(base_ms=10, jitter_ms=20, seed=1)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            sync_batch_max_events=30,
            sync_batch_linger_ms=10,
            sync_concurrency=4,
            kafka_fetch_max_records=60,
        )
        total = len(scenario.messages)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            for n in (1, 2, 3):
                await wait_for(lambda n=n: len(results.records) >= 300 * n, 60, "progress")
                # Every session dies at once; the next quarter of the input needs new calls.
                emulator.revoke_tokens()
                await produce(kafka_bootstrap, topics.input, quarters[n])
            await wait_for(lambda: len(results.records) >= total, 60, "outcomes")
            assert await running.finish() == 0
            client = running.service.client
        assert emulator.tokens_issued == 4
        assert client.token_grants == 4
        assert emulator.stats["http_401"] >= 3
    assert_final_state(emulator, scenario)
    assert_outcomes(results.values(), scenario, topics.input)


def _event(event_id: str, email: str, enabled: bool, minute: int) -> bytes:
    when = f"2026-11-22T10:{minute:02d}:00Z"
    return orjson.dumps(
        {
            "type": "event.created",
            "parameters": {
                "entity": {
                    "id": event_id,
                    "created_at": when,
                    "status": "confirmed",
                    "regulation": "gdpr",
                    "user": {"organization_user_id": email},
                    "consents": {"purposes": [{"id": "newsletter", "enabled": enabled}]},
                }
            },
        }
    )


async def test_emails_with_quotes_and_backslashes_are_matched(kafka_bootstrap: str) -> None:
    odd = [
        "o'brien\\ops@example.com",
        "d'arcy@example.com",
        "back\\\\slash@example.com",
        'quo"te@example.com',
        "zoë@exämple.de",
    ]
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 1)
    messages = [
        (email.lower().encode(), _event(f"e{i}", email.upper() if i % 2 else email, True, i))
        for i, email in enumerate(odd)
    ]
    await produce(kafka_bootstrap, topics.input, messages)
    async with make_emulator() as emulator:
        ids = {email: emulator.seed("Contact", {"Email": email, "LastName": "X"}) for email in odd}
        emulator.seed("Contact", {"Email": "bystander@example.com", "LastName": "B"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= len(odd), 60, "outcomes")
            assert await running.finish() == 0
            metrics = running.service.metrics
        for email, record_id in ids.items():
            record = emulator.get("Contact", record_id)
            assert record is not None and record["Newsletter_Consent__c"] is True, email
        assert len(emulator.records("Contact")) == len(odd) + 1  # matched, none created
        bystander = emulator.find_by_email("Contact", "bystander@example.com")[0]
        assert bystander["Newsletter_Consent__c"] is False
    statuses = Counter(
        t["status"] for o in results.values() for t in o["targets"] if t["sobject"] == "Contact"
    )
    assert statuses == {"updated": len(odd)}
    bad_queries = metrics.registry.get_sample_value(
        "consent_sync_salesforce_calls_total", {"operation": "query", "status": "400"}
    )
    assert bad_queries is None
