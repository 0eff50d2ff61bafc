"""gather_or_cancel: nothing keeps running behind a failure or a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from consumer.tasks import gather_or_cancel

pytestmark = pytest.mark.asyncio


class Slow:
    """An awaitable that waits until cancelled, and says whether it was (and is over)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False
        self.over = False

    async def run(self) -> int:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.over = True
        return 0


async def test_results_come_in_order() -> None:
    async def value(v: int, turns: int) -> int:
        for _ in range(turns):
            await asyncio.sleep(0)
        return v

    assert await gather_or_cancel(value(1, 3), value(2, 0), value(3, 1)) == [1, 2, 3]


async def test_a_failure_cancels_and_awaits_the_others() -> None:
    slow = Slow()

    async def fail() -> int:
        await slow.started.wait()
        raise LookupError("paused")

    with pytest.raises(LookupError):
        await gather_or_cancel(slow.run(), fail())
    assert slow.cancelled and slow.over  # over by the time the error reached us


async def test_a_cancelled_caller_leaves_nothing_running() -> None:
    slow = Slow()
    caller = asyncio.ensure_future(gather_or_cancel(slow.run()))
    await slow.started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert slow.cancelled and slow.over


async def test_a_lone_awaitable_runs_in_the_callers_task() -> None:
    async def whose() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    me = asyncio.current_task()
    assert await gather_or_cancel(whose()) == [me]
