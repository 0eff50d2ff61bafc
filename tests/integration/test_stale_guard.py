"""The sync state: replays and late events never roll consent back.

The example mapping keeps a per-field sync state (``sync_state_field``); here it also stamps
``last_synced_field`` (a human-readable mark, not a guard).
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import orjson
import pytest

from consumer.mapping import parse_mapping
from consumer.ops.replay import ReplayOptions, ToEarliest, replay
from tests.integration.scenario import build
from tests.integration.support import (
    EXAMPLE_MAPPING,
    Topics,
    assert_final_state,
    collect,
    committed_offsets,
    make_emulator,
    make_topics,
    produce,
    running_service,
    scenario_topics,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]

WITH_STATE = (
    (EXAMPLE_MAPPING)
    .read_text(encoding="utf-8")
    .replace(
        "    match_field: Email              # organization_user_id is matched against this "
        "field\n",
        "    match_field: Email\n    last_synced_field: Consent_Synced_At__c\n",
        1,
    )
)


def contact_snapshot(emulator: Any) -> dict[str, dict[str, Any]]:
    # LastModifiedDate included: a Contact written again, even with equal values, shows.
    return {r["Id"]: dict(r) for r in emulator.records("Contact")}


async def test_replay_from_the_start_changes_nothing_and_counts_stale(
    kafka_bootstrap: str,
) -> None:
    mapping = parse_mapping(WITH_STATE)
    assert mapping.targets[0].last_synced_field == "Consent_Synced_At__c"
    assert all(t.sync_state_field == "Didomi_Sync_State__c" for t in mapping.targets)
    scenario = build(n_people=120, n_events=1000, seed=61)
    topics = await scenario_topics(kafka_bootstrap, scenario, 3)
    total = len(scenario.messages)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        settings = settings_for(kafka_bootstrap, topics, emulator.url, sync_batch_max_events=200)
        async with collect(kafka_bootstrap, topics.results) as results:
            async with running_service(settings, mapping) as running:
                await wait_for(lambda: len(results.records) >= total, 60, "first pass")
                assert await running.finish() == 0
            assert_final_state(emulator, scenario)
            before = contact_snapshot(emulator)
            assert all(
                r["Consent_Synced_At__c"]
                for r in emulator.records("Contact")
                if r["Newsletter_Consent__c"] or r["Analytics_Consent__c"]
            )

            # Replay with the operator command: the service is stopped, offsets go to the start.
            plan = io.StringIO()
            code = await replay(
                settings,
                ReplayOptions(request=ToEarliest(), topic=topics.input, group=topics.group),
                out=plan,
            )
            assert code == 0, plan.getvalue()
            assert "committed" in plan.getvalue()
            assert await committed_offsets(kafka_bootstrap, topics.group, topics.input, 3) == {
                0: 0,
                1: 0,
                2: 0,
            }
            emulator.reset_stats()
            async with running_service(settings, mapping) as running:
                await wait_for(lambda: len(results.records) >= 2 * total, 60, "replay")
                assert await running.finish() == 0
                metrics = running.service.metrics
        assert contact_snapshot(emulator) == before  # not a single Contact was written
        assert emulator.stats["create"] == 0
    replayed = results.values()[total:]
    contact_status = Counter(
        t["status"] for o in replayed for t in o.get("targets", []) if t["sobject"] == "Contact"
    )
    assert set(contact_status) == {"stale"}
    assert contact_status["stale"] == sum(
        1 for m in scenario.messages if m.kind == "valid" and m.choice and m.choice.contact_fields()
    )
    stale_metric = metrics.registry.get_sample_value(
        "consent_sync_outcomes_total", {"status": "stale", "sobject": "Contact"}
    )
    assert stale_metric == contact_status["stale"]


def _event(event_id: str, email: str, when: str, enabled: bool) -> bytes:
    return orjson.dumps(
        {
            "type": "event.created",
            "parameters": {
                "entity": {
                    "id": event_id,
                    "created_at": when,
                    "status": "confirmed",
                    "user": {"organization_user_id": email},
                    "consents": {"purposes": [{"id": "newsletter", "enabled": enabled}]},
                }
            },
        }
    )


async def test_a_late_older_event_cannot_roll_back_a_newer_choice(kafka_bootstrap: str) -> None:
    mapping = parse_mapping(WITH_STATE)
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 1)
    email = "late@example.com"
    async with make_emulator() as emulator:
        record_id = emulator.seed("Contact", {"Email": email, "LastName": "L"})
        settings = settings_for(kafka_bootstrap, topics, emulator.url, sync_batch_linger_ms=50)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings, mapping) as running,
        ):
            # The newer opt-out arrives first (its own batch), the older opt-in a moment later.
            await produce(
                kafka_bootstrap,
                topics.input,
                [(email.encode(), _event("new", email, "2026-11-22T10:05:00.250Z", False))],
            )
            await wait_for(lambda: len(results.records) >= 1, 30, "first")
            await produce(
                kafka_bootstrap,
                topics.input,
                [(email.encode(), _event("old", email, "2026-11-22T10:00:00Z", True))],
            )
            await wait_for(lambda: len(results.records) >= 2, 30, "second")
            assert await running.finish() == 0
        record = emulator.get("Contact", record_id)
        assert record is not None
        assert record["Newsletter_Consent__c"] is False
        assert record["Consent_Synced_At__c"] == "2026-11-22T10:05:00.250+0000"
    first, second = results.values()
    assert first["status"] == "updated"
    assert second["status"] == "stale"
    assert second["targets"][0]["status"] == "stale"
