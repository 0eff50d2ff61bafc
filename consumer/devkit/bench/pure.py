"""The pure path in process: parse and parse + dedup + map + report, against ``orjson.loads``.

The baseline is ``orjson.loads`` of the same messages: the least any consumer of this topic
must do. Each stage is timed over the same messages (best of several rounds) and reported as
events per second and as a multiple of the baseline's time, so the figures compare across
machines. Memory is the peak traced allocation while one batch is processed, per event and as
a multiple of the raw message bytes. Useful for profiling the CPU the service spends per event
without Kafka or HTTP in the way.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from consumer.devkit.bench.events import Backlog
from consumer.devkit.emulator.fields import EXAMPLE_MAPPING
from consumer.mapping import TargetPlan, parse_mapping, plan_target
from consumer.model.changes import Accepted, PersonResult, Sourced
from consumer.model.messages import InputMessage
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from consumer.stages.parse import ParseRules, parse_message
from consumer.stages.report import assemble


def _plans() -> list[TargetPlan]:
    return [plan_target(t, None) for t in parse_mapping(EXAMPLE_MAPPING).targets]


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def pure_path(values: list[bytes], plans: list[TargetPlan], batch: int) -> None:
    """What the service does to each batch apart from I/O: parse, dedup, map, report."""
    rules = ParseRules()
    now = datetime.now(UTC)
    for start in range(0, len(values), batch):
        chunk = values[start : start + batch]
        msgs = [InputMessage("t", 0, start + i, None, v) for i, v in enumerate(chunk)]
        parsed = [parse_message(v, rules) for v in chunk]
        sourced = [
            Sourced(r.change, 0, m.offset, i, map_change(r.change, plans))
            for i, (m, r) in enumerate(zip(msgs, parsed, strict=True))
            if isinstance(r, Accepted)
        ]
        people = merge_by_person(sourced)
        results = {p.sobject: {k: PersonResult("updated", ["003"]) for k in people} for p in plans}
        publications, _ = assemble(msgs, parsed, people, results, plans, now)
        for pub in publications:
            pub.value()  # what the service publishes (not the model: that is for tests)


def run_pure(count: int, people: int, batch: int, rounds: int) -> list[str]:
    """The pure-path table, as lines."""
    values = [value for _, value, _ in Backlog(count, people, 1.0, start_ms=0).records()]
    plans = _plans()
    rules = ParseRules()
    stages: list[tuple[str, Callable[[], object]]] = [
        ("orjson.loads (baseline)", lambda: [orjson.loads(v) for v in values]),
        ("parse (validate, normalise)", lambda: [parse_message(v, rules) for v in values]),
        ("parse + dedup + map + report", lambda: pure_path(values, plans, batch)),
    ]
    lines = [
        f"{count:,} events, {people:,} people (Zipf), batches of {batch:,}, best of "
        f"{rounds} rounds, example mapping",
        "",
        f"{'stage':32} {'events/s':>12} {'x baseline time':>16}",
    ]
    base = 0.0
    for name, fn in stages:
        took = _best(fn, rounds)
        base = base or took  # the first stage is the baseline
        lines.append(f"{name:32} {count / took:12,.0f} {took / base:16.2f}")
    raw = sum(len(v) for v in values[:batch])
    tracemalloc.start()
    pure_path(values[:batch], plans, batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    lines.append(
        f"memory: peak {peak / batch:,.0f} bytes per event while a batch of {batch:,} is "
        f"processed; {peak / raw:.1f} x the raw message bytes ({raw / batch:,.0f} per event)"
    )
    return lines
