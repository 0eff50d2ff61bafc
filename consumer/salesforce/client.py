"""Salesforce adapter: OAuth client credentials, query, describe and sObject Collections.

One ``aiohttp.ClientSession`` for the life of the process. Every answer goes through one
classifier (:func:`classify_response`) that turns it into data or into an exception of
:mod:`consumer.errors` saying what to do: retry, refresh the token, pause, or report.
The access token never leaves this module: not in logs, not in exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from consumer.errors import (
    ApiBudgetExceededError,
    AuthenticationError,
    Reaction,
    RequestLimitExceededError,
    RetryBudgetExhaustedError,
    SalesforceError,
    SalesforceRequestError,
    SalesforceTransientError,
    SessionExpiredError,
)
from consumer.model.outcomes import SalesforceErrorInfo
from consumer.observability.metrics import Metrics
from consumer.salesforce.composite import COMPOSABLE, Composer
from consumer.salesforce.retry import Backoff
from consumer.salesforce.soql import encode_query
from consumer.settings import TOKEN_PATH, Settings, is_loopback

logger = logging.getLogger(__name__)

_LIMIT_INFO = re.compile(r"(?<![\w-])api-usage=(\d+)/(\d+)")
#: Collections accept at most this many records a call.
COLLECTION_LIMIT = 200
#: Connections of a client nobody sized (the ``check`` and ops commands).
DEFAULT_POOL_SIZE = 10


@dataclass(frozen=True)
class AccessToken:
    """A granted session. ``repr`` hides the token."""

    value: str = field(repr=False)
    instance_url: str
    issued_at: float


@dataclass(frozen=True)
class RecordResult:
    """One entry of an sObject Collections answer (in request order)."""

    success: bool
    id: str | None = None
    created: bool | None = None
    errors: tuple[SalesforceErrorInfo, ...] = ()
    #: Ids of the existing records a duplicate rule matched (``DUPLICATES_DETECTED``).
    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RecordResult:
        """Parse one result, tolerating Salesforce's two spellings of the error code."""
        errors = tuple(
            SalesforceErrorInfo(
                code=str(err.get("statusCode") or err.get("errorCode") or "UNKNOWN"),
                message=str(err.get("message") or ""),
                fields=[str(f) for f in err.get("fields") or ()],
            )
            for err in raw.get("errors") or ()
            if isinstance(err, Mapping)
        )
        created = raw.get("created")
        return cls(
            success=bool(raw.get("success")),
            id=raw.get("id"),
            created=created if isinstance(created, bool) else None,
            errors=errors,
            duplicates=_duplicate_ids(raw.get("errors") or ()),
        )


def _duplicate_ids(errors: Any) -> tuple[str, ...]:
    """The matched records' ids in a ``duplicateResult`` (Salesforce's shape), if any."""
    found: list[str] = []
    for err in errors if isinstance(errors, list) else ():
        result = err.get("duplicateResult") if isinstance(err, Mapping) else None
        if not isinstance(result, Mapping):
            continue
        for match in result.get("matchResults") or ():
            for rec in (match.get("matchRecords") or ()) if isinstance(match, Mapping) else ():
                record = rec.get("record") if isinstance(rec, Mapping) else None
                rid = record.get("Id") if isinstance(record, Mapping) else None
                if isinstance(rid, str) and rid not in found:
                    found.append(rid)
    return tuple(found)


#: Registrable domains Salesforce serves orgs from (My Domain, sandboxes, Government Cloud,
#: the Alibaba-operated China instance, legacy domains).
SALESFORCE_DOMAINS = (
    "salesforce.com",
    "force.com",
    "cloudforce.com",
    "database.com",
    "salesforce.mil",
    "sfcrmproducts.cn",
)


def trusted_instance_url(answer: object, token_base: str) -> str:
    """The ``instance_url`` of a token answer, once it is known to be Salesforce's.

    The access token goes to this address on every call, so an answer pointing elsewhere (a
    proxy gone wrong, a tampered answer) is refused before any bearer token is sent: https
    only (http only for a loopback host, as for the token URL), on a Salesforce domain or at
    the token URL's own address. A missing one means the token URL's address.
    """
    if answer is None or answer == "":
        return token_base.rstrip("/")
    parts = urlsplit(str(answer).strip().rstrip("/"))
    host = (parts.hostname or "").lower()
    # The token URL's own host means that exact address (host and port): another service on
    # the same host is not the org.
    same = parts.netloc.lower() == urlsplit(token_base).netloc.lower()
    trusted = same or any(host == d or host.endswith("." + d) for d in SALESFORCE_DOMAINS)
    secure = parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host))
    if not host or not trusted or not secure or parts.path not in ("", "/") or parts.query:
        raise AuthenticationError(
            "token: the answer's instance_url is not a Salesforce https address (nor the token "
            f"URL's host): {str(answer)[:200]!r}; no request is sent there",
            code="UNTRUSTED_INSTANCE_URL",
        )
    return f"{parts.scheme}://{parts.netloc}"


def parse_limit_info(header: str | None) -> tuple[int, int] | None:
    """``(used, limit)`` from a ``Sforce-Limit-Info`` header, or None."""
    if not header:
        return None
    found = _LIMIT_INFO.search(header)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2))


def _first_error(body: Any) -> tuple[str, str, tuple[str, ...]]:
    """``(errorCode, message, fields)`` of a Salesforce error body (a list of errors)."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        err = body[0]
        fields = tuple(str(f) for f in err.get("fields") or ())
        return str(err.get("errorCode") or "UNKNOWN"), str(err.get("message") or ""), fields
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), str(body.get("error_description") or ""), ()
    return "UNKNOWN", "", ()


def classify_response(status: int, body: Any, *, operation: str) -> SalesforceError | None:
    """The error an HTTP answer means, or None for success. The one place that decides."""
    if 200 <= status < 300:
        return None
    code, message, fields = _first_error(body)
    text = f"{operation}: HTTP {status} {code}" + (f": {message}" if message else "")
    if status == 401:
        if "not valid for use with the REST API" in message:
            return AuthenticationError(
                f"{text} (the integration user lacks API access: grant 'API Enabled' and the "
                "Connected App's scopes)",
                code="API_DISABLED_FOR_USER",
                status=status,
            )
        return SessionExpiredError(text, code=code or "INVALID_SESSION_ID", status=status)
    if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
        if "TotalRequests" in message or not message:
            return RequestLimitExceededError(text, code=code, status=status)
        # ConcurrentPerOrgLongTxn / ConcurrentRequests: too many long requests right now.
        return SalesforceTransientError(text, code="CONCURRENT_REQUEST_LIMIT", status=status)
    if status in (408, 429) or status >= 500:
        return SalesforceTransientError(
            f"{operation}: HTTP {status}" + (f" {code}" if code != "UNKNOWN" else ""),
            code=f"HTTP_{status}",
            status=status,
        )
    if status == 414:
        return SalesforceRequestError(f"{operation}: HTTP 414 URI too long", code="URI_TOO_LONG")
    return SalesforceRequestError(text, code=code, status=status, fields=fields)


def classify_token_response(status: int, body: Any) -> SalesforceError | None:
    """The error a token-endpoint answer means, or None for success."""
    if status == 200:
        return None
    code, message, _ = _first_error(body)
    if status >= 500 or status in (408, 429):
        return SalesforceTransientError(
            f"token: HTTP {status}", code=f"HTTP_{status}", status=status
        )
    hints = {
        "invalid_client": "check SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET (the "
        "Connected App's consumer key and secret)",
        "invalid_grant": "check that SALESFORCE_TOKEN_URL is the org's My Domain URL and that "
        "the Connected App has a client-credentials run-as user",
        "unsupported_grant_type": "enable the client credentials flow on the Connected App",
    }
    hint = hints.get(code, "check the Connected App's OAuth settings")
    detail = f" ({message})" if message else ""
    return AuthenticationError(
        f"token: HTTP {status} {code}{detail}: {hint}", code=code.upper(), status=status
    )


class SalesforceClient:
    """Talks to one org over one shared HTTP session; ``start()`` before use, ``stop()`` after."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        pool_size: int | None = None,
    ) -> None:
        self._settings = settings
        #: Connections in the session: ``pool_size``, else SALESFORCE_POOL_SIZE, else
        #: DEFAULT_POOL_SIZE (the service sizes it for its lanes; the commands need few).
        self.pool_size = pool_size or settings.salesforce_pool_size or DEFAULT_POOL_SIZE
        self.metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        #: Gathers calls issued together into composite calls (SALESFORCE_COMPOSITE).
        self._composer: Composer | None = None
        self._token: AccessToken | None = None
        self._token_lock = asyncio.Lock()
        self.api_usage: tuple[int, int] | None = None
        self.token_grants = 0
        allow = "true" if settings.salesforce_duplicate_rule_allow_save else "false"
        #: Sent with every write: an "Alert" duplicate rule must not block a consent write.
        self._duplicate_rule_header = (
            f"allowSave={allow}; includeRecordDetails=false; runAsCurrentUser=false"
        )

    async def start(self) -> None:
        """Open the HTTP session (idempotent)."""
        if self._session is not None:
            return
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(
                total=s.salesforce_timeout_seconds,
                sock_connect=s.salesforce_connect_timeout_seconds,
            ),
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
                "Sforce-Call-Options": f"client={s.salesforce_client_name}",
                "User-Agent": f"{s.salesforce_client_name} (aiohttp)",
            },
            raise_for_status=False,
        )
        if s.salesforce_composite != "off":
            self._composer = Composer(
                self._exchange,
                self._api_path("composite"),
                on_subrequest=self._observe_subrequest,
            )

    async def stop(self) -> None:
        """Close the HTTP session (idempotent)."""
        composer, self._composer = self._composer, None
        if composer is not None:
            await composer.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> SalesforceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session; raises if the client is not started."""
        if self._session is None:
            raise RuntimeError("SalesforceClient is not started")
        return self._session

    # --- authentication ------------------------------------------------------------------

    async def token(self) -> AccessToken:
        """The current session, requesting one if there is none."""
        current = self._token
        if current is not None:
            return current
        return await self.refresh_token(None)

    async def refresh_token(self, stale: AccessToken | None) -> AccessToken:
        """Replace ``stale`` with a new session; concurrent callers share one request.

        Whoever takes the lock first asks for a token; the others find it already replaced
        and use it, so one expiry costs exactly one grant.
        """
        async with self._token_lock:
            if self._token is not None and self._token is not stale:
                return self._token
            self._token = None
            self._token = await self._grant()
            return self._token

    async def _grant(self) -> AccessToken:
        s = self._settings
        url = s.salesforce_token_url + TOKEN_PATH
        form = {
            "grant_type": "client_credentials",
            "client_id": s.salesforce_client_id,
            "client_secret": s.salesforce_client_secret.get_secret_value(),
        }
        started = self._clock()
        try:
            async with self.session.post(url, data=form) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._observe("token", "error", started)
            self.metrics.token_grants.labels("error").inc()
            raise SalesforceTransientError(
                f"token: {type(exc).__name__} reaching the token endpoint", code="CONNECTION_ERROR"
            ) from None
        self._observe("token", str(status), started)
        body = _loads(raw)
        error = classify_token_response(status, body)
        if error is not None:
            self.metrics.token_grants.labels("refused" if status < 500 else "error").inc()
            raise error
        if not isinstance(body, dict) or not body.get("access_token"):
            self.metrics.token_grants.labels("error").inc()
            raise SalesforceTransientError("token: answer without access_token", code="BAD_TOKEN")
        try:
            instance = trusted_instance_url(body.get("instance_url"), s.salesforce_token_url)
        except AuthenticationError:
            self.metrics.token_grants.labels("refused").inc()
            raise
        self.metrics.token_grants.labels("granted").inc()
        self.token_grants += 1
        logger.info("salesforce session granted", extra={"instance_url": instance})
        return AccessToken(str(body["access_token"]), instance, time.time())

    # --- requests ------------------------------------------------------------------------

    @property
    def api_version(self) -> str:
        """The REST API version in use (``62.0``)."""
        return self._settings.salesforce_api_version

    def _api_path(self, suffix: str) -> str:
        return f"/services/data/v{self._settings.salesforce_api_version}/{suffix}"

    def query_path(self) -> str:
        """The path a query URL starts with (for measuring URL length)."""
        return self._api_path("query")

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        body: Any = None,
        encoded_query: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one API call and return its JSON, handling session expiry.

        On ``401 INVALID_SESSION_ID`` one new token is requested (shared with concurrent
        callers) and the call is sent once more. A 401 again, right after a fresh token, is
        not an expiry but a refusal (revoked app, IP restrictions, a deactivated user): it is
        raised as a configuration error, never looped on.
        """
        token = await self.token()
        for attempt in (1, 2):
            try:
                return await self._send(
                    method, path, token, operation, body, encoded_query, headers
                )
            except SessionExpiredError as exc:
                if attempt == 2:
                    raise AuthenticationError(
                        f"{exc.message} (again, right after a new token was granted: check the "
                        "Connected App's policies and the run-as user)",
                        code="SESSION_REFUSED",
                        status=exc.status,
                    ) from None
                self.metrics.salesforce_retries.labels("session_expired").inc()
                token = await self.refresh_token(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        method: str,
        path: str,
        token: AccessToken,
        operation: str,
        body: Any,
        encoded_query: str | None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Any:
        target = path if encoded_query is None else f"{path}?{encoded_query}"
        if self._composer is not None and operation in COMPOSABLE:
            status, parsed = await self._composer.call(
                method, target, token, operation, body, extra_headers
            )
        else:
            status, parsed = await self._exchange(
                method, target, token, operation, body, extra_headers
            )
        error = classify_response(status, parsed, operation=operation)
        if error is not None:
            raise error
        return parsed

    async def _exchange(
        self,
        method: str,
        target: str,
        token: AccessToken,
        operation: str,
        body: Any,
        extra_headers: Mapping[str, str] | None,
    ) -> tuple[int, Any]:
        """One HTTP call: (status, parsed body); transport failures raise transient errors."""
        url = URL(token.instance_url + target, encoded=True)
        headers = {"Authorization": f"Bearer {token.value}", **(extra_headers or {})}
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        options: dict[str, Any] = {}
        if operation == "composite":
            # Salesforce runs the subrequests one after another: each gets the usual time.
            s = self._settings
            options["timeout"] = aiohttp.ClientTimeout(
                total=s.salesforce_timeout_seconds * len(body["compositeRequest"]),
                sock_connect=s.salesforce_connect_timeout_seconds,
            )
        started = self._clock()
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, **options
            ) as resp:
                raw = await resp.read()
                status = resp.status
                limit = parse_limit_info(resp.headers.get("Sforce-Limit-Info"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._observe(operation, "error", started)
            raise SalesforceTransientError(
                f"{operation}: {type(exc).__name__}", code="CONNECTION_ERROR"
            ) from None
        self._observe(operation, str(status), started)
        if limit is not None:
            self.api_usage = limit
            self.metrics.api_usage_used.set(limit[0])
            self.metrics.api_usage_limit.set(limit[1])
        return status, _loads(raw)

    def _observe_subrequest(self, operation: str, status: int) -> None:
        self.metrics.salesforce_subrequests.labels(operation, str(status)).inc()

    def _observe(self, operation: str, status: str, started: float) -> None:
        self.metrics.salesforce_calls.labels(operation, status).inc()
        self.metrics.salesforce_latency.labels(operation).observe(self._clock() - started)

    async def with_retries(self, what: str, call: Callable[[], Any]) -> Any:
        """Run an idempotent call, retrying transient errors with backoff inside the budget."""
        s = self._settings
        backoff = Backoff(
            s.salesforce_retry_initial_seconds,
            s.salesforce_retry_max_seconds,
            s.salesforce_retry_budget_seconds,
            self._clock,
            self._rng,
        )
        while True:
            try:
                return await call()
            except SalesforceError as exc:
                if exc.reaction is not Reaction.RETRY:
                    raise
                delay = backoff.next_delay()
                if delay is None:
                    raise RetryBudgetExhaustedError(
                        f"{what}: still failing after {backoff.elapsed():.0f}s: {exc.message}",
                        code="RETRY_BUDGET_EXHAUSTED",
                    ) from None
                self.metrics.salesforce_retries.labels(exc.code).inc()
                logger.warning(
                    "salesforce call failed, retrying",
                    extra={"operation": what, "error": str(exc), "delay_s": round(delay, 3)},
                )
                await asyncio.sleep(delay)

    # --- operations ----------------------------------------------------------------------

    async def query_all(self, soql_encoded: str) -> list[dict[str, Any]]:
        """Run a query (already percent-encoded) and follow ``nextRecordsUrl`` to the end."""

        async def first() -> Any:
            return await self.request(
                "GET", self.query_path(), operation="query", encoded_query=f"q={soql_encoded}"
            )

        page = await self.with_retries("query", first)
        records: list[dict[str, Any]] = list(page.get("records") or ())
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            next_path = str(page["nextRecordsUrl"])

            async def more(next_path: str = next_path) -> Any:
                return await self.request("GET", next_path, operation="query_more")

            page = await self.with_retries("query_more", more)
            records.extend(page.get("records") or ())
        return records

    async def query(self, soql: str) -> list[dict[str, Any]]:
        """Run a SOQL statement given in clear text."""
        return await self.query_all(encode_query(soql))

    async def describe(self, sobject: str) -> dict[str, Any]:
        """``GET sobjects/{sobject}/describe``."""

        async def call() -> Any:
            return await self.request(
                "GET", self._api_path(f"sobjects/{sobject}/describe"), operation="describe"
            )

        result: dict[str, Any] = await self.with_retries(f"describe {sobject}", call)
        return result

    async def versions(self) -> list[dict[str, Any]]:
        """``GET /services/data/``: the API versions the org serves."""

        async def call() -> Any:
            return await self.request("GET", "/services/data/", operation="versions")

        result: list[dict[str, Any]] = await self.with_retries("versions", call)
        return result

    async def update(self, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        """``PATCH composite/sobjects``: update up to 200 records (each with ``id``).

        Not retried here: a failed chunk goes back to the writer, which retries only
        the records that still need it.
        """
        return await self._collection("PATCH", "update", records)

    async def create(self, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        """``POST composite/sobjects``: create up to 200 records.

        Never retried blindly: a create whose answer was lost may have happened, so the
        writer re-queries before creating again.
        """
        return await self._collection("POST", "create", records)

    async def upsert(
        self, sobject: str, external_id_field: str, records: Sequence[dict[str, Any]]
    ) -> list[RecordResult]:
        """``PATCH composite/sobjects/{sobject}/{field}``: upsert by external id.

        Results say ``created`` true or false. Safe to retry: the external id makes a second
        attempt find the record the first one created.
        """
        return await self._collection(
            "PATCH", "upsert", records, suffix=f"composite/sobjects/{sobject}/{external_id_field}"
        )

    def check_budget(self, share: float) -> None:
        """Raise :class:`ApiBudgetExceededError` when the org's usage passed ``share``.

        The usage is the last ``Sforce-Limit-Info`` seen; unknown usage passes.
        """
        if self.api_usage is None:
            return
        used, limit = self.api_usage
        if limit > 0 and used >= share * limit:
            raise ApiBudgetExceededError(
                f"API usage {used}/{limit} is at or above {share:.0%} of the org's daily limit",
            )

    async def _collection(
        self,
        method: str,
        operation: str,
        records: Sequence[dict[str, Any]],
        *,
        suffix: str = "composite/sobjects",
    ) -> list[RecordResult]:
        if not 0 < len(records) <= COLLECTION_LIMIT:
            raise ValueError(f"a collection call takes 1 to {COLLECTION_LIMIT} records")
        self.metrics.records_per_call.labels(operation).observe(len(records))
        body = {"allOrNone": False, "records": list(records)}
        answer = await self.request(
            method,
            self._api_path(suffix),
            operation=operation,
            body=body,
            headers={"Sforce-Duplicate-Rule-Header": self._duplicate_rule_header},
        )
        if not isinstance(answer, list) or len(answer) != len(records):
            raise SalesforceTransientError(
                f"{operation}: expected {len(records)} results, got "
                f"{len(answer) if isinstance(answer, list) else type(answer).__name__}",
                code="BAD_RESPONSE",
            )
        return [RecordResult.from_json(item) for item in answer]


def _loads(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # 5xx and 414 bodies are HTML; the status says enough.
        return None
