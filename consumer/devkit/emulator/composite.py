"""``POST composite``: several REST requests in one API call (the subrequests the emulator
serves: queries, query pages and sObject Collections writes).

Salesforce's rules, as the emulator keeps them:
- at most 25 subrequests, of which at most 5 queries or collections calls; more is a 400 for
  the whole call and nothing runs;
- the subrequests run one after another and (``allOrNone`` false) each one's failure is its
  own: the call answers 200 with one ``compositeResponse`` entry per subrequest (``body``,
  ``httpHeaders``, ``httpStatusCode``, ``referenceId``). The emulator runs them in the order
  sent; Salesforce may collate independent subrequests (``collateSubrequests``, true by
  default since v49) and run them in another order, which the service never relies on (one
  composite call never holds two calls for the same person's record);
- the whole call counts once against the org's API limit;
- each subrequest carries its own headers (``httpHeaders``), such as
  ``Sforce-Duplicate-Rule-Header``.

The emulator refuses ``allOrNone: true`` (rolling back earlier subrequests is not modelled),
and references between subrequests (``@{ref.field}``), which the service never sends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import orjson

from consumer.devkit.emulator import soql
from consumer.devkit.emulator.duplicates import DUPLICATE_RULE_HEADER
from consumer.devkit.emulator.errors import ApiError, JsonObj
from consumer.devkit.emulator.faults import HttpFault
from consumer.devkit.emulator.state import EmulatorState

__all__ = ["MAX_HEAVY", "MAX_SUBREQUESTS", "Subrequest", "answer", "parse", "run"]

MAX_SUBREQUESTS = 25
#: Subrequests that are queries or sObject Collections calls, at most, in one composite call.
MAX_HEAVY = 5

_PATH = re.compile(r"^/services/data/v(?P<version>\d+\.\d)/(?P<rest>.*?)/?$")
_UPSERT = re.compile(r"^composite/sobjects/(?P<sobject>[^/]+)/(?P<field>[^/]+)$")
_QUERY_MORE = re.compile(r"^query/(?P<locator>[^/]+)$")


@dataclass(frozen=True)
class Subrequest:
    """One subrequest as the emulator routes it."""

    reference_id: str
    method: str
    kind: str  # query, query_more, create, update, upsert
    version: str
    #: query: the SOQL; query_more: the locator; upsert: "sObject/field"; else "".
    target: str
    body: object
    duplicate_header: str | None


def parse(body: object, api_versions: Collection[str]) -> list[Subrequest]:
    """The subrequests of a composite body; raises :class:`ApiError` for the whole call."""
    if not isinstance(body, dict):
        raise ApiError.of(400, "JSON_PARSER_ERROR", "The composite body must be a JSON object")
    if body.get("allOrNone") is True:
        raise ApiError.of(
            400, "INVALID_INPUT", "the emulator does not model allOrNone composite requests"
        )
    raw = body.get("compositeRequest")
    if not isinstance(raw, list) or not raw:
        raise ApiError.of(400, "INVALID_INPUT", "compositeRequest must list 1 to 25 subrequests")
    if len(raw) > MAX_SUBREQUESTS:
        raise ApiError.of(
            400,
            "LIMIT_EXCEEDED",
            f"A composite request has at most {MAX_SUBREQUESTS} subrequests, not {len(raw)}",
        )
    subs = [_subrequest(item, api_versions) for item in raw]
    seen: set[str] = set()
    for sub in subs:
        if sub.reference_id in seen:
            raise ApiError.of(
                400, "INVALID_INPUT", f"Duplicate referenceId provided: {sub.reference_id}"
            )
        seen.add(sub.reference_id)
    if len(subs) > MAX_HEAVY:  # every kind the emulator serves is a query or a collection
        raise ApiError.of(
            400,
            "LIMIT_EXCEEDED",
            f"A composite request has at most {MAX_HEAVY} query or sObject Collections "
            f"subrequests, not {len(subs)}",
        )
    return subs


def _subrequest(item: object, api_versions: Collection[str]) -> Subrequest:
    if not isinstance(item, dict):
        raise ApiError.of(400, "JSON_PARSER_ERROR", "A subrequest must be a JSON object")
    ref, method, url = item.get("referenceId"), item.get("method"), item.get("url")
    if not isinstance(ref, str) or not ref or not isinstance(method, str):
        raise ApiError.of(400, "INVALID_INPUT", "A subrequest needs a referenceId and a method")
    if not isinstance(url, str):
        raise ApiError.of(400, "INVALID_INPUT", f"Subrequest {ref}: url is required")
    if "@{" in url or "@{" in orjson.dumps(item.get("body")).decode():
        raise ApiError.of(
            400, "INVALID_INPUT", "the emulator does not model references between subrequests"
        )
    split = urlsplit(url)
    match = _PATH.match(split.path)
    if match is None or match["version"] not in api_versions:
        raise ApiError.of(400, "INVALID_INPUT", f"Subrequest {ref}: unsupported url {url!r}")
    version, rest = match["version"], match["rest"]
    headers = item.get("httpHeaders") or {}
    if not isinstance(headers, dict):
        raise ApiError.of(400, "INVALID_INPUT", f"Subrequest {ref}: httpHeaders is not an object")
    dup = next(
        (str(v) for k, v in headers.items() if k.lower() == DUPLICATE_RULE_HEADER.lower()), None
    )
    method = method.upper()
    body = item.get("body")
    if method == "GET" and rest == "query":
        q = parse_qs(split.query, keep_blank_values=True).get("q", [None])[-1]
        return Subrequest(ref, method, "query", version, q or "", None, None)
    if method == "GET" and (more := _QUERY_MORE.match(rest)):
        return Subrequest(ref, method, "query_more", version, more["locator"], None, None)
    if rest == "composite/sobjects" and method in ("POST", "PATCH"):
        kind = "create" if method == "POST" else "update"
        return Subrequest(ref, method, kind, version, "", body, dup)
    if method == "PATCH" and (up := _UPSERT.match(rest)):
        return Subrequest(
            ref, method, "upsert", version, f"{up['sobject']}/{up['field']}", body, dup
        )
    raise ApiError.of(
        400, "INVALID_INPUT", f"Subrequest {ref}: the emulator does not serve {method} {url}"
    )


def run(
    state: EmulatorState, sub: Subrequest, take_fault: Callable[[str], HttpFault | None]
) -> tuple[int, object]:
    """Run one subrequest: (its HTTP status, its body), as a call of its own would answer."""
    fault = take_fault(sub.kind)
    if fault is not None:
        try:
            return fault.status, orjson.loads(fault.body) if fault.body else None
        except orjson.JSONDecodeError:
            return fault.status, None
    try:
        if sub.kind == "query":
            return 200, state.query(sub.target, sub.version)
        if sub.kind == "query_more":
            return 200, state.query_more(sub.target, sub.version)
        if sub.kind == "create":
            return 200, state.create(
                sub.body, version=sub.version, duplicate_header=sub.duplicate_header
            )
        if sub.kind == "update":
            return 200, state.update(
                sub.body, version=sub.version, duplicate_header=sub.duplicate_header
            )
        sobject, field = sub.target.split("/", 1)
        return 200, state.upsert(
            sobject, field, sub.body, version=sub.version, duplicate_header=sub.duplicate_header
        )
    except ApiError as exc:
        return exc.status, exc.errors
    except soql.SoqlError as exc:
        return 400, [{"message": exc.message, "errorCode": exc.error_code}]


def answer(results: list[tuple[Subrequest, int, object]]) -> JsonObj:
    """The composite call's body."""
    return {
        "compositeResponse": [
            {
                "body": body,
                "httpHeaders": {},
                "httpStatusCode": status,
                "referenceId": s.reference_id,
            }
            for s, status, body in results
        ]
    }
