"""Composite calls: the queries and collection writes issued together go as one API call.

Salesforce's ``POST composite`` runs up to 5 queries or sObject Collections calls as
subrequests of one request, which counts once against the org's daily API limit. A batch
issues its calls together (a Contact query beside a Lead query; then a Contact update, a
Contact create and a Lead update), so :class:`Composer` holds each call for a few turns of
the event loop, then sends the calls of one group (:func:`together`: one batch's) as
composite calls of up to 5 subrequests (a call alone goes as itself; one that nothing could
join, the lone call of a group's only member, goes at once: :func:`single`). Calls of different
groups never go together: Salesforce runs subrequests one after another, so two lanes' calls
in one composite call would write one after the other instead of at once.

Each caller gets its own subrequest's status and body back, and the client classifies it
exactly as it would the answer of a call of its own: the writer's rules on partial failures,
retries and order do not change. An error of the whole composite call (a transport error,
401, 403, 408, 429, 5xx) is every subrequest's; a composite call refused for what it is
sends its calls one by one.

The price: Salesforce runs the subrequests one after another, so a composite call lasts
about as long as its subrequests together. ``SALESFORCE_COMPOSITE`` says when to pay it
(``auto``: while the service works through a backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from consumer.errors import SalesforceTransientError

logger = logging.getLogger(__name__)

#: Queries or collections calls Salesforce takes in one composite call.
MAX_SUBREQUESTS = 5
#: Statuses of a composite call refused as a whole for what it is (malformed, too large, a
#: limit on composite calls): its calls are then sent one by one. 401, 403, 408, 429 and 5xx
#: are every caller's own answer (refreshed, paused or retried with backoff as usual).
REFUSED_AS_A_WHOLE = frozenset({400, 404, 405, 413, 414, 415, 431})
#: Turns of the event loop a held call waits at most for others to join it.
MAX_TURNS = 20
#: Operations that may go as subrequests (the others always go alone).
COMPOSABLE = frozenset({"query", "query_more", "create", "update", "upsert"})


#: The group of the calls being issued in this context (None: each call goes alone). The
#: object itself is kept (not its id), so a group's key cannot be reused while it is held.
_GROUP: ContextVar[object | None] = ContextVar("composite_group", default=None)
#: How many contexts share this context's group, when the one who opened it said so.
_MEMBERS: ContextVar[int | None] = ContextVar("composite_members", default=None)


@contextlib.contextmanager
def together(key: object, members: int | None = None) -> Iterator[None]:
    """Within: this context's calls may share composite calls with those of every other
    context inside ``together`` with the same ``key`` object (compared by identity).

    ``members``: how many contexts join the group (a batch's writers), when known; see
    :func:`single`.
    """
    group, count = _GROUP.set(key), _MEMBERS.set(members)
    try:
        yield
    finally:
        _MEMBERS.reset(count)
        _GROUP.reset(group)


@contextlib.contextmanager
def single() -> Iterator[None]:
    """Within: the caller issues one call at a time. When it is its group's only member,
    nothing could join that call, so it goes at once instead of being held for company (a
    held call waits a few turns of the event loop, which a busy service makes long)."""
    if _MEMBERS.get() != 1:
        yield
        return
    with together(None):
        yield


class Token(Protocol):
    """The access token the calls carry (the client's ``AccessToken``)."""

    @property
    def value(self) -> str: ...


#: One HTTP call of the client: (method, path with its query, token, operation, JSON body,
#: extra headers) -> (status, parsed body). Raises the client's transport errors.
Exchange = Callable[[str, str, Any, str, Any, Mapping[str, str] | None], Awaitable[tuple[int, Any]]]


@dataclass(slots=True)
class _Call:
    method: str
    target: str
    token: Any
    operation: str
    body: Any
    headers: Mapping[str, str] | None
    group: object
    answer: asyncio.Future[tuple[int, Any]]


class Composer:
    """Gathers calls issued together into composite calls; ``stop()`` when done."""

    def __init__(
        self,
        exchange: Exchange,
        composite_path: str,
        *,
        on_subrequest: Callable[[str, int], None] | None = None,
        turns: int = 3,
    ) -> None:
        self._exchange = exchange
        self._path = composite_path
        self._on_subrequest = on_subrequest
        #: Quiet event-loop turns before held calls go: the tasks of one batch issue their
        #: calls within a turn or two of each other (a gather starts its tasks a turn later).
        self._turns = turns
        self._held: list[_Call] = []
        self._release_task: asyncio.Task[None] | None = None
        #: Sending tasks and the calls each one answers.
        self._sending: dict[asyncio.Task[None], list[_Call]] = {}
        self._stopped = False

    async def call(
        self,
        method: str,
        target: str,
        token: Any,
        operation: str,
        body: Any,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, Any]:
        """Send one call, with whatever others are issued with it; its (status, body)."""
        if self._stopped:
            raise RuntimeError("the composer is stopped")
        group = _GROUP.get()
        if group is None:
            return await self._exchange(method, target, token, operation, body, headers)
        answer: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._held.append(_Call(method, target, token, operation, body, headers, group, answer))
        if self._release_task is None:
            self._release_task = asyncio.ensure_future(self._release())
            self._release_task.add_done_callback(self._released)
        return await answer

    def _released(self, task: asyncio.Task[None]) -> None:
        if self._release_task is task:
            self._release_task = None
        if task.cancelled() or task.exception() is not None:
            # stop(), or a bug: whoever is still held must not wait for ever.
            error = None if task.cancelled() else task.exception()
            held, self._held = self._held, []
            _settle(held, error)

    async def _release(self) -> None:
        # Wait until no call came in for ``turns`` turns of the loop (at most MAX_TURNS in
        # all): a batch's tasks issue their calls within a few turns of each other, and one
        # more await on their way only delays the release instead of splitting the group.
        quiet, seen = 0, len(self._held)
        for _ in range(MAX_TURNS):
            await asyncio.sleep(0)
            if len(self._held) == seen:
                quiet += 1
                if quiet >= self._turns:
                    break
            else:
                quiet, seen = 0, len(self._held)
        held, self._held = self._held, []
        self._release_task = None
        try:
            groups: dict[tuple[int, str], list[_Call]] = {}
            for c in held:
                if not c.answer.done():  # its caller gave up (cancelled) meanwhile
                    groups.setdefault((id(c.group), c.token.value), []).append(c)
            for calls in groups.values():
                for i in range(0, len(calls), MAX_SUBREQUESTS):
                    chunk = calls[i : i + MAX_SUBREQUESTS]
                    task = asyncio.ensure_future(self._send(chunk))
                    self._sending[task] = chunk
                    task.add_done_callback(self._sent)
        except BaseException as exc:
            # A bug (or a cancellation) here: the calls taken out of _held must not wait.
            spawned = {id(c) for chunk in self._sending.values() for c in chunk}
            _settle(
                [c for c in held if id(c) not in spawned],
                None if isinstance(exc, asyncio.CancelledError) else exc,
            )
            raise

    def _sent(self, task: asyncio.Task[None]) -> None:
        calls = self._sending.pop(task, [])
        # _send answers every call itself; this covers a task cancelled before it ever ran.
        _settle(calls, None if task.cancelled() else task.exception())

    async def _send(self, calls: list[_Call]) -> None:
        calls = [c for c in calls if not c.answer.done()]
        if not calls:
            return
        answers: list[tuple[int, Any]] | None
        try:
            if len(calls) == 1:
                c = calls[0]
                got = await self._exchange(
                    c.method, c.target, c.token, c.operation, c.body, c.headers
                )
                answers = [got]
            else:
                answers = await self._composite(calls)
                if answers is None:  # refused as a whole: each call goes alone, on its own
                    await asyncio.gather(*(self._send([c]) for c in calls))
                    return
        except asyncio.CancelledError:
            _settle(calls, None)
            raise
        except Exception as exc:  # SalesforceError, or a bug: each caller raises it
            _settle(calls, exc)
            return
        for c, got in zip(calls, answers, strict=True):
            if not c.answer.done():
                c.answer.set_result(got)

    async def _composite(self, calls: list[_Call]) -> list[tuple[int, Any]] | None:
        """One composite call: each call's (status, body), or None when Salesforce refused
        the composite call as a whole."""
        body = {
            "allOrNone": False,
            "compositeRequest": [
                {
                    "method": c.method,
                    "url": c.target,
                    "referenceId": f"r{i}",
                    **({"body": c.body} if c.body is not None else {}),
                    **({"httpHeaders": dict(c.headers)} if c.headers else {}),
                }
                for i, c in enumerate(calls)
            ],
        }
        status, answer = await self._exchange(
            "POST", self._path, calls[0].token, "composite", body, None
        )
        if status in REFUSED_AS_A_WHOLE:
            # The composite call itself was refused (its size, its form, a limit): that says
            # nothing about the calls inside. Each is then sent alone and answered on its own
            # (a create that succeeded must not be reported failed, and sent again, because
            # another call failed).
            logger.warning(
                "composite call refused; sending its calls one by one",
                extra={"status": status, "calls": len(calls)},
            )
            return None
        if status != 200:
            # The whole call failed (401, 403, 408, 429, 5xx): each caller classifies it as
            # its own (a new token, a pause, a retry with backoff).
            return [(status, answer)] * len(calls)
        entries = answer.get("compositeResponse") if isinstance(answer, dict) else None
        by_ref = {e.get("referenceId"): e for e in entries or () if isinstance(e, dict)}
        out: list[tuple[int, Any]] = []
        for i, c in enumerate(calls):
            entry = by_ref.get(f"r{i}")
            code = entry.get("httpStatusCode") if entry is not None else None
            if entry is None or not isinstance(code, int):
                raise SalesforceTransientError(
                    f"composite: no answer for subrequest r{i} ({c.operation})",
                    code="BAD_RESPONSE",
                )
            if self._on_subrequest is not None:
                self._on_subrequest(c.operation, code)
            out.append((code, entry.get("body")))
        return out

    async def stop(self) -> None:
        """Cancel what is held or in flight and wait for it (idempotent); its callers get
        CancelledError."""
        self._stopped = True
        tasks = list(self._sending)
        if self._release_task is not None:
            tasks.append(self._release_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        held, self._held = self._held, []
        _settle(held, None)


def _settle(calls: list[_Call], error: BaseException | None) -> None:
    """Answer every call not answered yet: with ``error``, or cancelled when None."""
    for c in calls:
        if c.answer.done():
            continue
        if error is None:
            c.answer.cancel()
        else:
            c.answer.set_exception(error)
