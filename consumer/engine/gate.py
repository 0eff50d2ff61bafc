"""The write gate: the pause policy every batch passes before it writes to Salesforce.

One gate for the whole process. When a write fails in a way that concerns every batch (the
org's daily limit, this service's share of it, a refused login, an outage that outlasted the
retry budget, an error nobody classified), the gate closes for a while: every batch waits on
it, nothing is acknowledged, and the poll loop pauses the partitions and keeps polling. It
decides by the error's ``reaction`` (:mod:`consumer.errors`), never by message text.

When a pause ends, one write goes first (it probes Salesforce) and the others wait for its
answer: a spent quota costs a call or two per pause, not one per waiting batch. The other
targets of the probe's batch go with it (they wait for each other's reads before writing).

Pauses for the daily limit, the API budget, a refused login and an outage are deliberate: the
process is healthy and waiting. A pause after an unexpected error is not: health turns red
once no batch finished for ``HEALTH_PROGRESS_STALL_SECONDS`` and Kubernetes restarts the pod.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from consumer.engine.health import Health, PauseState
from consumer.errors import Reaction, SyncError
from consumer.observability.metrics import Metrics

logger = logging.getLogger(__name__)

#: Pause reasons after which the process is healthy, only waiting.
DELIBERATE = frozenset({"daily_limit", "api_budget", "authentication", "unavailable"})


class Verdict(Enum):
    """What the batch does after the gate looked at its error."""

    RETRY = "retry"  # wait for the gate, then write again
    GIVE_UP = "give_up"  # report the people still pending as failed (dead-letter policy)


@dataclass(frozen=True)
class GatePolicy:
    """How long each kind of pause lasts, and what a spent retry budget does."""

    pause_seconds: Mapping[str, float]
    #: Pause length for reasons not in ``pause_seconds`` (unexpected errors).
    default_pause_seconds: float
    on_retry_exhausted: str = "pause"  # "pause" | "dead_letter"


class WriteGate:
    """Opens and closes writing to Salesforce for every batch."""

    def __init__(
        self,
        policy: GatePolicy,
        metrics: Metrics,
        health: Health,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self.state = PauseState()
        #: True while one write probes Salesforce after a pause ended.
        self._probing = False
        #: The probe's batch (what its writers share): they go with it.
        self._probe_owner: object | None = None
        self._probe_over = asyncio.Event()
        #: Writes waiting in :meth:`wait_open` now (the probe among them).
        self._waiting = 0

    def closed(self) -> bool:
        """Whether writing is paused now."""
        return self.state.active(self._clock())

    def holding(self) -> bool:
        """Whether the poll loop keeps partitions paused: writing is paused, or its pause is
        over and a write waiting at the gate (the probe) has no answer yet.

        Once the pause is over with no write waiting (a rebalance abandoned them all),
        fetching resumes: the next batch is the probe. Holding on then would wait for good
        for a probe that nothing fetched could make.
        """
        if self.state.reason is None:
            return False
        return self.closed() or self._probing or self._waiting > 0

    def deliberate(self) -> bool:
        """Whether the current pause is one a healthy process waits through."""
        return self.closed() and self.state.reason in DELIBERATE

    async def wait_open(self, owner: object | None = None) -> bool:
        """Return once this write may go; True when it is the probe after a pause (then the
        caller reports its result with :meth:`succeeded`, :meth:`failed` or
        :meth:`abandoned`). Writes of the same ``owner`` (one batch's targets) as the probe
        go with it, not as probes."""
        self._waiting += 1
        try:
            while True:
                if self.state.reason is None:
                    return False
                remaining = self.state.remaining(self._clock())
                if remaining > 0:
                    # Polled, not an Event: another batch may extend the pause meanwhile.
                    await asyncio.sleep(min(1.0, remaining))
                    continue
                if not self._probing:
                    self._probing = True
                    self._probe_owner = owner
                    self._probe_over.clear()
                    return True
                if owner is not None and owner is self._probe_owner:
                    return False
                await self._probe_over.wait()
        finally:
            self._waiting -= 1

    def _probe_done(self) -> None:
        self._probing = False
        self._probe_owner = None
        self._probe_over.set()

    def abandoned(self) -> None:
        """The probe was cancelled before it had an answer: let another write probe."""
        self._probe_done()

    def succeeded(self) -> None:
        """A write went through: Salesforce takes writes again."""
        self._health.salesforce_ok = True
        reason = self.state.clear()
        self._probe_done()
        if reason is not None:
            self._metrics.paused.set(0)
            logger.info("writing to salesforce resumed", extra={"after": reason})

    def failed(self, exc: BaseException, *, probe: bool = False) -> Verdict:
        """Decide what a batch does about an error its write raised (after closing the gate
        when the error concerns every batch); ``probe`` says the write was the probe."""
        try:
            return self._decide(exc)
        finally:
            if probe:
                self._probe_done()

    def _decide(self, exc: BaseException) -> Verdict:
        if not isinstance(exc, SyncError):
            # A bug or an answer nobody foresaw: keep the batch, never lose it, and let health
            # go red if it does not clear up.
            self._close("unexpected_error", exc)
            return Verdict.RETRY
        reaction = exc.reaction
        if reaction is Reaction.EXHAUSTED and self._policy.on_retry_exhausted == "dead_letter":
            logger.error(
                "salesforce still failing; events dead-lettered", extra={"error": str(exc)}
            )
            return Verdict.GIVE_UP
        if reaction is Reaction.CONFIGURATION:
            self._health.salesforce_ok = False
        if reaction in (Reaction.PAUSE, Reaction.CONFIGURATION, Reaction.EXHAUSTED):
            self._close(exc.pause_reason, exc)
            return Verdict.RETRY
        # RETRY / REFRESH / REPORT never reach here (the writer handles them); anything else
        # is unexpected at this level.
        self._close("unexpected_error", exc)
        return Verdict.RETRY

    def _close(self, reason: str, exc: BaseException) -> None:
        seconds = self._policy.pause_seconds.get(reason, self._policy.default_pause_seconds)
        if self.state.pause(reason, self._clock() + seconds):
            self._metrics.pauses.labels(reason).inc()
            self._metrics.paused.set(1)
            if isinstance(exc, SyncError) and exc.reaction is not Reaction.STOP:
                logger.error(
                    "writing to salesforce paused",
                    extra={"reason": reason, "pause_s": seconds, "error": str(exc)},
                )
            else:
                # Logged once per pause, with its traceback: the same error on every retry
                # would only repeat it.
                logger.error(
                    "unexpected error writing a batch; writing paused",
                    extra={"reason": reason, "pause_s": seconds},
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
