"""The calls a target's writer really has in flight at once for one batch, measured against
the emulator, are what ``calls_at_once`` says (the service sizes its connection pool by it)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.devkit.bench.events import EXTERNAL_ID_MAPPING
from consumer.mapping import MappingConfig, parse_mapping
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter, calls_at_once
from tests.integration.support import (
    batch_of,
    emulator_settings,
    example_mapping,
    make_emulator,
)
from tests.unit.helpers import change, purpose

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


class Counting(SalesforceClient):
    """Counts the HTTP calls in flight at once (the most, since the last reset)."""

    now = 0
    most = 0

    async def _exchange(self, *args: Any) -> tuple[int, Any]:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await super()._exchange(*args)
        finally:
            self.now -= 1


@pytest.mark.parametrize(
    ("mapping", "sobject"),
    [
        (example_mapping(), "Contact"),  # found first, upsert mode: updates beside creates
        (example_mapping(), "Lead"),  # found first, updates only
        (parse_mapping(EXTERNAL_ID_MAPPING), "Contact"),  # blind upsert, then the defaults
    ],
    ids=["match-upsert", "match-update-only", "blind-upsert"],
)
async def test_a_writer_has_at_most_calls_at_once_in_flight(
    mapping: MappingConfig, sobject: str
) -> None:
    # 250 people with a record and 250 without: more than a collection call takes, both ways.
    known = [f"k{i}@example.com" for i in range(250)]
    unknown = [f"u{i}@example.com" for i in range(250)]
    async with make_emulator() as emulator:
        # Long enough that calls sent together are in flight together.
        emulator.set_latency(20)
        for email in known:
            record = {"Email": email, "LastName": "K"}
            if sobject == "Lead":
                record["Company"] = "Co"
            else:
                record["Didomi_Id__c"] = email  # what a blind upsert matches on
            emulator.seed(sobject, record)
        s = emulator_settings(emulator)
        client = Counting(s, Metrics(CollectorRegistry()))
        async with client:
            report = await check_mapping(client, mapping)
            assert report.ok, report.render()
            plan = next(p for p in report.plans if p.sobject == sobject)
            writer = TargetWriter(client, plan, s)
            changes = [change(e, purpose("newsletter", False), minutes=1) for e in known + unknown]
            client.most = 0
            await writer.write(batch_of(changes, [plan]))
    target = next(t for t in mapping.targets if t.sobject == sobject)
    assert client.most == calls_at_once(target)
