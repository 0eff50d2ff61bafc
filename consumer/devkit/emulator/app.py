"""The HTTP face of the emulator: an aiohttp app speaking Salesforce's REST wire format.

This layer stays thin: routing, authentication, the API usage header, faults/latency, the
request-size cap and compression live here; every Salesforce rule about records, queries and
tokens lives behind :class:`consumer.devkit.emulator.state.EmulatorState` (see that module for
the map of the others).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_response import ContentCoding

from consumer.devkit.emulator import composite, soql
from consumer.devkit.emulator.duplicates import DUPLICATE_RULE_HEADER, DuplicateRule
from consumer.devkit.emulator.journal import Journal
from consumer.devkit.emulator.state import (
    ApiError,
    EmulatorError,
    EmulatorState,
    FieldSpec,
    HttpFault,
    html_page,
    not_found,
)

__all__ = ["CONTROL_PREFIX", "MAX_REQUEST_HEAD_BYTES", "SalesforceEmulator"]

_log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_emulator"
"""Where the control routes live (with ``control=True``): ``stats``, ``journal``, ``seed``,
``reset``."""

MAX_REQUEST_HEAD_BYTES = 16_384
"""Salesforce's cap on request line + headers; beyond it the answer is 414 with an HTML body."""

# aiohttp's own parser refuses request lines / header fields over 8,190 bytes with a bare 400
# before any handler runs; raise its limits well above Salesforce's so our 414 logic decides.
_PARSER_LIMIT = 65_536

_JSON = "application/json;charset=UTF-8"
_HTML = "text/html;charset=UTF-8"
_DATA_PREFIX = "/services/data"
_API_KINDS = frozenset(
    {
        "query",
        "query_more",
        "describe",
        "create",
        "update",
        "upsert",
        "delete",
        "limits",
        "versions",
        "composite",
    }
)
_RECORD_FAULT_KINDS = frozenset({"create", "update", "upsert", "delete"})
# Salesforce refuses client-credentials on the shared login hosts: it must be the My Domain.
_SHARED_LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})

ApiHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers={"Content-Type": _JSON})


def _api_error(exc: ApiError) -> web.Response:
    return _json(exc.errors, exc.status)


def _token_error(error: str, description: str) -> web.Response:
    return _json({"error": error, "error_description": description}, 400)


def _invalid_session(message: str = "Session expired or invalid") -> web.Response:
    return _json([{"message": message, "errorCode": "INVALID_SESSION_ID"}], 401)


def _request_head_size(request: web.BaseRequest) -> int:
    """Bytes of the request line and header lines, each counted with its CRLF.

    Rebuilt from the parsed request (``METHOD raw-path HTTP/x.y`` and ``Name: value``), which
    is byte-for-byte what a client sends when it writes headers the usual way.
    """
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    path = request.raw_path.encode("utf-8", "surrogateescape")
    size = len(request.method) + 1 + len(path) + 1 + len(version) + 2
    for name, value in request.raw_headers:
        size += len(name) + 2 + len(value) + 2
    return size


def _accepted_codings(request: web.BaseRequest) -> set[str]:
    codings = set()
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.partition(";")
        if params.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            continue
        codings.add(coding.strip().lower())
    return codings


def _bearer_token(request: web.BaseRequest) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # Salesforce accepts the historical "OAuth" scheme as well as "Bearer".
    if scheme.lower() not in ("bearer", "oauth"):
        return None
    return value.strip() or None


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(client_id, client_secret) from an HTTP Basic header, or (None, None)."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, client_secret = decoded.partition(":")
    return (client_id, client_secret) if sep else (None, None)


async def _json_body(request: web.Request) -> object:
    try:
        raw = await request.read()  # aiohttp has already undone Content-Encoding: gzip
    except web.HTTPException:
        raise
    except Exception as exc:
        raise ApiError.of(400, "JSON_PARSER_ERROR", f"Unreadable request body: {exc}") from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError.of(
            400,
            "JSON_PARSER_ERROR",
            f"Unexpected character ({exc.msg}) at [line:{exc.lineno}, column:{exc.colno}]",
        ) from exc


def _default_fault_body(status: int) -> tuple[bytes, str | None]:
    if status == 401:
        body = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
        return orjson.dumps(body), _JSON
    if status == 403:
        body = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
        return orjson.dumps(body), _JSON
    if status >= 500:
        return html_page(status, "Server Error", "The server encountered an error."), _HTML
    return b"", None


class SalesforceEmulator:
    """A Salesforce REST API emulator served over real HTTP by aiohttp.

    Configure it, ``await start()`` (or use ``async with``), point a client at :attr:`url`, and
    steer it from the test with the token, fault and latency controls. All state lives on the
    instance (see :attr:`state`), so several emulators can run side by side.
    """

    def __init__(
        self,
        *,
        client_id: str = "demo-client-id",
        client_secret: str = "demo-client-secret",
        api_versions: Sequence[str] = ("60.0", "61.0", "62.0"),
        custom_fields: Mapping[str, Sequence[FieldSpec]] | None = None,
        api_limit: int = 15000,
        page_size: int = 2000,
        instance_url: str | None = None,
        control: bool = False,
    ) -> None:
        #: Serve the ``/_emulator/*`` control routes (stats, journal, seeding) so a process
        #: started with ``python -m consumer.devkit.emulator --control`` can be steered.
        self.control = control
        self.state = EmulatorState(
            client_id=client_id,
            client_secret=client_secret,
            api_versions=api_versions,
            custom_fields=custom_fields,
            api_limit=api_limit,
            page_size=page_size,
        )
        self.set_instance_url(instance_url)
        self._runner: web.AppRunner | None = None
        #: "Header: value" -> requests that carried it (Sforce-Call-Options, Accept-Encoding).
        self.seen_headers: Counter[str] = Counter()
        self._url: str | None = None
        # Set on stop so hung handlers (hang_next) return at once instead of delaying shutdown.
        self._stopping = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); return the base URL."""
        if self._runner is not None:
            raise EmulatorError("the emulator is already running")
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._build_app(), shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in shown:
            shown = f"[{shown}]"
        self._url = f"http://{shown}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        """Stop serving; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``) while running."""
        if self._runner is None or self._url is None:
            raise EmulatorError("the emulator is not running")
        return self._url

    # ---- records -----------------------------------------------------------------------

    def seed(self, sobject: str, fields: Mapping[str, Any]) -> str:
        """Insert a record without validation (field names must exist); return its 18-char id."""
        return self.state.seed(sobject, fields)

    def records(self, sobject: str) -> list[dict[str, Any]]:
        """Copies of all records of ``sobject``, each with ``Id`` and every field."""
        return self.state.records(sobject)

    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        """A copy of one record, or None."""
        return self.state.get(sobject, record_id)

    def find_by_email(self, sobject: str, email: str) -> list[dict[str, Any]]:
        """Copies of the records whose Email matches ``email`` ignoring case."""
        return self.state.find_by_email(sobject, email)

    def convert_lead(
        self, lead_id: str, contact_id: str | None = None, *, account_id: str | None = None
    ) -> str:
        """Convert a Lead into ``contact_id`` (or a new Contact made from the Lead); return the
        Contact's id. The Lead stays queryable, with ``IsConverted`` true and
        ``ConvertedContactId`` / ``ConvertedAccountId`` set, and any API update of it fails
        with ``CANNOT_UPDATE_CONVERTED_LEAD``."""
        return self.state.convert_lead(lead_id, contact_id, account_id=account_id)

    def hide_field(self, sobject: str, name: str) -> None:
        """Take a field away from the API user, as deleting it or removing it from the
        integration user's field-level security does: describe stops listing it, and a query
        or a write naming it fails as a whole with ``INVALID_FIELD``."""
        self.state.store.schema(sobject).hide(name)

    def require_field(self, sobject: str, name: str) -> None:
        """Make a field required on create, as marking a custom field Required does."""
        self.state.store.schema(sobject).require(name)

    def show_field(self, sobject: str, name: str) -> None:
        """Undo :meth:`hide_field`: the field and the values records held are back."""
        self.state.store.schema(sobject).show(name)

    # ---- duplicate rules ---------------------------------------------------------------

    def add_duplicate_rule(
        self,
        sobject: str,
        action: str = "alert",
        match_field: str = "Email",
        *,
        name: str | None = None,
        message: str = "Use one of these records?",
    ) -> DuplicateRule:
        """Activate a duplicate rule: a create, or an update changing ``match_field``, whose
        value equals (ignoring case) another stored record's fails with
        ``DUPLICATES_DETECTED``. An "alert" rule lets the save through when the request sends
        ``Sforce-Duplicate-Rule-Header: allowSave=true``; a "block" rule never does."""
        return self.state.add_duplicate_rule(
            sobject, action, match_field, name=name, message=message
        )

    def clear_duplicate_rules(self) -> None:
        """Deactivate every duplicate rule."""
        self.state.duplicates.clear()

    # ---- stats and usage ---------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Call and outcome counters (a copy)."""
        return self.state.stats.snapshot()

    def reset_stats(self) -> None:
        """Zero every counter."""
        self.state.stats.reset()

    @property
    def journal(self) -> Journal:
        """When each call was answered and each record written (enable it first:
        ``emu.journal.enabled = True``)."""
        return self.state.journal

    @property
    def api_usage(self) -> tuple[int, int]:
        """(used, limit) as in ``Sforce-Limit-Info``."""
        return self.state.usage.used, self.state.usage.limit

    def set_api_usage(self, used: int, limit: int | None = None) -> None:
        """Set the used count (and optionally the daily limit)."""
        self.state.usage.used = used
        if limit is not None:
            self.state.usage.limit = limit

    # ---- tokens ------------------------------------------------------------------------

    def expire_tokens_after(self, calls: int | None = None, seconds: float | None = None) -> None:
        """Every token (issued or future) dies after ``calls`` API calls made with it, or
        ``seconds`` after it was issued; both None turns expiry off."""
        self.state.tokens.expire_after(calls, seconds)

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far."""
        self.state.tokens.revoke_all()

    @property
    def tokens_issued(self) -> int:
        """How many tokens the token endpoint has handed out."""
        return self.state.tokens.issued

    @property
    def issued_tokens(self) -> list[str]:
        """The access tokens handed out so far."""
        return self.state.tokens.values()

    def set_instance_url(self, url: str | None) -> None:
        """Make the token endpoint answer with ``instance_url`` = ``url`` (None: the URL the
        token request came to), e.g. to check a client refuses to follow it elsewhere."""
        self.state.instance_url = url.rstrip("/") if url is not None else None

    def set_client_secret(self, secret: str) -> None:
        """Change the Connected App's secret (an admin rotating it)."""
        self.state.client_secret = secret

    @property
    def rest_api_disabled(self) -> bool:
        """When True every API call answers 401 "not valid for use with the REST API"."""
        return self.state.rest_api_disabled

    @rest_api_disabled.setter
    def rest_api_disabled(self, value: bool) -> None:
        self.state.rest_api_disabled = value

    # ---- faults ------------------------------------------------------------------------

    def inject_fault(
        self,
        kind: str | None,
        status: int,
        body: bytes | str | list[Any] | dict[str, Any] | None = None,
        count: int = 1,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``kind`` (None: any API call; "token": the token
        endpoint) with ``status`` and ``body`` instead of running them.

        dict/list bodies are sent as JSON, str bodies as text/html unless ``content_type`` is
        given, bytes as given; without a body 401/403 get Salesforce's JSON errors and 5xx an
        HTML page.
        """
        _check_kind(kind, allow_token=True)
        data: bytes
        ctype: str | None
        if body is None:
            data, ctype = _default_fault_body(status)
        elif isinstance(body, dict | list):
            data, ctype = orjson.dumps(body), _JSON
        elif isinstance(body, str):
            data, ctype = body.encode(), _HTML
        else:
            data, ctype = body, "application/octet-stream"
        self.state.faults.add_http(
            HttpFault(kind, status, data, content_type or ctype, dict(headers or {}), count)
        )

    def inject_record_error(
        self,
        kind: str | None,
        status_code: str,
        message: str,
        count: int = 1,
        fields: list[str] | None = None,
        email: str | None = None,
    ) -> None:
        """Fail the next ``count`` records of collections calls of ``kind`` (optionally only
        those whose Email, given or stored, equals ``email`` ignoring case).

        ``kind`` None means any call that saves a record (create, update or upsert), for tests
        that do not care which one the client picks. ``fields`` names the offending fields, as
        Salesforce does for e.g. ``FIELD_CUSTOM_VALIDATION_EXCEPTION`` (a validation rule whose
        error is shown at a field). The failed record writes nothing.
        """
        if kind is not None and kind not in _RECORD_FAULT_KINDS:
            raise EmulatorError(f"record errors apply to {sorted(_RECORD_FAULT_KINDS)}, not {kind}")
        self.state.faults.add_record(kind, status_code, message, count, fields, email)

    def set_random_faults(
        self, http_503_rate: float = 0.0, lock_rate: float = 0.0, seed: int | None = None
    ) -> None:
        """Random 503s per API call and UNABLE_TO_LOCK_ROW per written record."""
        self.state.faults.set_random(http_503_rate, lock_rate, seed)

    def set_latency(
        self, base_ms: float = 0.0, jitter_ms: float = 0.0, seed: int | None = None
    ) -> None:
        """Delay every call by ``base_ms`` plus up to ``jitter_ms``."""
        self.state.faults.set_latency(base_ms, jitter_ms, seed)

    def hang_next(self, kind: str | None, seconds: float, count: int = 1) -> None:
        """Sleep ``seconds`` before answering the next ``count`` calls of ``kind``."""
        _check_kind(kind, allow_token=True)
        self.state.faults.add_hang(kind, seconds, count)

    def clear_faults(self) -> None:
        """Drop injected faults, record errors, random faults, latency and hangs."""
        self.state.faults.clear()

    # ---- the aiohttp app ---------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._make_middleware()],
            handler_args={"max_line_size": _PARSER_LIMIT, "max_field_size": _PARSER_LIMIT},
        )
        add = app.router.add_route
        add("POST", "/services/oauth2/token", self._token)
        versions = self._api("versions", self._versions, versioned=False, needs_auth=False)
        add("GET", "/services/data", versions)
        add("GET", "/services/data/", versions)
        base = "/services/data/{version}"
        for path_tail, method, kind, handler in (
            ("query", "GET", "query", self._query),
            ("query/{locator}", "GET", "query_more", self._query_more),
            ("sobjects/{sobject}/describe", "GET", "describe", self._describe),
            ("composite/sobjects", "POST", "create", self._create),
            ("composite/sobjects", "PATCH", "update", self._update),
            ("composite/sobjects", "DELETE", "delete", self._delete),
            ("composite/sobjects/{sobject}/{field}", "PATCH", "upsert", self._upsert),
            ("limits", "GET", "limits", self._limits),
            ("composite", "POST", "composite", self._composite),
        ):
            wrapped = self._api(kind, handler)
            add(method, f"{base}/{path_tail}", wrapped)
            add(method, f"{base}/{path_tail}/", wrapped)
        if self.control:
            add("GET", f"{CONTROL_PREFIX}/stats", self._control_stats)
            add("GET", f"{CONTROL_PREFIX}/journal", self._control_journal)
            add("POST", f"{CONTROL_PREFIX}/seed", self._control_seed)
            add("POST", f"{CONTROL_PREFIX}/reset", self._control_reset)
        return app

    # ---- control routes (not Salesforce's; only with control=True) --------------------

    async def _control_stats(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        return _json(
            {
                "stats": state.stats.snapshot(),
                "api_usage": {"used": state.usage.used, "limit": state.usage.limit},
                "records": {name: len(rows) for name, rows in state.store.rows.items() if rows},
                "journal": {
                    "enabled": state.journal.enabled,
                    "calls": len(state.journal.calls),
                    "writes": len(state.journal.writes),
                    "summary": state.journal.summary(),
                },
            }
        )

    async def _control_journal(self, request: web.Request) -> web.StreamResponse:
        try:
            calls = int(request.query.get("calls", "0"))
            writes = int(request.query.get("writes", "0"))
        except ValueError:
            return _json({"error": "calls and writes must be integers"}, 400)
        return _json(self.state.journal.export(calls, writes))

    async def _control_seed(self, request: web.Request) -> web.StreamResponse:
        """``{"sobject": "Contact", "records": [{field: value}, ...]}``: insert without
        validation, as :meth:`seed` does; answers how many."""
        try:
            body = orjson.loads(await request.read())
            sobject = body["sobject"]
            records = body["records"]
            if not isinstance(sobject, str) or not isinstance(records, list):
                raise TypeError("sobject must be a string and records a list")
            for fields in records:
                self.state.seed(sobject, fields)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            return _json({"error": f"bad seed request: {exc!r}"}, 400)
        except EmulatorError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"seeded": len(records)})

    async def _control_reset(self, request: web.Request) -> web.StreamResponse:
        """Zero the counters and empty the journal (records stay)."""
        self.state.stats.reset()
        self.state.journal.clear()
        return _json({"reset": True})

    def _make_middleware(self) -> Any:
        state = self.state

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            is_data = request.path.startswith(_DATA_PREFIX)
            for name in ("Sforce-Call-Options", "Accept-Encoding", "User-Agent"):
                value = request.headers.get(name)
                if value is not None:
                    self.seen_headers[f"{name}: {value}"] += 1
            if _request_head_size(request) > MAX_REQUEST_HEAD_BYTES:
                state.stats.incr("http_414")
                response: web.StreamResponse = web.Response(
                    body=html_page(
                        414,
                        "URI Too Long",
                        f"The request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes.",
                    ),
                    status=414,
                    headers={"Content-Type": _HTML},
                )
            else:
                try:
                    response = await handler(request)
                except web.HTTPNotFound:
                    response = _api_error(not_found())
                except web.HTTPMethodNotAllowed as exc:
                    allowed = ",".join(sorted(exc.allowed_methods))
                    response = _json(
                        [
                            {
                                "errorCode": "METHOD_NOT_ALLOWED",
                                "message": f"HTTP Method '{request.method}' not allowed. "
                                f"Allowed are {allowed}",
                            }
                        ],
                        405,
                    )
                except web.HTTPException:
                    raise
                except Exception:
                    _log.exception(
                        "emulator bug while handling %s %s", request.method, request.path
                    )
                    response = _json(
                        [
                            {
                                "errorCode": "UNKNOWN_EXCEPTION",
                                "message": "An unexpected error occurred. Please include this "
                                "ErrorId if you contact support: 0-0 (emulator)",
                            }
                        ],
                        500,
                    )
            status = response.status
            if status == 401:
                state.stats.incr("http_401")
            elif status == 403:
                state.stats.incr("http_403")
            elif status >= 500:
                state.stats.incr("http_5xx")
            if is_data and "Sforce-Limit-Info" not in response.headers:
                response.headers["Sforce-Limit-Info"] = state.usage.header
            _maybe_compress(request, response)
            return response

        return middleware

    async def _within_latency(
        self, kind: str, answer: Handler, request: web.Request
    ) -> web.StreamResponse:
        """``answer`` the request, leaving the configured latency after it came in.

        Salesforce's latency includes its own work, so the emulator works first and sleeps
        for whatever is left (with 200 records a call that is milliseconds of Python that
        Salesforce does not cost its clients). A hang comes first, as before. The journal
        stamps the call's entries when the answer leaves, after the sleep.
        """
        await self._hang(kind)
        loop = asyncio.get_running_loop()
        due = loop.time() + self.state.faults.latency_seconds()
        # Salesforce serves concurrent calls side by side; the emulator works on one thread.
        # Calls that came in together all take their start time before any of them works,
        # so one call's work does not lengthen another's latency.
        await asyncio.sleep(0)
        with self.state.journal.answering():
            try:
                response = await answer(request)
            except asyncio.CancelledError:
                raise
            except BaseException:
                # An emulator bug (the middleware answers 500) still waits its latency.
                await _sleep_until(loop, due)
                raise
            await _sleep_until(loop, due)
        return response

    async def _hang(self, kind: str) -> None:
        hang = self.state.faults.take_hang(kind)
        if hang > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hang):
                    await self._stopping.wait()

    def _fault_response(self, fault: HttpFault) -> web.Response:
        self.state.stats.incr("faults_injected")
        headers = dict(fault.headers)
        if fault.content_type is not None:
            headers["Content-Type"] = fault.content_type
        return web.Response(body=fault.body, status=fault.status, headers=headers)

    def _api(
        self, kind: str, handler: ApiHandler, *, versioned: bool = True, needs_auth: bool = True
    ) -> Handler:
        """Wrap ``handler`` with what every API call goes through, in Salesforce's order."""
        state = self.state

        async def wrapped(request: web.Request) -> web.StreamResponse:
            state.stats.incr(kind)
            state.stats.incr("api_calls")
            return await self._within_latency(kind, answer, request)

        async def answer(request: web.Request) -> web.StreamResponse:
            fault = state.faults.take_http(kind)
            if fault is not None:
                return self._fault_response(fault)
            if state.faults.roll_503():
                state.stats.incr("faults_injected")
                body = html_page(
                    503,
                    "Service Unavailable",
                    "The server is temporarily unable to service your request.",
                )
                return web.Response(body=body, status=503, headers={"Content-Type": _HTML})
            version = ""
            if versioned:
                raw = request.match_info.get("version", "")
                version = raw[1:] if raw.startswith("v") else ""
                if version not in state.api_versions:
                    return _api_error(not_found())
            if needs_auth:
                if state.rest_api_disabled:
                    return _invalid_session("This session is not valid for use with the REST API")
                if not state.tokens.use(_bearer_token(request)):
                    return _invalid_session()
                if state.usage.used >= state.usage.limit:
                    return _json(
                        [
                            {
                                "message": "TotalRequests Limit exceeded.",
                                "errorCode": "REQUEST_LIMIT_EXCEEDED",
                            }
                        ],
                        403,
                    )
                state.usage.used += 1
            try:
                return await handler(request, version)
            except ApiError as exc:
                return _api_error(exc)
            except soql.SoqlError as exc:
                return _json([{"message": exc.message, "errorCode": exc.error_code}], 400)

        return wrapped

    # ---- endpoints ---------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.state.stats.incr("token")
        return await self._within_latency("token", self._token_answer, request)

    async def _token_answer(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        fault = state.faults.take_http("token")
        if fault is not None:
            return self._fault_response(fault)
        if request.host.rsplit(":", 1)[0].lower() in _SHARED_LOGIN_HOSTS:
            return _json(
                {
                    "error": "invalid_grant",
                    "error_description": "request not supported on this domain",
                },
                400,
            )
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _token_error("unsupported_grant_type", "grant type not supported")
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        if client_id is None and client_secret is None:
            client_id, client_secret = _basic_credentials(request.headers.get("Authorization"))
        if not (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and hmac.compare_digest(client_id.encode(), state.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), state.client_secret.encode())
        ):
            return _token_error("invalid_client", "invalid client credentials")
        return _json(state.issue_token(f"{request.scheme}://{request.host}"))

    async def _versions(self, request: web.Request, version: str) -> web.StreamResponse:
        return _json(self.state.versions())

    async def _query(self, request: web.Request, version: str) -> web.StreamResponse:
        return _json(self.state.query(request.query.get("q"), version))

    async def _query_more(self, request: web.Request, version: str) -> web.StreamResponse:
        return _json(self.state.query_more(request.match_info["locator"], version))

    async def _describe(self, request: web.Request, version: str) -> web.StreamResponse:
        return _json(self.state.describe(request.match_info["sobject"]))

    async def _limits(self, request: web.Request, version: str) -> web.StreamResponse:
        return _json(self.state.limits())

    async def _create(self, request: web.Request, version: str) -> web.StreamResponse:
        body = await _json_body(request)
        header = request.headers.get(DUPLICATE_RULE_HEADER)
        return _json(self.state.create(body, version=version, duplicate_header=header))

    async def _update(self, request: web.Request, version: str) -> web.StreamResponse:
        body = await _json_body(request)
        header = request.headers.get(DUPLICATE_RULE_HEADER)
        return _json(self.state.update(body, version=version, duplicate_header=header))

    async def _upsert(self, request: web.Request, version: str) -> web.StreamResponse:
        body = await _json_body(request)
        info = request.match_info
        header = request.headers.get(DUPLICATE_RULE_HEADER)
        return _json(
            self.state.upsert(
                info["sobject"], info["field"], body, version=version, duplicate_header=header
            )
        )

    async def _composite(self, request: web.Request, version: str) -> web.StreamResponse:
        """``POST composite``: the subrequests in order, one API call; the call lasts one
        latency per subrequest (Salesforce runs them one after another)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        subs = composite.parse(await _json_body(request), self.state.api_versions)
        state = self.state
        results = []
        for sub in subs:
            state.stats.incr(sub.kind)
            await self._hang(sub.kind)  # a slow subrequest makes the whole call slow
            status, body = composite.run(state, sub, state.faults.take_http)
            if status >= 500:
                state.stats.incr("http_5xx")
            results.append((sub, status, body))
        state.journal.call("composite", "", len(subs), sum(1 for _, st, _ in results if st < 300))
        # One latency per subrequest, in a row (the wrapper's own single latency has passed
        # by then).
        await _sleep_until(loop, started + sum(state.faults.latency_seconds() for _ in subs))
        return _json(composite.answer(results))

    async def _delete(self, request: web.Request, version: str) -> web.StreamResponse:
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        all_or_none = request.query.get("allOrNone", "false").lower() == "true"
        return _json(self.state.delete(ids, all_or_none))


def _check_kind(kind: str | None, *, allow_token: bool) -> None:
    if kind is None or kind in _API_KINDS or (allow_token and kind == "token"):
        return
    raise EmulatorError(f"unknown call kind {kind!r}; use one of {sorted(_API_KINDS)} or 'token'")


def _maybe_compress(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """gzip (or deflate) the body when the client asks; aiohttp alone would prefer deflate."""
    if not isinstance(response, web.Response) or not response.body:
        return
    if "Content-Encoding" in response.headers:
        return
    codings = _accepted_codings(request)
    if "gzip" in codings:
        response.enable_compression(ContentCoding.gzip)
    elif "deflate" in codings:
        response.enable_compression(ContentCoding.deflate)


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    rest = due - loop.time()
    if rest > 0:
        await asyncio.sleep(rest)
