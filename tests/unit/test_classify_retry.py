"""The one classifier of Salesforce answers, the limit header, and the backoff policy."""

from __future__ import annotations

import random

import pytest

from consumer.errors import (
    AuthenticationError,
    Reaction,
    RequestLimitExceededError,
    SalesforceRequestError,
    SalesforceTransientError,
    SessionExpiredError,
)
from consumer.salesforce.client import classify_response, classify_token_response, parse_limit_info
from consumer.salesforce.retry import Backoff


@pytest.mark.parametrize(
    ("status", "body", "kind", "reaction"),
    [
        (
            401,
            [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
            SessionExpiredError,
            Reaction.REFRESH,
        ),
        (
            401,
            [
                {
                    "message": "This session is not valid for use with the REST API",
                    "errorCode": "INVALID_SESSION_ID",
                }
            ],
            AuthenticationError,
            Reaction.CONFIGURATION,
        ),
        (
            403,
            [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
            RequestLimitExceededError,
            Reaction.PAUSE,
        ),
        (
            403,
            [
                {
                    "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED",
                }
            ],
            SalesforceTransientError,
            Reaction.RETRY,
        ),
        (500, None, SalesforceTransientError, Reaction.RETRY),
        (503, None, SalesforceTransientError, Reaction.RETRY),
        (
            502,
            [{"message": "x", "errorCode": "SERVER_UNAVAILABLE"}],
            SalesforceTransientError,
            Reaction.RETRY,
        ),
        (
            400,
            [{"message": "No such column", "errorCode": "INVALID_FIELD"}],
            SalesforceRequestError,
            Reaction.REPORT,
        ),
        (414, None, SalesforceRequestError, Reaction.REPORT),
    ],
)
def test_classify_response(status: int, body: object, kind: type, reaction: Reaction) -> None:
    error = classify_response(status, body, operation="query")
    assert isinstance(error, kind)
    assert error is not None
    assert error.reaction is reaction
    assert error.retriable is (reaction in (Reaction.RETRY, Reaction.REFRESH, Reaction.PAUSE))


def test_success_is_not_an_error() -> None:
    assert classify_response(200, [], operation="update") is None
    assert classify_token_response(200, {"access_token": "x"}) is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"error": "invalid_client", "error_description": "invalid client credentials"},
            "INVALID_CLIENT",
        ),
        (
            {"error": "invalid_grant", "error_description": "authentication failure"},
            "INVALID_GRANT",
        ),
        (
            {"error": "unsupported_grant_type", "error_description": "grant type not supported"},
            "UNSUPPORTED_GRANT_TYPE",
        ),
    ],
)
def test_token_refusals_are_configuration_errors(body: dict[str, str], code: str) -> None:
    error = classify_token_response(400, body)
    assert isinstance(error, AuthenticationError)
    assert error.code == code
    assert error.reaction is Reaction.CONFIGURATION


def test_token_endpoint_outage_is_transient() -> None:
    assert isinstance(classify_token_response(503, None), SalesforceTransientError)


def test_limit_info_header() -> None:
    assert parse_limit_info("api-usage=123/15000") == (123, 15000)
    assert parse_limit_info("per-app-api-usage=1/10(appName=x), api-usage=9/10") == (9, 10)
    assert parse_limit_info(None) is None
    assert parse_limit_info("nonsense") is None


def test_backoff_grows_with_full_jitter_and_stops_at_the_budget() -> None:
    now = [0.0]
    b = Backoff(initial=1.0, maximum=8.0, budget=30.0, clock=lambda: now[0], rng=random.Random(1))
    delays = []
    while (d := b.next_delay()) is not None:
        delays.append(d)
        now[0] += d
    caps = [min(8.0, 2.0**i) for i in range(len(delays))]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert sum(delays) <= 30.0
    assert len(delays) >= 4
    assert b.elapsed() == pytest.approx(sum(delays))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (None, "https://acme.my.salesforce.com"),
        ("https://acme.my.salesforce.com/", "https://acme.my.salesforce.com"),
        (
            "https://acme--uat.sandbox.my.salesforce.com",
            "https://acme--uat.sandbox.my.salesforce.com",
        ),
        ("https://acme.my.salesforce.mil", "https://acme.my.salesforce.mil"),
        ("https://acme.my.sfcrmproducts.cn", "https://acme.my.sfcrmproducts.cn"),
    ],
)
def test_instance_urls_on_salesforce_domains_are_trusted(answer: str | None, expected: str) -> None:
    from consumer.salesforce.client import trusted_instance_url

    assert trusted_instance_url(answer, "https://acme.my.salesforce.com") == expected


@pytest.mark.parametrize(
    ("answer", "base"),
    [
        ("https://evil.example", "https://acme.my.salesforce.com"),
        ("https://salesforce.com.evil.example", "https://acme.my.salesforce.com"),
        ("https://evilsalesforce.com", "https://acme.my.salesforce.com"),
        ("http://acme.my.salesforce.com", "https://acme.my.salesforce.com"),  # not https
        ("http://127.0.0.1:9999", "http://127.0.0.1:8080"),  # same host, another service
        ("https://acme.my.salesforce.com/services/x", "https://acme.my.salesforce.com"),
        ("not a url", "https://acme.my.salesforce.com"),
    ],
)
def test_instance_urls_elsewhere_are_refused(answer: str, base: str) -> None:
    from consumer.errors import AuthenticationError
    from consumer.salesforce.client import trusted_instance_url

    with pytest.raises(AuthenticationError) as caught:
        trusted_instance_url(answer, base)
    assert caught.value.code == "UNTRUSTED_INSTANCE_URL"


def test_the_token_url_address_itself_is_trusted_on_loopback() -> None:
    from consumer.salesforce.client import trusted_instance_url

    assert trusted_instance_url("http://127.0.0.1:8080", "http://127.0.0.1:8080") == (
        "http://127.0.0.1:8080"
    )
