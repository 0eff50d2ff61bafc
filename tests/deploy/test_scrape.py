"""A scrape of the real running service passes `promtool check metrics`, and every metric
name the dashboard and the alerts read is in it."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_alerts import _dashboard_exprs
from tests.deploy.tools import alert_rules, find_tool, metric_names, run
from tests.integration.scenario import build
from tests.integration.support import (
    collect,
    make_emulator,
    running_service,
    scenario_topics,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


def _scraped_names(text: str) -> set[str]:
    """Series names a scrape exposes, with the suffixes of counters and histograms."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


async def test_a_scrape_of_the_running_service_has_every_metric_the_alerts_read(
    kafka_bootstrap: str,
) -> None:
    scenario = build(n_people=5, n_events=20, seed=11)
    topics = await scenario_topics(kafka_bootstrap, scenario, 1)
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        settings = settings_for(kafka_bootstrap, topics, emulator.url)
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 20, 60, "outcomes")
            port = running.service.server.port
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                assert resp.status == 200
                text = await resp.text()
            await running.finish()
    used = set()
    for expr in _dashboard_exprs() + [r["expr"] for r in alert_rules()]:
        used |= {n for n in metric_names(expr) if n.startswith("consent_sync_")}
    assert used - _scraped_names(text) == set()
    promtool = find_tool("promtool")
    if promtool is None:
        pytest.skip("promtool not found (installed by Debian's prometheus package: make tools)")
    done = run(promtool, "check", "metrics", input=text)
    assert done.returncode == 0, done.stdout + done.stderr
