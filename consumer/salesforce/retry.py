"""Backoff policy: exponential with full jitter inside a time budget (clock and RNG injected)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for successive retries of one operation.

    ``next_delay()`` returns the delay before the next attempt, or None once the budget (time
    since the first failure) would be spent by waiting.
    """

    initial: float
    maximum: float
    budget: float
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0
    _started: float | None = None

    def next_delay(self) -> float | None:
        """The next delay in seconds (full jitter), or None when the budget is spent."""
        now = self.clock()
        if self._started is None:
            self._started = now
        cap = min(self.maximum, self.initial * (2**self.attempts))
        delay = self.rng.uniform(0, cap)
        self.attempts += 1
        if now - self._started + delay > self.budget:
            return None
        return delay

    def elapsed(self) -> float:
        """Seconds since the first failure (0 before any)."""
        return 0.0 if self._started is None else self.clock() - self._started
