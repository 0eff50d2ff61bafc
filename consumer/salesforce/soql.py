"""SOQL building: string-literal escaping and URL-length-bounded ``IN`` lists.

Pure. A query travels in the URL, and Salesforce refuses a request line plus headers over
16,384 bytes with a 414, so an ``IN`` list is split by the length of the *encoded* URL, not by
a count of values. Percent-encoding is done here (not by the HTTP client) so that the length
measured is exactly the length sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote

#: Salesforce's limit on one string literal.
MAX_LITERAL_CHARS = 4000

_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_TRANSLATION = str.maketrans(_ESCAPES)


def escape_literal(value: str) -> str:
    """Escape ``value`` for use inside a single-quoted SOQL string literal.

    Backslash and quotes are escaped, as are the control characters SOQL has escapes for;
    other characters (any Unicode) are legal as they are.
    """
    return value.translate(_TRANSLATION)


def quote_literal(value: str) -> str:
    """``value`` as a complete SOQL string literal, quotes included."""
    if len(value) > MAX_LITERAL_CHARS:
        raise ValueError(f"a SOQL string literal holds at most {MAX_LITERAL_CHARS} characters")
    return f"'{escape_literal(value)}'"


def encode_query(soql: str) -> str:
    """Percent-encode a SOQL statement for the ``q`` parameter (every reserved byte encoded)."""
    return quote(soql, safe="")


def in_queries(
    *,
    path: str,
    select: Sequence[str],
    sobject: str,
    field: str,
    values: Iterable[str],
    max_url_bytes: int,
    extra_where: str = "",
) -> list[str]:
    """SOQL statements ``SELECT .. FROM sobject WHERE field IN (..)`` covering ``values``.

    Each statement, once encoded and appended to ``path + "?q="``, is at most
    ``max_url_bytes`` long. Values keep their order; duplicates are dropped.
    """
    encoded = in_queries_encoded(
        path=path,
        select=select,
        sobject=sobject,
        field=field,
        values=values,
        max_url_bytes=max_url_bytes,
        extra_where=extra_where,
    )
    return [unquote(q) for q in encoded]


def in_queries_encoded(
    *,
    path: str,
    select: Sequence[str],
    sobject: str,
    field: str,
    values: Iterable[str],
    max_url_bytes: int,
    extra_where: str = "",
) -> list[str]:
    """:func:`in_queries`, already percent-encoded for the ``q`` parameter.

    Percent-encoding maps each character on its own, so the encoded statement is the
    concatenation of its encoded parts: each literal is encoded once, to be measured and sent.
    """
    head = encode_query(f"SELECT {', '.join(select)} FROM {sobject} WHERE {field} IN (")
    tail = encode_query(")" + (f" AND {extra_where}" if extra_where else ""))
    fixed = len(path) + len("?q=") + len(head) + len(tail)
    if fixed >= max_url_bytes:
        raise ValueError("max_url_bytes is too small for the query's fixed part")
    comma = encode_query(",")
    queries: list[str] = []
    current: list[str] = []
    size = fixed
    seen: set[str] = set()
    for value in values:
        if value in seen:
            continue
        seen.add(value)
        literal = encode_query(quote_literal(value))
        cost = len(literal) + (len(comma) if current else 0)
        if current and size + cost > max_url_bytes:
            queries.append(head + comma.join(current) + tail)
            current, size = [], fixed
            cost = len(literal)
        if size + cost > max_url_bytes:
            raise ValueError("one value does not fit in max_url_bytes")
        current.append(literal)
        size += cost
    if current:
        queries.append(head + comma.join(current) + tail)
    return queries
