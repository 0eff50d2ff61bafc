"""Liveness and readiness, as the pipeline reports them and the HTTP server serves them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Health:
    """What /healthz and /readyz answer from.

    Live while the poll loop keeps turning; ready once the consumer joined its group and
    Salesforce accepted our credentials.
    """

    stall_seconds: float = 120.0
    last_poll: float | None = None
    joined: bool = False
    salesforce_ok: bool = False
    started: bool = False

    def polled(self, now: float) -> None:
        """The poll loop came round."""
        self.last_poll = now

    def live(self, now: float) -> tuple[bool, str]:
        """Whether the process is making progress, and why not."""
        if self.last_poll is None:
            return True, "starting"
        idle = now - self.last_poll
        if idle > self.stall_seconds:
            return False, f"poll loop stalled for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether the service should receive traffic (and count as available)."""
        if not self.salesforce_ok:
            return False, "salesforce authentication pending or failing"
        if not self.joined:
            return False, "not yet in the consumer group"
        return True, "ok"


@dataclass
class PauseState:
    """Why and until when writing to Salesforce is paused (monotonic clock seconds).

    Pure. A new pause never shortens a longer one already in force.
    """

    reason: str | None = None
    until: float = 0.0

    def pause(self, reason: str, until: float) -> bool:
        """Pause until ``until``; returns True when this starts a new pause."""
        fresh = self.reason is None
        if fresh or until >= self.until:
            self.reason, self.until = reason, until
        return fresh

    def active(self, now: float) -> bool:
        """Whether writing is paused at ``now``."""
        return self.reason is not None and now < self.until

    def remaining(self, now: float) -> float:
        """Seconds left, 0 when not paused."""
        return max(0.0, self.until - now) if self.reason is not None else 0.0

    def clear(self) -> str | None:
        """End the pause (after a successful write); returns the reason it had."""
        reason, self.reason, self.until = self.reason, None, 0.0
        return reason
