"""The service's HTTP connection pool holds every call its lanes can have in flight at once:
fewer connections make calls queue, and the wait counts in their latency."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from consumer.mapping import MappingConfig, TargetMapping
from consumer.observability.metrics import Metrics
from consumer.salesforce.writer import calls_at_once
from consumer.service import POOL_SPARE, Service, pool_size
from consumer.settings import Settings
from tests.unit.helpers import example_mapping


def target(**options: object) -> TargetMapping:
    return TargetMapping.model_validate(
        {
            "sobject": "Contact",
            "purposes": {"newsletter": "N__c"},
            "allow_late_overwrites": "sync_state_field" not in options,
            **options,
        }
    )


@pytest.mark.parametrize(
    ("options", "calls"),
    [
        # Found first (a query), then updates beside creates.
        ({"upsert_mode": True}, 2),
        ({"upsert_mode": True, "external_id_field": "Ext__c", "sync_state_field": "S__c"}, 2),
        # Updates only.
        ({"upsert_mode": False}, 1),
        ({"upsert_mode": False, "external_id_field": "Ext__c"}, 1),
        # A blind upsert by the external id: one call.
        ({"upsert_mode": True, "external_id_field": "Ext__c"}, 1),
    ],
)
def test_calls_a_target_has_in_flight_at_once(options: dict[str, object], calls: int) -> None:
    assert calls_at_once(target(**options)) == calls


def test_unset_the_pool_holds_every_lanes_calls(caplog: pytest.LogCaptureFixture) -> None:
    # The example mapping: Contact (upsert, found first) 2 + Lead (update only) 1.
    mapping = example_mapping()
    with caplog.at_level(logging.WARNING):
        assert pool_size(Settings(sync_concurrency=4), mapping) == 4 * 3 + POOL_SPARE
        assert pool_size(Settings(sync_concurrency=1), mapping) == 3 + POOL_SPARE
        assert pool_size(Settings(salesforce_pool_size=50), mapping) == 50  # set: it wins
    assert caplog.records == []


def test_a_pool_set_below_the_need_is_kept_and_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        got = pool_size(Settings(sync_concurrency=4, salesforce_pool_size=10), example_mapping())
    assert got == 10
    [record] = caplog.records
    assert "wait for a connection" in record.getMessage()
    assert (record.__dict__["pool_size"], record.__dict__["needed"]) == (10, 12 + POOL_SPARE)


@pytest.mark.asyncio
async def test_the_services_session_has_that_many_connections() -> None:
    mapping = MappingConfig.model_validate(
        {
            "targets": [
                {
                    "sobject": "Contact",
                    "upsert_mode": True,
                    "sync_state_field": "S__c",
                    "purposes": {"a": "A__c"},
                }
            ]
        }
    )
    service = Service(Settings(sync_concurrency=6), mapping, Metrics(CollectorRegistry()))
    await service.client.start()
    try:
        assert service.client.session.connector is not None
        assert service.client.session.connector.limit == 6 * 2 + POOL_SPARE
    finally:
        await service.client.stop()
