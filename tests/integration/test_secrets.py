"""No secret and no access token in any log line, exception text, metric or outcome."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from consumer.logs import JsonFormatter, TextFormatter
from tests.integration.scenario import build
from tests.integration.support import (
    CLIENT_SECRET,
    Topics,
    collect,
    make_emulator,
    make_topics,
    produce,
    running_service,
    sample_value,
    seed,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


async def test_a_run_with_expiries_and_refusals_leaks_no_secret(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scenario = build(n_people=30, n_events=300, seed=51)
    # The second half is sent once the secret is rotated: the run is surely not over by then,
    # so logins are refused mid-run.
    half = len(scenario.messages) // 2
    messages = [(m.key, m.value) for m in scenario.messages]
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 2)
    await produce(kafka_bootstrap, topics.input, messages[:half])
    sasl_password = "kafka-sasl-password-never-logged"
    async with make_emulator() as emulator:
        seed(emulator, scenario)
        emulator.expire_tokens_after(calls=7)
        emulator.set_random_faults(http_503_rate=0.05, seed=2)
        emulator.inject_record_error("update", "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Nope", count=3)
        settings = settings_for(
            kafka_bootstrap,
            topics,
            emulator.url,
            salesforce_auth_retry_seconds=0.3,
            sync_batch_max_events=40,
            sync_batch_linger_ms=20,
            kafka_sasl_password=sasl_password,
        )
        async with (
            collect(kafka_bootstrap, topics.results) as results,
            collect(kafka_bootstrap, topics.dlq) as dlq,
            running_service(settings) as running,
        ):
            await wait_for(lambda: len(results.records) >= 100, 60, "first outcomes")
            emulator.set_client_secret("rotated")  # refused logins mid-run
            emulator.revoke_tokens()
            await produce(kafka_bootstrap, topics.input, messages[half:])
            metrics = running.service.metrics
            await wait_for(
                lambda: (
                    sample_value(
                        metrics,
                        "consent_sync_salesforce_pauses_total",
                        {"reason": "authentication"},
                    )
                    >= 1
                ),
                30,
                "a refused login",
            )
            emulator.set_client_secret(CLIENT_SECRET)
            await wait_for(lambda: len(results.records) >= len(scenario.messages), 60, "outcomes")
            port = running.service.server.port
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                metrics_text = await resp.text()
            assert await running.finish() == 0
        tokens = emulator.issued_tokens
    assert len(tokens) >= 3
    formatters = [JsonFormatter(), TextFormatter()]
    logs = "\n".join(f.format(r) for r in caplog.records for f in formatters)
    assert "token" in logs.lower()  # the logs do talk about sessions...
    outputs = "\n".join(
        [logs, metrics_text]
        + [r.value.decode() for r in results.records]
        + [str(r.headers) for r in dlq.records]
    )
    for secret in [CLIENT_SECRET, sasl_password, *tokens]:
        assert secret not in outputs
        # ...and not a recognisable piece of it either.
        assert secret[-24:] not in outputs
