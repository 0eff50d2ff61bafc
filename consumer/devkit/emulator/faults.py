"""Injected trouble: canned HTTP answers, per-record errors, random failures, latency, hangs.

Everything here is queued by a test through
:class:`~consumer.devkit.emulator.app.SalesforceEmulator` and consumed by the HTTP layer (HTTP
faults, hangs, latency, random 503s) or by the collections code (record faults, random row
locks).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FaultPlan", "HttpFault", "RecordFault", "html_page"]


@dataclass
class HttpFault:
    """A canned response given instead of running the next matching call(s)."""

    kind: str | None
    status: int
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    remaining: int


@dataclass
class RecordFault:
    """A per-record error given to the next matching record(s) of collections calls."""

    kind: str | None  # None: any call that saves records (create, update, upsert)
    status_code: str
    message: str
    fields: list[str]
    email: str | None
    remaining: int


@dataclass
class _Hang:
    kind: str | None
    seconds: float
    remaining: int


def html_page(status: int, reason: str, detail: str) -> bytes:
    """The kind of HTML page Salesforce's front end serves for 414 and 5xx answers."""
    return (
        f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1>"
        f"<p>{detail}</p></body></html>"
    ).encode()


def _kind_matches(wanted: str | None, kind: str) -> bool:
    # None means "any API call"; the token endpoint is not an API call and must be asked for.
    return kind == wanted if wanted is not None else kind != "token"


class FaultPlan:
    """Injected faults, random faults, latency and hangs."""

    def __init__(self) -> None:
        self._http: list[HttpFault] = []
        self._records: list[RecordFault] = []
        self._hangs: list[_Hang] = []
        self.http_503_rate = 0.0
        self.lock_rate = 0.0
        self._fault_rng = random.Random()
        self.latency_base_ms = 0.0
        self.latency_jitter_ms = 0.0
        self._latency_rng = random.Random()

    def add_http(self, fault: HttpFault) -> None:
        """Queue an HTTP fault."""
        self._http.append(fault)

    def add_record(
        self,
        kind: str | None,
        status_code: str,
        message: str,
        count: int,
        fields: list[str] | None,
        email: str | None,
    ) -> None:
        """Queue a per-record error for collections calls of ``kind`` (None: any save)."""
        self._records.append(
            RecordFault(kind, status_code, message, list(fields or []), email, count)
        )

    def add_hang(self, kind: str | None, seconds: float, count: int) -> None:
        """Queue a delay for the next ``count`` calls of ``kind``."""
        self._hangs.append(_Hang(kind, seconds, count))

    def set_random(self, http_503_rate: float, lock_rate: float, seed: int | None) -> None:
        """Configure random 503s and row-lock errors."""
        self.http_503_rate = http_503_rate
        self.lock_rate = lock_rate
        self._fault_rng = random.Random(seed)

    def set_latency(self, base_ms: float, jitter_ms: float, seed: int | None) -> None:
        """Configure the delay added to every call."""
        self.latency_base_ms = base_ms
        self.latency_jitter_ms = jitter_ms
        self._latency_rng = random.Random(seed)

    def clear(self) -> None:
        """Forget every fault, random rate, latency and hang."""
        self._http.clear()
        self._records.clear()
        self._hangs.clear()
        self.set_random(0.0, 0.0, None)
        self.set_latency(0.0, 0.0, None)

    def take_http(self, kind: str) -> HttpFault | None:
        """The first queued HTTP fault matching ``kind``, consuming one of its uses."""
        for fault in self._http:
            if _kind_matches(fault.kind, kind):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._http.remove(fault)
                return fault
        return None

    def take_hang(self, kind: str) -> float:
        """Seconds to hang before answering a call of ``kind`` (0 when none queued)."""
        for hang in self._hangs:
            if _kind_matches(hang.kind, kind):
                hang.remaining -= 1
                if hang.remaining <= 0:
                    self._hangs.remove(hang)
                return hang.seconds
        return 0.0

    def latency_seconds(self) -> float:
        """The configured base latency plus a random share of the jitter."""
        if self.latency_base_ms <= 0 and self.latency_jitter_ms <= 0:
            return 0.0
        jitter = self._latency_rng.uniform(0.0, self.latency_jitter_ms)
        return max(0.0, self.latency_base_ms + jitter) / 1000.0

    def roll_503(self) -> bool:
        """Whether this API call should get a random 503."""
        return self.http_503_rate > 0 and self._fault_rng.random() < self.http_503_rate

    def roll_lock(self) -> bool:
        """Whether this record should fail with UNABLE_TO_LOCK_ROW."""
        return self.lock_rate > 0 and self._fault_rng.random() < self.lock_rate

    def take_record(self, kind: str, emails: Iterable[object]) -> RecordFault | None:
        """The first queued per-record fault matching ``kind`` and one of ``emails``."""
        folded = {e.casefold() for e in emails if isinstance(e, str)}
        for fault in self._records:
            if fault.kind != kind and not (fault.kind is None and kind != "delete"):
                continue
            if fault.email is not None and fault.email.casefold() not in folded:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._records.remove(fault)
            return fault
        return None
