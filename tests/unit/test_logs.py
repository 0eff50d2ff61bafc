"""Log lines name people by reference only: person_ref, and the formatters' safeguard."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from consumer.logs import JsonFormatter, TextFormatter, person_ref, redact

EMAIL = "Jane.Doe@Example.com"
#: The first 12 hex characters of sha256("jane.doe@example.com").
JANE = "86e0b9e56c17"


def test_person_ref_is_short_stable_and_ignores_case_and_spaces() -> None:
    assert person_ref("jane.doe@example.com") == JANE
    assert person_ref(f"  {EMAIL}\n") == JANE
    assert person_ref("john.doe@example.com") != JANE


def test_redact_replaces_emails_and_leaves_other_at_signs() -> None:
    assert redact(f"no match for {EMAIL}.") == f"no match for <person {JANE}>."
    assert redact("pkg@1.2.3, group g@2, a @ b") == "pkg@1.2.3, group g@2, a @ b"
    # Escaped text, as in JSON or a repr: the escape is not part of the address.
    assert redact("KeyError('x\\njane.doe@example.com')") == f"KeyError('x\\n<person {JANE}>')"
    # In a URL, "@" is "%40" (what a query string holds).
    assert redact("?q=IN%20(jane.doe%40example.com)") == f"?q=IN%20(<person {JANE}>)"


def test_redact_takes_linear_time_on_huge_runs() -> None:
    # Unbounded repeats would try every start of the run against all of it (600,000² steps).
    assert redact("x" * 600_000 + "@") == "x" * 600_000 + "@"


@pytest.fixture(params=["json", "text"])
def logged(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO, str]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if request.param == "json" else TextFormatter())
    logger = logging.getLogger(f"tests.logs.{request.param}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream, request.param
    finally:
        logger.removeHandler(handler)


def test_emails_never_reach_a_log_line(logged: tuple[logging.Logger, io.StringIO, str]) -> None:
    logger, stream, fmt = logged
    logger.warning("write failed for %s", EMAIL, extra={"people": [EMAIL], "count": 2})
    by_email: dict[str, int] = {}
    try:
        by_email[EMAIL.lower()]  # a KeyError's message repeats the key: the email
    except KeyError:
        logger.exception("unexpected error")
    lines = stream.getvalue().splitlines()
    text = stream.getvalue()
    assert "example.com" not in text.lower()
    assert text.count(f"<person {JANE}>") == 3  # the message, the extra field, the KeyError
    if fmt == "json":
        first = orjson.loads(lines[0])
        assert first["message"] == f"write failed for <person {JANE}>"
        assert first["count"] == 2
    else:
        assert lines[0].endswith(
            f"write failed for <person {JANE}> people=['<person {JANE}>'] count=2"
        )
