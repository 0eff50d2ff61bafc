"""SOQL escaping and URL-length chunking of IN lists."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from consumer.salesforce.soql import encode_query, escape_literal, in_queries, quote_literal

PATH = "/services/data/v62.0/query"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain@x.com", "plain@x.com"),
        ("o'brien@x.com", "o\\'brien@x.com"),
        ("back\\slash@x.com", "back\\\\slash@x.com"),
        ("\\'", "\\\\\\'"),
        ('quo"te@x.com', 'quo\\"te@x.com'),
        ("tab\there\nnl", "tab\\there\\nnl"),
        ("Zoë@exämple.de", "Zoë@exämple.de"),
        ("x') OR Id != null --", "x\\') OR Id != null --"),
    ],
)
def test_escape_literal(raw: str, escaped: str) -> None:
    assert escape_literal(raw) == escaped


def test_quote_literal_refuses_oversized_literals() -> None:
    assert quote_literal("a") == "'a'"
    with pytest.raises(ValueError, match="4000"):
        quote_literal("a" * 4001)


def test_encoding_covers_every_reserved_character() -> None:
    encoded = encode_query("SELECT Id FROM Contact WHERE Email IN ('a+b@x.com','c&d=e#f')")
    for ch in " +&=#'(),":
        assert ch not in encoded
    assert unquote(encoded) == "SELECT Id FROM Contact WHERE Email IN ('a+b@x.com','c&d=e#f')"


def _url_len(soql: str) -> int:
    return len(PATH) + len("?q=") + len(encode_query(soql))


def test_in_queries_respects_the_url_budget_and_keeps_every_value() -> None:
    values = [f"person.{i:05d}+tag@example-{i % 7}.com" for i in range(2000)]
    values += ["o'brien\\x@example.com", "Zoë@exämple.de"]
    queries = in_queries(
        path=PATH,
        select=("Id", "Email"),
        sobject="Contact",
        field="Email",
        values=values,
        max_url_bytes=15000,
    )
    assert len(queries) > 1
    assert all(_url_len(q) <= 15000 for q in queries)
    # Chunks are full: merging two would break the budget.
    assert all(_url_len(q) > 15000 - 200 for q in queries[:-1])
    recovered = []
    for q in queries:
        assert q.startswith("SELECT Id, Email FROM Contact WHERE Email IN (")
        inner = q[len("SELECT Id, Email FROM Contact WHERE Email IN (") : -1]
        recovered.extend(_split_literals(inner))
    assert recovered == values


def test_unicode_counts_by_encoded_bytes() -> None:
    values = ["ü" * 60 + f"{i}@x.de" for i in range(100)]
    queries = in_queries(
        path=PATH,
        select=("Id",),
        sobject="Lead",
        field="Email",
        values=values,
        max_url_bytes=4000,
    )
    assert all(_url_len(q) <= 4000 for q in queries)
    assert sum(q.count("@x.de") for q in queries) == 100


def test_duplicates_are_sent_once_and_empty_input_makes_no_query() -> None:
    qs = in_queries(
        path=PATH,
        select=("Id",),
        sobject="Lead",
        field="Email",
        values=["a@x", "a@x"],
        max_url_bytes=2000,
    )
    assert qs == ["SELECT Id FROM Lead WHERE Email IN ('a@x')"]
    assert (
        in_queries(
            path=PATH, select=("Id",), sobject="Lead", field="Email", values=[], max_url_bytes=2000
        )
        == []
    )


def _split_literals(inner: str) -> list[str]:
    """Parse a comma-separated list of SOQL string literals (the inverse of quoting)."""
    out: list[str] = []
    i = 0
    unescape = {
        "\\": "\\",
        "'": "'",
        '"': '"',
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "b": "\b",
        "f": "\f",
    }
    while i < len(inner):
        assert inner[i] == "'"
        i += 1
        buf = []
        while inner[i] != "'":
            if inner[i] == "\\":
                buf.append(unescape[inner[i + 1]])
                i += 2
            else:
                buf.append(inner[i])
                i += 1
        out.append("".join(buf))
        i += 1
        if i < len(inner):
            assert inner[i] == ","
            i += 1
    return out
