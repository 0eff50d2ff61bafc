"""Settings: environment names, the token URL rule, SASL consistency, secrets hidden."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from consumer.cli import _warn_unknown
from consumer.settings import (
    PREFIXES,
    Settings,
    known_variables,
    normalise_token_base,
    unknown_variables,
)


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("https://acme.my.salesforce.com", "https://acme.my.salesforce.com"),
        ("https://acme.my.salesforce.com/", "https://acme.my.salesforce.com"),
        ("https://acme.my.salesforce.com/services/oauth2/token", "https://acme.my.salesforce.com"),
        (
            " https://acme.my.salesforce.com/services/oauth2/token/ ",
            "https://acme.my.salesforce.com",
        ),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:9/services/oauth2/token", "http://localhost:9"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_token_url_is_normalised(given: str, base: str) -> None:
    assert normalise_token_base(given) == base


@pytest.mark.parametrize(
    "bad",
    [
        "http://acme.my.salesforce.com",
        "ftp://acme.my.salesforce.com",
        "acme.my.salesforce.com",
        "https://acme.my.salesforce.com/services/data",
        "https://acme.my.salesforce.com/?x=1",
    ],
)
def test_bad_token_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"URL|http"):
        normalise_token_base(bad)


def test_settings_read_the_contract_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KAFKA_INPUT_TOPIC": "in",
        "KAFKA_RESULTS_TOPIC": "out",
        "KAFKA_DLQ_TOPIC": "dlq",
        "KAFKA_GROUP_ID": "g",
        "SALESFORCE_TOKEN_URL": "https://acme.my.salesforce.com/services/oauth2/token",
        "SALESFORCE_CLIENT_ID": "cid",
        "SALESFORCE_CLIENT_SECRET": "s3cr3t-value",
        "SALESFORCE_API_VERSION": "61.0",
        "SYNC_MAPPING_FILE": "/etc/sync/mapping.yaml",
        "METRICS_PORT": "9999",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "kafka-pass",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert (s.kafka_input_topic, s.kafka_results_topic, s.kafka_dlq_topic) == ("in", "out", "dlq")
    assert s.salesforce_token_url == "https://acme.my.salesforce.com"
    assert s.salesforce_api_version == "61.0"
    assert str(s.sync_mapping_file) == "/etc/sync/mapping.yaml"
    assert s.metrics_port == 9999
    assert s.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert "s3cr3t-value" not in repr(s)
    assert "kafka-pass" not in repr(s)
    s.require_salesforce()


def test_sasl_without_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="KAFKA_SASL_MECHANISM"):
        Settings()


def test_missing_salesforce_credentials_are_named() -> None:
    with pytest.raises(ValueError, match="SALESFORCE_TOKEN_URL, SALESFORCE_CLIENT_ID"):
        Settings().require_salesforce()


def test_unknown_variables_are_named_with_the_closest_setting() -> None:
    env = {
        "KAFKA_GROUPID": "g",  # typo of KAFKA_GROUP_ID
        "sync_batch_max_event": "5",  # read case-insensitively, so reported too
        "SALESFORCE_SOMETHING_ELSE": "x",  # nothing close
        "KAFKA_GROUP_ID": "g",  # known
        "log_level": "DEBUG",  # known, any case
        "HEALTH_POLL_STALL_SECONDS": "5",
        "PATH": "/usr/bin",  # not ours
        "KAFKAESQUE": "1",  # no settings prefix
    }
    found = {v.name: v.closest for v in unknown_variables(env)}
    assert found == {
        "KAFKA_GROUPID": "KAFKA_GROUP_ID",
        "sync_batch_max_event": "SYNC_BATCH_MAX_EVENTS",
        "SALESFORCE_SOMETHING_ELSE": None,
    }
    assert str(unknown_variables({"KAFKA_GROUPID": "g"})[0]) == (
        "unknown variable KAFKA_GROUPID (did you mean KAFKA_GROUP_ID?)"
    )


def test_kubernetes_service_links_are_not_unknown() -> None:
    # A Service named "kafka" (or "metrics") in the namespace injects these into every pod.
    env = {
        "KAFKA_PORT": "tcp://10.0.0.1:9092",
        "KAFKA_PORT_9092_TCP": "tcp://10.0.0.1:9092",
        "KAFKA_PORT_9092_TCP_ADDR": "10.0.0.1",
        "KAFKA_PORT_9092_TCP_PORT": "9092",
        "KAFKA_PORT_9092_TCP_PROTO": "tcp",
        "KAFKA_SERVICE_HOST": "10.0.0.1",
        "KAFKA_SERVICE_PORT": "9092",
        "KAFKA_SERVICE_PORT_CLIENTS": "9092",
        "METRICS_SERVICE_HOST": "10.0.0.2",
    }
    assert unknown_variables(env) == []


def test_every_setting_is_a_known_variable_with_a_settings_prefix() -> None:
    assert all(name.startswith(PREFIXES) for name in known_variables())
    assert "KAFKA_GROUP_ID" in known_variables()


def test_run_logs_each_unknown_variable(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="consumer.cli"):
        _warn_unknown(unknown_variables({"SYNC_CONCURENCY": "8"}))
    [record] = caplog.records
    assert record.getMessage().startswith(
        "unknown variable SYNC_CONCURENCY (did you mean SYNC_CONCURRENCY?)"
    )
    assert record.__dict__["closest"] == "SYNC_CONCURRENCY"


def test_the_engine_defaults_are_the_settings_defaults() -> None:
    from consumer.engine.pipeline import EngineConfig

    # model_construct: the declared defaults, without reading the environment.
    assert EngineConfig.from_settings(Settings.model_construct()) == EngineConfig()
