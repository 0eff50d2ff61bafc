"""Settings: environment names, the token URL rule, SASL consistency, secrets hidden."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from consumer.settings import Settings, normalise_token_base


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
