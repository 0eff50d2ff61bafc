"""What the org counts: the daily API allowance (``Sforce-Limit-Info``) and the emulator's own
per-kind call and outcome statistics that tests assert on."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.devkit.emulator.errors import JsonObj

__all__ = ["STAT_KEYS", "ApiUsage", "Stats"]

STAT_KEYS: tuple[str, ...] = (
    "token",
    "query",
    "query_more",
    "describe",
    "create",
    "update",
    "upsert",
    "delete",
    "limits",
    "versions",
    "api_calls",
    "http_401",
    "http_403",
    "http_414",
    "http_5xx",
    "faults_injected",
    "records_created",
    "records_updated",
    "records_deleted",
)


class Stats:
    """Counters by call kind and outcome; every key of :data:`STAT_KEYS` is always present."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    def incr(self, key: str, n: int = 1) -> None:
        """Add ``n`` to ``key``."""
        self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters."""
        return dict(self._counts)

    def reset(self) -> None:
        """Zero every counter."""
        self._counts = dict.fromkeys(STAT_KEYS, 0)


@dataclass
class ApiUsage:
    """The org's rolling 24-hour API request count, as shown in ``Sforce-Limit-Info``."""

    used: int
    limit: int

    @property
    def header(self) -> str:
        """The value of the ``Sforce-Limit-Info`` header."""
        return f"api-usage={self.used}/{self.limit}"

    def document(self) -> JsonObj:
        """The ``limits`` resource: the daily API request allowance."""
        return {
            "DailyApiRequests": {
                "Max": self.limit,
                "Remaining": max(0, self.limit - self.used),
            }
        }
