"""The composer on an in-memory exchange: grouping, cancelled callers, malformed answers, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from consumer.errors import SalesforceTransientError
from consumer.salesforce.composite import Composer, single, together

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Tok:
    value: str


class Exchange:
    """Answers each call (or each subrequest) 200 with its target; can be held or broken."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.sending = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.drop_answers = False

    async def __call__(
        self,
        method: str,
        target: str,
        token: Any,
        operation: str,
        body: Any,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, Any]:
        self.sent.append((operation, target, body))
        self.sending.set()
        if self.gate is not None:
            await self.gate.wait()
        if operation != "composite":
            return 200, {"target": target}
        subs = body["compositeRequest"]
        if self.drop_answers:
            subs = subs[:-1]
        return 200, {
            "compositeResponse": [
                {"referenceId": s["referenceId"], "httpStatusCode": 200, "body": s["url"]}
                for s in subs
            ]
        }


def ask(composer: Composer, target: str, token: str = "a") -> Awaitable[tuple[int, Any]]:
    """A query call to ``target`` with the token ``token``."""
    return composer.call("GET", target, Tok(token), "query", None, None)


async def test_calls_are_grouped_by_token_and_group() -> None:
    ex = Exchange()
    composer = Composer(ex, "/composite")
    batch = object()
    with together(batch):
        answers = await asyncio.gather(
            ask(composer, "/q1", "a"),
            ask(composer, "/q2", "a"),
            ask(composer, "/q3", "b"),
        )
    assert list(answers) == [(200, "/q1"), (200, "/q2"), (200, {"target": "/q3"})]
    assert sorted(op for op, _, _ in ex.sent) == ["composite", "query"]  # b's goes alone
    await composer.stop()


async def test_a_caller_cancelled_while_held_is_not_sent() -> None:
    ex = Exchange()
    composer = Composer(ex, "/composite")
    with together(object()):
        gone = asyncio.ensure_future(ask(composer, "/gone", "a"))
        kept = asyncio.ensure_future(ask(composer, "/kept", "a"))
        await asyncio.sleep(0)
        gone.cancel()
        assert await kept == (200, {"target": "/kept"})
    assert [t for _, t, _ in ex.sent] == ["/kept"]
    await composer.stop()


async def test_a_composite_answer_missing_a_subrequest_is_a_transient_error() -> None:
    ex = Exchange()
    ex.drop_answers = True
    composer = Composer(ex, "/composite")
    with together(object()):
        results = await asyncio.gather(
            ask(composer, "/q1", "a"),
            ask(composer, "/q2", "a"),
            return_exceptions=True,
        )
    assert all(isinstance(r, SalesforceTransientError) for r in results)
    assert all(r.code == "BAD_RESPONSE" for r in results if isinstance(r, SalesforceTransientError))
    await composer.stop()


async def test_stop_cancels_what_is_in_flight_and_is_idempotent() -> None:
    ex = Exchange()
    ex.gate = asyncio.Event()
    composer = Composer(ex, "/composite")
    with together(object()):
        calls = [asyncio.ensure_future(ask(composer, f"/q{i}", "a")) for i in range(2)]
        await ex.sending.wait()
    await composer.stop()
    await composer.stop()
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
    with pytest.raises(RuntimeError):
        await ask(composer, "/late", "a")


async def test_stop_while_calls_are_held_leaves_no_caller_waiting() -> None:
    ex = Exchange()
    composer = Composer(ex, "/composite")
    with together(object()):
        calls = [asyncio.ensure_future(ask(composer, f"/q{i}", "a")) for i in range(3)]
        await asyncio.sleep(0)  # held: the composer is still waiting for more
    await composer.stop()
    done, pending = await asyncio.wait(calls, timeout=1)
    assert not pending
    assert all(c.cancelled() for c in done)
    assert ex.sent == []


async def test_a_bug_in_the_exchange_reaches_each_caller_as_itself() -> None:
    async def broken(*args: Any) -> tuple[int, Any]:
        raise TypeError("a bug")

    composer = Composer(broken, "/composite")
    with together(object()):
        results = await asyncio.gather(
            ask(composer, "/q1", "a"),
            ask(composer, "/q2", "a"),
            return_exceptions=True,
        )
    assert [type(r) for r in results] == [TypeError, TypeError]  # not a cancellation
    await composer.stop()


async def test_a_composite_call_refused_as_a_whole_sends_its_calls_alone() -> None:
    class Refusing(Exchange):
        async def __call__(self, *args: Any) -> tuple[int, Any]:
            if args[3] == "composite":
                self.sent.append((args[3], args[1], args[4]))
                return 400, [{"errorCode": "INVALID_INPUT", "message": "too large"}]
            return await super().__call__(*args)

    ex = Refusing()
    composer = Composer(ex, "/composite")
    with together(object()):
        answers = await asyncio.gather(
            ask(composer, "/q1", "a"),
            ask(composer, "/q2", "a"),
        )
    assert list(answers) == [(200, {"target": "/q1"}), (200, {"target": "/q2"})]
    assert [op for op, _, _ in ex.sent] == ["composite", "query", "query"]
    await composer.stop()


class RefusingComposite(Exchange):
    """Refuses composite calls with ``status``; a call to ``/broken`` fails alone."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    async def __call__(self, *args: Any) -> tuple[int, Any]:
        if args[3] == "composite":
            self.sent.append((args[3], args[1], args[4]))
            return self.status, [{"errorCode": "X", "message": "refused"}]
        if args[1] == "/broken":
            self.sent.append((args[3], args[1], args[4]))
            raise SalesforceTransientError("create: ConnectionError", code="CONNECTION_ERROR")
        return await super().__call__(*args)


async def test_a_refused_composite_call_answers_each_call_alone_even_when_one_fails() -> None:
    # The create that succeeded alone must not be reported failed (it would be sent again).
    ex = RefusingComposite(400)
    composer = Composer(ex, "/composite")
    with together(object()):
        results: list[Any] = await asyncio.gather(
            composer.call("POST", "/created", Tok("a"), "create", None, None),
            composer.call("POST", "/broken", Tok("a"), "create", None, None),
            return_exceptions=True,
        )
    assert results[0] == (200, {"target": "/created"})
    assert isinstance(results[1], SalesforceTransientError)
    await composer.stop()


@pytest.mark.parametrize("status", [408, 429, 503, 401])
async def test_a_throttled_or_failed_composite_call_is_every_callers_answer(status: int) -> None:
    # Not sent one by one: each caller backs off, refreshes or retries as for its own call.
    ex = RefusingComposite(status)
    composer = Composer(ex, "/composite")
    with together(object()):
        answers = await asyncio.gather(
            ask(composer, "/q1", "a"),
            ask(composer, "/q2", "a"),
        )
    assert [a[0] for a in answers] == [status, status]
    assert [op for op, _, _ in ex.sent] == ["composite"]
    await composer.stop()


async def test_a_bug_while_grouping_leaves_no_caller_waiting() -> None:
    class BadToken:
        @property
        def value(self) -> str:
            raise RuntimeError("a bug")

    composer = Composer(Exchange(), "/composite")
    with together(object()):
        call = asyncio.ensure_future(composer.call("GET", "/q", BadToken(), "query", None, None))
        done, _ = await asyncio.wait([call], timeout=1)
    assert done and isinstance(call.exception(), RuntimeError)
    await composer.stop()


async def test_calls_that_keep_coming_a_turn_or_two_apart_join_one_group() -> None:
    # Writers reach their calls a couple of awaits apart, in a chain longer than the quiet
    # turns: still one composite call (a fixed wait would have split off the last one).
    ex = Exchange()
    composer = Composer(ex, "/composite", turns=3)

    async def after(turns: int, target: str) -> tuple[int, Any]:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await ask(composer, target, "a")

    with together(object()):
        answers = await asyncio.gather(after(0, "/a"), after(2, "/b"), after(4, "/c"))
    assert [a[1] for a in answers] == ["/a", "/b", "/c"]
    assert [op for op, _, _ in ex.sent] == ["composite"]
    await composer.stop()


async def test_a_lone_call_of_a_groups_only_member_goes_at_once() -> None:
    # Nothing can join it, so it is not held for the quiet turns: the exchange is entered
    # before the caller's task yields even once.
    ex = Exchange()
    composer = Composer(ex, "/composite", turns=3)
    with together(object(), members=1), single():
        call = asyncio.ensure_future(ask(composer, "/alone"))
        await asyncio.sleep(0)  # the call's own task runs once
        assert [t for _, t, _ in ex.sent] == ["/alone"]
        assert await call == (200, {"target": "/alone"})
    await composer.stop()


@pytest.mark.parametrize("members", [2, None])
async def test_a_lone_call_is_held_while_others_may_join_its_group(members: int | None) -> None:
    # Another member (or members unknown) may still issue a call: it waits for company.
    ex = Exchange()
    composer = Composer(ex, "/composite", turns=3)
    batch = object()

    async def other() -> tuple[int, Any]:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await ask(composer, "/other")

    with together(batch, members=members):
        with single():
            first = asyncio.ensure_future(ask(composer, "/first"))
        answers = await asyncio.gather(first, other())
    assert [a[1] for a in answers] == ["/first", "/other"]
    assert [op for op, _, _ in ex.sent] == ["composite"]
    await composer.stop()


async def test_several_calls_of_a_groups_only_member_still_share_a_composite_call() -> None:
    # Outside single(): the member issues its calls at once (updates beside creates).
    ex = Exchange()
    composer = Composer(ex, "/composite", turns=3)
    with together(object(), members=1):
        answers = await asyncio.gather(ask(composer, "/u"), ask(composer, "/c"))
    assert [a[1] for a in answers] == ["/u", "/c"]
    assert [op for op, _, _ in ex.sent] == ["composite"]
    await composer.stop()
