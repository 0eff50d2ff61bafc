"""Liveness and readiness, as the pipeline reports them and the HTTP server serves them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Health:
    """What /healthz and /readyz answer from.

    Live while the poll loop keeps turning, batches keep finishing whenever work is pending
    (a deliberate pause, such as a spent API quota, does not count against it), and offset
    commits do not keep failing. Ready once the consumer joined its group and Salesforce
    accepted our credentials.
    """

    poll_stall_seconds: float = 60.0
    progress_stall_seconds: float = 600.0
    last_poll: float | None = None
    last_progress: float | None = None
    commit_failing_since: float | None = None
    joined: bool = False
    salesforce_ok: bool = False

    def polled(self, now: float, *, pending: bool, paused: bool) -> None:
        """The poll loop came round; with nothing pending (or a deliberate pause) all is well."""
        self.last_poll = now
        if not pending or paused or self.last_progress is None:
            self.last_progress = now

    def progressed(self, now: float) -> None:
        """A batch finished (its outcomes are acknowledged)."""
        self.last_progress = now

    def commit_succeeded(self) -> None:
        """An offset commit was acknowledged."""
        self.commit_failing_since = None

    def commit_failed(self, now: float) -> None:
        """An offset commit failed."""
        if self.commit_failing_since is None:
            self.commit_failing_since = now

    def live(self, now: float) -> tuple[bool, str]:
        """Whether the process is making progress, and why not."""
        if self.last_poll is None:
            return True, "starting"
        if now - self.last_poll > self.poll_stall_seconds:
            return False, f"poll loop stalled for {now - self.last_poll:.0f}s"
        if self.last_progress is not None and now - self.last_progress > (
            self.progress_stall_seconds
        ):
            return False, f"no batch finished for {now - self.last_progress:.0f}s with work pending"
        if self.commit_failing_since is not None and now - self.commit_failing_since > (
            self.poll_stall_seconds
        ):
            return False, f"offset commits failing for {now - self.commit_failing_since:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether the service should count as available."""
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
