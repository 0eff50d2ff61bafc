"""Running awaitables side by side so that none outlives a failure of another."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """Await ``aws`` concurrently; their results in order.

    When one raises, or the caller is cancelled, the others are cancelled and awaited before
    the error goes on (``asyncio.gather`` leaves them running): a Salesforce write must not
    land behind the retry of the attempt that failed. A lone awaitable is awaited in the
    caller's task: a task of its own would only start a turn of the loop later (under a
    backlog, a turn is the take-in of a chunk of a poll).
    """
    if len(aws) == 1:
        return [await aws[0]]
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
