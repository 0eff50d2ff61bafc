"""Pure arithmetic of the bench: rates, bounds, percentiles, latency matching, the table.

Everything here takes plain numbers or journal rows and returns numbers or text, so it is unit
tested (``tests/unit/test_bench_figures.py``) apart from the processes that produce them.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Records an sObject Collections call takes, and people a query is meant to look up.
PER_CALL = 200

#: Journal kinds that write records.
WRITE_KINDS = ("create", "update", "upsert")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def steady_rate(
    points: Iterable[tuple[float, int]], low: float = 0.1, high: float = 0.9
) -> tuple[float, float]:
    """Records per second between the moments ``low`` and ``high`` of the total were done.

    ``points`` are (time, records) per call; the ramp-up and the tail (start-up, the last
    partial batches) are left out. Returns (rate, seconds measured); (NaN, 0) when too few.
    """
    ordered = sorted(points)
    total = sum(n for _, n in ordered)
    if total <= 0 or len(ordered) < 3:
        return math.nan, 0.0
    start_at = end_at = None
    start_n = end_n = 0
    done = 0
    for at, n in ordered:
        done += n
        if start_at is None and done >= low * total:
            start_at, start_n = at, done
        if done >= high * total:
            end_at, end_n = at, done
            break
    if start_at is None or end_at is None or end_at <= start_at:
        return math.nan, 0.0
    return (end_n - start_n) / (end_at - start_at), end_at - start_at


def match_latencies(
    produced: Iterable[tuple[str, float]], writes: Iterable[tuple[str, float]]
) -> tuple[list[float], int]:
    """Seconds from each event's production to the first write of its person at or after it.

    ``produced``: (person key, produce time); ``writes``: (person key, write time). Returns
    the latencies and how many events no write followed (nothing written for them).
    """
    by_key: dict[str, list[float]] = defaultdict(list)
    for key, at in writes:
        by_key[key].append(at)
    for times in by_key.values():
        times.sort()
    out: list[float] = []
    missing = 0
    for key, at in produced:
        times = by_key.get(key, [])
        i = bisect.bisect_left(times, at)
        if i == len(times):
            missing += 1
            continue
        out.append(times[i] - at)
    return out, missing


@dataclass
class CallFigures:
    """Salesforce calls of one run, from the emulator's journal summary."""

    #: (kind, sObject) -> [calls, records or keys sent, succeeded]
    groups: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: Iterable[Mapping[str, object]]) -> CallFigures:
        """From ``/_emulator/stats``' ``journal.summary`` rows."""
        groups: dict[tuple[str, str], list[int]] = {}
        for row in summary:
            key = (str(row["kind"]), str(row["sobject"]))
            groups[key] = [int(str(row["calls"])), int(str(row["sent"])), int(str(row["ok"]))]
        return cls(groups)

    def calls(self, kinds: Sequence[str] | None = None) -> int:
        """Calls of these kinds (all journaled kinds by default)."""
        return sum(v[0] for (k, _), v in self.groups.items() if kinds is None or k in kinds)

    def sent(self, kinds: Sequence[str]) -> int:
        """Records (or query keys) sent by calls of these kinds."""
        return sum(v[1] for (k, _), v in self.groups.items() if k in kinds)

    def records_per_write(self) -> float:
        """Average records per write call (NaN without writes)."""
        calls = self.calls(WRITE_KINDS)
        return self.sent(WRITE_KINDS) / calls if calls else math.nan

    def packed_bound(self) -> int:
        """Fewest calls that could have carried the same work: each (kind, sObject)'s records
        or query keys in calls of :data:`PER_CALL`."""
        return sum(
            math.ceil(v[1] / PER_CALL)
            for (k, _), v in self.groups.items()
            if k in (*WRITE_KINDS, "query")
        )

    def lines(self) -> list[str]:
        """One line per (kind, sObject): calls, sent, average per call, fill."""
        out = []
        for (kind, sobject), (calls, sent, ok) in sorted(self.groups.items()):
            per = sent / calls if calls else 0.0
            if kind == "composite":
                out.append(
                    f"composite calls   {calls:6,}, carrying {sent:,} of the queries and writes "
                    f"below ({per:.1f} each, 5 at most)"
                )
                continue
            what = "keys" if kind == "query" else "records"
            out.append(
                f"{kind:7} {sobject:8} {calls:6,} calls  {sent:9,} {what:7} "
                f"{per:6.1f} per call ({per / PER_CALL:4.0%} of {PER_CALL})  ok {ok:,}"
            )
        return out


def people_bound(written: Mapping[tuple[str, str], set[str]], queried: Mapping[str, int]) -> int:
    """Calls if one window held the whole run: each (sObject, action)'s distinct people in
    calls of 200, plus each queried sObject's distinct people in queries of 200."""
    writes = sum(math.ceil(len(keys) / PER_CALL) for keys in written.values())
    return writes + sum(math.ceil(n / PER_CALL) for n in queried.values())


@dataclass
class Row:
    """One line of the summary table."""

    name: str
    figure: float
    unit: str
    baseline: float | None
    baseline_name: str
    #: Pass when ratio >= target (or <= target with ``at_most``); None: no target.
    target: float | None
    at_most: bool = False
    #: Why a missed target was missed (resources, where the time went).
    why: str = ""
    #: Compare the figure itself with the target instead of the ratio to the baseline.
    absolute: bool = False

    @property
    def ratio(self) -> float:
        """The figure over its baseline (NaN without one)."""
        if self.baseline is None or self.baseline == 0 or math.isnan(self.baseline):
            return math.nan
        return self.figure / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None without a target or when not measurable)."""
        if self.target is None:
            return None
        value = self.figure if self.absolute else self.ratio
        if math.isnan(value):
            return False
        return value <= self.target if self.at_most else value >= self.target

    def target_text(self) -> str:
        """The target as printed."""
        if self.target is None:
            return "-"
        sign = "<=" if self.at_most else ">="
        if self.absolute:
            return f"{sign} {_num(self.target)} {self.unit}"
        return f"ratio {sign} {self.target:g}"


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def render_table(rows: Sequence[Row]) -> str:
    """The summary table (figure, baseline, ratio, target, verdict) and the notes on misses."""
    header = ("measurement", "figure", "baseline", "ratio", "target", "")
    cells = [header]
    for r in rows:
        baseline = f"{_num(r.baseline)} ({r.baseline_name})" if r.baseline is not None else "-"
        verdict = {True: "ok", False: "MISSED", None: ""}[r.met]
        cells.append(
            (
                r.name,
                f"{_num(r.figure)} {r.unit}",
                baseline,
                _num(r.ratio) if r.baseline is not None else "-",
                r.target_text(),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"- {r.name}: MISSED. {r.why}" for r in rows if r.met is False and r.why]
    if notes:
        lines += ["", "Missed targets, and why:", *notes]
    return "\n".join(lines)


def rss_profile(samples: Sequence[tuple[int, int]], total: int) -> tuple[list[float], float]:
    """Resident MB when 25%, 50%, 75% and 100% of ``total`` outputs were seen, and its growth
    while the backlog drained (least squares over the samples between 25% and 90%, leaving
    out the warm-up and the end, where the backlog and memory shrink), in MB per 100,000
    outputs; NaN when not measurable.

    A flat middle means memory is bounded; steady growth means something is kept per event
    (or per anything that grows with the run)."""
    marks: list[float] = []
    for share in (0.25, 0.5, 0.75, 1.0):
        at = [kib for count, kib in samples if count >= share * total]
        if not at and share == 1.0 and samples:
            at = [samples[-1][1]]  # the run ended between two samples: the last one
        marks.append(at[0] / 1024 if at else math.nan)
    middle = [(c, kib / 1024) for c, kib in samples if 0.25 * total <= c <= 0.9 * total]
    if len(middle) < 3:
        return marks, math.nan
    mean_c = sum(c for c, _ in middle) / len(middle)
    mean_m = sum(m for _, m in middle) / len(middle)
    spread = sum((c - mean_c) ** 2 for c, _ in middle)
    if spread == 0:
        return marks, math.nan
    slope = sum((c - mean_c) * (m - mean_m) for c, m in middle) / spread
    return marks, slope * 100_000
