"""Waiting that a stop request ends at once.

``asyncio.wait_for(stop.wait(), t)`` is not used for this: on Python 3.11 a cancellation that
arrives as the inner wait completes (the stop event was just set) is swallowed, and a retry
loop written around it goes on after its task was cancelled.
"""

from __future__ import annotations

import asyncio


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True when stopped."""
    if stop.is_set():
        return True
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(0.0, seconds))
    finally:
        waiter.cancel()
    return stop.is_set()
