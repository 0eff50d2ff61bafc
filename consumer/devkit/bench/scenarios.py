"""The measurements (a)-(e), each on a fresh rig, each figure next to its baseline.

(a) throughput vs a passthrough; (b) Salesforce calls vs the packing bound; (c) records/s at
100 ms latency vs 4 x 200 / 0.1 s; (d) the service's peak RSS draining a backlog through a
slow emulator; (e) produce-to-write latency at a steady rate vs linger + 2 x latency.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from consumer.devkit.bench.events import (
    EXTERNAL_ID_MAPPING,
    MATCH_MAPPING,
    Backlog,
    EventFactory,
    message_key,
    person_email,
    seed_records,
)
from consumer.devkit.bench.figures import (
    PER_CALL,
    WRITE_KINDS,
    CallFigures,
    Row,
    match_latencies,
    people_bound,
    percentile,
    rss_profile,
    steady_rate,
)
from consumer.devkit.bench.kafka_io import Watcher, produce
from consumer.devkit.bench.procs import Children, memory_kib
from consumer.devkit.bench.rig import (
    CpuMeter,
    Drain,
    Emulator,
    Rig,
    Topics,
    make_topics,
    scrape,
    service_env,
)
from consumer.devkit.broker import create_topics, free_port
from consumer.devkit.emulator.fields import EXAMPLE_MAPPING

SERVICE = ["-m", "consumer", "run"]
PASSTHROUGH = ["-m", "consumer.devkit.bench.passthrough"]
#: The service's defaults that the bounds of (c) and (e) are computed from.
DEFAULT_LINGER_MS = 500
DEFAULT_CONCURRENCY = 4


@dataclass
class Options:
    """Sizes and settings of every measurement (the command line sets them)."""

    events: int = 100_000
    people: int = 10_000
    zipf: float = 1.0
    partitions: int = 4
    rate_events: int = 40_000
    rate_latency_ms: float = 100.0
    rss_events: tuple[int, ...] = (100_000,)
    rss_latency_ms: float = 50.0
    paced_rate: int = 1_000
    paced_seconds: float = 30.0
    paced_latency_ms: float = 100.0
    #: Share of people seeded as Contacts and as Leads before a run (the rest are new).
    contacts_share: float = 0.7
    leads_share: float = 0.2


@dataclass
class Section:
    """The outcome of one measurement: table rows and the details printed under its title."""

    title: str
    rows: list[Row] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """What every measurement shares."""

    children: Children
    workdir: Path
    cores: int
    options: Options
    say: Callable[[str], None]
    #: The passthrough's peak RSS in (a): the reference printed next to (d).
    passthrough_peak_kib: int | None = None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _backlog_start(count: int, step_ms: int = 10) -> int:
    """Event times for a backlog: increasing, ending an hour ago (never in the future)."""
    return _now_ms() - count * step_ms - 3_600_000


async def _seed_population(emu: Emulator, people: int, options: Options, seed: int = 5) -> str:
    """Contacts for a share of the people, Leads for another share (the rest are unknown to
    Salesforce, so upsert mode creates them); returns a description."""
    rng = random.Random(seed)
    everyone = list(range(people))
    contacts = rng.sample(everyone, int(people * options.contacts_share))
    leads = rng.sample(everyone, int(people * options.leads_share))
    await emu.seed("Contact", seed_records(contacts))
    await emu.seed("Lead", seed_records(leads, lead=True))
    return (
        f"Salesforce seeded with {len(contacts):,} Contacts ({options.contacts_share:.0%} of "
        f"the people) and {len(leads):,} Leads ({options.leads_share:.0%})"
    )


def _metric(metrics: dict[str, float], name: str, **labels: str) -> float:
    key = f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}"
    return metrics.get(key, math.nan)


def _where_time_went(drain: Drain) -> str:
    """From the service's own metrics: batches, their size and time, Salesforce time."""
    m = drain.metrics
    batches = _metric(m, "consent_sync_batch_duration_seconds_count")
    if not batches or math.isnan(batches):
        return "service metrics: not available"
    events = _metric(m, "consent_sync_batch_events_sum")
    people = _metric(m, "consent_sync_batch_people_sum")
    took = _metric(m, "consent_sync_batch_duration_seconds_sum")
    calls = []
    for op in ("query", "update", "create", "upsert"):
        count = _metric(m, "consent_sync_salesforce_call_duration_seconds_count", operation=op)
        total = _metric(m, "consent_sync_salesforce_call_duration_seconds_sum", operation=op)
        if count and not math.isnan(count):
            calls.append(f"{op} {count:,.0f} x {total / count * 1000:.0f} ms")
    phases = []
    for phase in ("merge", "salesforce", "outcomes", "order", "publish"):
        spent = _metric(m, "consent_sync_batch_phase_seconds_sum", phase=phase)
        if not math.isnan(spent):
            phases.append(f"{phase} {spent / batches * 1000:,.1f}")
    return (
        f"service metrics: {batches:,.0f} batches (the direct lane's too, which hold only "
        f"messages that write nothing) of {events / batches:,.0f} events / "
        f"{people / batches:,.0f} people on average, {took / batches * 1000:,.0f} ms each from "
        f"dispatch to acknowledged outcomes"
        + (f" (ms by phase: {', '.join(phases)})" if phases else "")
        + f"; Salesforce calls: {', '.join(calls) or 'none'}"
    )


def _lane_occupancy(drain: Drain, lanes: int, latency_ms: float) -> str:
    """How much of the lanes' time a Salesforce call was in flight, and how long calls took
    against the emulator's configured latency (from the service's own call histogram)."""
    m = drain.metrics
    busy = calls = 0.0
    for op in ("query", "update", "create", "upsert"):
        total = _metric(m, "consent_sync_salesforce_call_duration_seconds_sum", operation=op)
        count = _metric(m, "consent_sync_salesforce_call_duration_seconds_count", operation=op)
        if not math.isnan(total):
            busy += total
            calls += count
    if not calls or math.isnan(drain.seconds):
        return "lane occupancy: not available"
    batches = _metric(m, "consent_sync_batch_duration_seconds_count")
    took = _metric(m, "consent_sync_batch_duration_seconds_sum")
    outside = (took - busy) / batches * 1000 if batches else math.nan
    return (
        f"a Salesforce call was in flight {busy / (lanes * drain.seconds):.0%} of the "
        f"{lanes} lanes' time; calls took {busy / calls * 1000:,.0f} ms on average "
        f"(configured latency {latency_ms:g} ms, the emulator's own work included; the rest "
        f"is HTTP on the loopback and the service's event loop getting round to the answer); "
        f"{outside:,.0f} ms per batch went outside Salesforce calls (merge, requests, "
        f"outcomes, publishing and waiting for the broker's acks)"
    )


def _drain_line(drain: Drain) -> str:
    state = (
        "" if drain.finished else f" (DID NOT FINISH: {drain.seen.count:,} of {drain.expected:,})"
    )
    peak = f", peak RSS {drain.peak_rss_kib / 1024:,.0f} MB" if drain.peak_rss_kib else ""
    return (
        f"{drain.label}: {drain.seen.count:,} outputs in {drain.seconds:,.2f} s = "
        f"{drain.rate:,.0f}/s{state}{peak}, exit {drain.exit_code}; {drain.cpu.describe()}"
    )


def _check(drain: Drain, section: Section) -> None:
    """Say loudly when a run did not finish, the service failed (with its log), published
    more than one output for some message, or any outcome failed or was rejected."""
    if not drain.finished or (drain.exit_code not in (0, None)):
        section.lines.append(
            f"  !! {drain.label} did not finish cleanly (exit {drain.exit_code}); its log: "
            f"{drain.log}"
        )
    extra = drain.seen.count - drain.expected
    if extra > 0:
        section.lines.append(
            f"  !! {drain.label} published {extra:,} outputs more than it read messages "
            f"(duplicates); its log: {drain.log}"
        )
    bad = {k: v for k, v in drain.seen.statuses.items() if k in ("failed", "rejected", "partial")}
    if bad:
        section.lines.append(
            f"  !! {drain.label}: unexpected outcomes {statuses_line(Counter(bad))}; its log: "
            f"{drain.log}"
        )


async def _passthrough(
    rig: Rig, topics: Topics, count: int, label: str, timeout: float, decode: bool = False
) -> Drain:
    """One passthrough run over ``topics.input`` with a group and output topic of its own;
    ``decode``: it also decodes each message with ``orjson.loads`` (nothing more)."""
    own = Topics.fresh(label)
    await create_topics(rig.bootstrap, [own.results], partitions=1)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": rig.bootstrap,
        "KAFKA_INPUT_TOPIC": topics.input,
        "KAFKA_RESULTS_TOPIC": own.results,
        "KAFKA_GROUP_ID": own.group,
    }
    if decode:
        env["BENCH_PASSTHROUGH_DECODE"] = "orjson"
    run = Topics(topics.input, own.results, own.dlq, own.group, own.choices)
    return await rig.drain(label, PASSTHROUGH, env, run, count, timeout=timeout)


async def _service(
    rig: Rig,
    label: str,
    emu: Emulator,
    topics: Topics,
    mapping: Path,
    count: int,
    timeout: float,
    **settings: str,
) -> Drain:
    """One service run draining ``count`` outputs from ``topics`` into ``emu``; ``settings``
    are environment variables on top of :func:`service_env`'s."""
    port = free_port()
    env = {**service_env(rig.bootstrap, topics, emu, mapping, port), **settings}
    return await rig.drain(
        label,
        SERVICE,
        env,
        topics,
        count,
        timeout=timeout,
        others={"emulator": emu.child.pid},
        metrics_port=port,
    )


def _drain_timeout(count: int, per_second: float) -> float:
    # Generous: a slow machine must finish, a stuck service must not hang the bench.
    return 120.0 + count / per_second


# --------------------------------------------------------------------------------------
# (a) throughput and (b) Salesforce calls


async def throughput(bench: Bench) -> list[Section]:
    """(a) the service vs the passthrough on the same backlog; (b) the calls it made."""
    o = bench.options
    a = Section(
        f"(a) throughput: {o.events:,} events, {o.people:,} people (Zipf s={o.zipf:g}), "
        f"zero-latency Salesforce, example mapping (Contact match + sync state, Lead)"
    )
    b = Section("(b) Salesforce calls in run (a)")
    async with Rig(bench.children, bench.workdir, bench.cores) as rig:
        emu = rig.emulator(0)
        a.lines.append("  " + await _seed_population(emu, o.people, o))
        topics = Topics.fresh("a")
        await make_topics(rig.bootstrap, topics, o.partitions)
        backlog = Backlog(o.events, o.people, o.zipf, start_ms=_backlog_start(o.events))
        bench.say(f"(a) producing {o.events:,} events ...")
        count, took, size = await produce(rig.bootstrap, topics.input, backlog.records())
        a.lines.append(
            f"  backlog: {count:,} events ({size / count:,.0f} bytes on average) produced in "
            f"{took:.1f} s to {o.partitions} partitions, keyed by the lower-cased email"
        )
        timeout = _drain_timeout(count, 300)
        bench.say("(a) passthrough, first run ...")
        first = await _passthrough(rig, topics, count, "passthrough", timeout)
        bench.say(f"    {first.rate:,.0f} messages/s; passthrough decoding each event ...")
        # The ceiling of any consumer that reads the events: the passthrough plus one
        # orjson.loads per message, and nothing else (twice, like the baseline).
        reading = [await _passthrough(rig, topics, count, "reading", timeout, decode=True)]
        bench.say(f"    {reading[0].rate:,.0f} messages/s; the service ...")
        mapping = rig.write_mapping(EXAMPLE_MAPPING)
        service = await _service(rig, "service", emu, topics, mapping, count, timeout)
        stats = await emu.stats()
        journal = await emu.journal()
        bench.say(
            f"    {service.rate:,.0f} events/s; the service with SALESFORCE_COMPOSITE=off "
            "(same backlog, a fresh org and group) ..."
        )
        plain = await _plain_run(rig, bench, topics, mapping, count, timeout)
        bench.say(f"    {plain[0].rate:,.0f} events/s; passthrough, second run ...")
        second = await _passthrough(rig, topics, count, "passthrough", timeout)
        bench.say(f"    {second.rate:,.0f} messages/s; passthrough decoding, second run ...")
        reading.append(await _passthrough(rig, topics, count, "reading", timeout, decode=True))
    baseline = (first.rate + second.rate) / 2
    bench.passthrough_peak_kib = max(first.peak_rss_kib or 0, second.peak_rss_kib or 0) or None
    for drain in (first, reading[0], service, second, reading[1]):
        a.lines.append("  " + _drain_line(drain))
        _check(drain, a)
    a.lines.append("  " + _where_time_went(service))
    statuses = ", ".join(f"{k} {v:,}" for k, v in service.seen.statuses.most_common())
    a.lines.append(f"  outcomes: {statuses}")
    svc_cpu = service.cpu.by_process.get("service", math.nan)
    pt_cpu = (
        first.cpu.by_process.get("passthrough", math.nan)
        + second.cpu.by_process.get("passthrough", math.nan)
    ) / 2
    per_event = svc_cpu / max(1, count) * 1e6
    pt_per_event = pt_cpu / max(1, count) * 1e6
    reading_cpu = sum(r.cpu.by_process.get("reading", math.nan) for r in reading) / 2
    reading_per_event = reading_cpu / max(1, count) * 1e6
    reading_rate = sum(r.rate for r in reading) / 2
    ceiling = reading_rate / baseline if baseline > 0 else math.nan
    # What 0.7 x leaves the service, in CPU per event beyond the passthrough's own work.
    budget = pt_per_event / 0.7 - pt_per_event
    # At equal CPU the ratio is the inverse ratio of CPU per event: what the figure would be
    # on a machine with a core to spare for each, whatever the other load was during the run.
    at_equal_cpu = pt_per_event / per_event if per_event > 0 else math.nan
    a.lines.append(
        f"  CPU per event: service {per_event:,.0f} us, passthrough {pt_per_event:,.0f} us "
        f"(over each run's measured window); at equal CPU the service would run at "
        f"{at_equal_cpu:.2f} x the passthrough, {1e6 / per_event:,.0f} events/s on a full core"
    )
    # Said on the section's lines and again in the reason for the miss.
    limits = (
        f"a passthrough that only decodes each event (orjson.loads) runs at {ceiling:.2f} x "
        f"the passthrough ({reading_rate:,.0f} events/s, {reading_per_event:,.0f} us of CPU "
        f"per event, two runs): the ceiling of any consumer that reads the events. 0.7 x "
        f"leaves {budget:,.1f} us of CPU per event beyond the passthrough's work for "
        f"decoding, validating, mapping, merging, the Salesforce calls and the outcomes "
        f"(decoding took {reading_per_event - pt_per_event:,.1f}); the service spends "
        f"{per_event - pt_per_event:,.0f}"
    )
    a.lines.append(f"  ceiling: {limits}")
    why = ""
    saturated = service.cpu.saturated()
    if saturated:
        why = f"Saturated: {saturated}. "
    why += (
        f"The service is CPU-bound: {per_event:,.0f} us of CPU per event against "
        f"{pt_per_event:,.0f} us for the passthrough, so even with a whole core it would do "
        f"{1e6 / per_event:,.0f} events/s ({at_equal_cpu:.2f} x the passthrough at equal "
        f"CPU); the pure-path table above shows how much of that is parsing, mapping and "
        f"building outcomes. {service.cpu.describe()}. {_where_time_went(service)}. "
        f"{limits[0].upper()}{limits[1:]}."
    )
    a.rows.append(
        Row(
            "(a) events/s, service vs passthrough",
            service.rate,
            "events/s",
            baseline,
            "passthrough",
            0.7,
            why=why,
        )
    )
    a.rows.append(
        Row(
            "(a) ceiling: passthrough + orjson.loads",
            reading_rate,
            "events/s",
            baseline,
            "passthrough",
            None,
        )
    )
    b.rows.extend(_calls_rows(b, stats, journal, count, backlog, service))
    b.rows.append(_plain_row(b, plain, count))
    return [a, b]


async def _plain_run(
    rig: Rig, bench: Bench, topics: Topics, mapping: Path, count: int, timeout: float
) -> tuple[Drain, dict[str, Any]]:
    """Run (a)'s backlog again with SALESFORCE_COMPOSITE=off: (the drain, emulator stats)."""
    emu = rig.emulator(0)
    await _seed_population(emu, bench.options.people, bench.options)
    fresh = Topics.fresh("a-plain")
    again = Topics(topics.input, fresh.results, fresh.dlq, fresh.group, fresh.choices)
    await create_topics(rig.bootstrap, [again.results, again.dlq], partitions=1)
    await create_topics(rig.bootstrap, [again.choices], partitions=bench.options.partitions)
    drain = await _service(
        rig, "service-plain", emu, again, mapping, count, timeout, SALESFORCE_COMPOSITE="off"
    )
    return drain, await emu.stats()


def _plain_row(section: Section, run: tuple[Drain, dict[str, Any]], count: int) -> Row:
    drain, stats = run
    counters = stats["stats"]
    calls = CallFigures.from_summary(stats["journal"]["summary"])
    startup = sum(int(counters[k]) for k in ("versions", "describe", "limits"))
    api = int(counters["api_calls"]) - startup
    bound = calls.packed_bound()
    section.lines += [
        f"  with SALESFORCE_COMPOSITE=off (same backlog, fresh org): {api:,} API calls "
        f"({api / count * 1000:,.2f} per 1,000 events), one per query or write; "
        f"{drain.rate:,.0f} events/s",
        "    " + _drain_line(drain),
    ]
    _check(drain, section)
    return Row(
        "(b) API calls per 1,000 events, composite off",
        api / count * 1000,
        "calls",
        bound / count * 1000,
        "packing bound",
        None,
    )


def _calls_rows(
    section: Section,
    stats: dict[str, Any],
    journal: dict[str, Any],
    count: int,
    backlog: Backlog,
    service: Drain,
) -> list[Row]:
    calls = CallFigures.from_summary(stats["journal"]["summary"])
    counters = stats["stats"]
    api_calls = int(counters["api_calls"])
    startup = sum(int(counters[k]) for k in ("versions", "describe", "limits"))
    # API calls after start-up: queries and writes, alone or inside composite calls.
    work = api_calls - startup
    composites = calls.calls(("composite",))
    inside = calls.sent(("composite",))
    bound = calls.packed_bound()
    written: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _, sobject, action, _, key in journal["writes"]:
        written[(sobject, action)].add(key)
    distinct = len(set(backlog.people_order()))
    queried = {s: distinct for (k, s) in calls.groups if k == "query"}
    whole = people_bound(written, queried)
    section.lines += [
        f"  API calls: {api_calls:,} in all ({api_calls / count * 1000:,.1f} per 1,000 events), "
        f"of which {startup} at start-up (versions, describe) and {counters['token']} token "
        f"grants outside the API count",
        *("  " + line for line in calls.lines()),
        f"  packing bound: {bound:,} calls (each sObject's and operation's records, and each "
        f"query's emails, in calls of {PER_CALL}); the service made {work:,} API calls"
        + (
            f" ({composites:,} composite calls carrying {inside:,} queries and writes, "
            f"SALESFORCE_COMPOSITE=auto while behind)"
            if composites
            else ""
        ),
        f"  whole-backlog bound (one window holding all {count:,} events: each of the "
        f"{distinct:,} people written once per sObject and operation): {whole:,} calls",
    ]
    low = [
        f"{k} {s} {v[1] / v[0]:.0f} records per call"
        for (k, s), v in sorted(calls.groups.items())
        if k != "composite" and v[0] and v[1] / v[0] < 0.9 * PER_CALL
    ]
    why = (
        "Calls under 90% full: " + "; ".join(low) + ". "
        if low
        else "Every kind of call was at least 90% full on average. "
    )
    why += (
        "A batch (one lane's window: at most 200 people per target, SYNC_BATCH_MAX_EVENTS "
        "events or the linger) splits its people between update and create calls, and each "
        f"target queries and writes on its own; {_where_time_went(service)}."
    )
    return [
        Row(
            "(b) API calls per 1,000 events (default settings)",
            work / count * 1000,
            "calls",
            bound / count * 1000,
            "packing bound",
            1.1,
            at_most=True,
            why=why,
        ),
        Row(
            "(b) records per write call (example mapping)",
            calls.records_per_write(),
            "records",
            float(PER_CALL),
            "a full call",
            None,
        ),
    ]


# --------------------------------------------------------------------------------------
# (c) records per second at 100 ms latency


async def write_rate(bench: Bench) -> list[Section]:
    """(c) external-id and match mode at 100 ms latency, concurrency 4, distinct people."""
    o = bench.options
    bound = DEFAULT_CONCURRENCY * PER_CALL / (o.rate_latency_ms / 1000)
    section = Section(
        f"(c) records/s written at {o.rate_latency_ms:g} ms emulator latency, SYNC_CONCURRENCY="
        f"{DEFAULT_CONCURRENCY}: {o.rate_events:,} events for {o.rate_events:,} different "
        f"people (uniform), every one a seeded Contact"
    )
    modes = (
        ("external-id", EXTERNAL_ID_MAPPING, 0.8),
        ("match", MATCH_MAPPING, 0.4),
    )
    section.lines += [
        "  external-id mapping: Contact only, external_id_field Didomi_Id__c, upsert_mode, no "
        "sync_state_field (an upsert per 200 people, no query)",
        "  match mapping: Contact only, match_field Email, upsert_mode, sync_state_field "
        "Didomi_Sync_State__c (a query, then an update, per 200 people)",
    ]
    for mode, mapping_text, target in modes:
        async with Rig(bench.children, bench.workdir, bench.cores) as rig:
            emu = rig.emulator(o.rate_latency_ms)
            await emu.seed("Contact", seed_records(range(o.rate_events)))
            topics = Topics.fresh(f"c-{mode}")
            await make_topics(rig.bootstrap, topics, o.partitions)
            backlog = Backlog(
                o.rate_events, o.rate_events, None, start_ms=_backlog_start(o.rate_events)
            )
            bench.say(f"(c) {mode}: producing {o.rate_events:,} events ...")
            count, _, _ = await produce(rig.bootstrap, topics.input, backlog.records())
            bench.say(f"(c) {mode}: draining ...")
            drain = await _service(
                rig,
                f"service-{mode}",
                emu,
                topics,
                rig.write_mapping(mapping_text),
                count,
                _drain_timeout(count, 200),
                SYNC_CONCURRENCY=str(DEFAULT_CONCURRENCY),
            )
            stats = await emu.stats()
            journal = await emu.journal()
        points = [(c[0], c[4]) for c in journal["calls"] if c[1] in WRITE_KINDS]
        rate, window = steady_rate(points)
        calls = CallFigures.from_summary(stats["journal"]["summary"])
        section.lines += [
            f"  {mode}: {rate:,.0f} records/s between 10% and 90% of the records written "
            f"({window:.1f} s), records per write call {calls.records_per_write():.1f}",
            *("    " + line for line in calls.lines()),
            "    " + _drain_line(drain),
            "    " + _where_time_went(drain),
        ]
        _check(drain, section)
        occupancy = _lane_occupancy(drain, DEFAULT_CONCURRENCY, o.rate_latency_ms)
        section.lines.append("    " + occupancy)
        why = ""
        saturated = drain.cpu.saturated()
        if saturated:
            why = f"Saturated: {saturated}. "
        why += (
            f"{occupancy}. {drain.cpu.describe()}. {_where_time_went(drain)}. The bound "
            f"assumes every call carries {PER_CALL} records and the {DEFAULT_CONCURRENCY} lanes "
            f"always have one call in flight; "
            + (
                "match mode needs a query and a write per 200 people (half the bound at best)."
                if mode == "match"
                else "external-id mode needs one upsert per 200 people."
            )
        )
        section.rows.append(
            Row(
                f"(c) records/s, {mode} mode",
                rate,
                "records/s",
                bound,
                f"{DEFAULT_CONCURRENCY} x {PER_CALL} / {o.rate_latency_ms / 1000:g} s",
                target,
                why=why,
            )
        )
        if mode == "external-id":
            per_call = calls.records_per_write()
            section.rows.append(
                Row(
                    "(b) records per write call, external-id backlog",
                    per_call,
                    "records",
                    float(PER_CALL),
                    "a full call",
                    190.0,
                    absolute=True,
                    why=(
                        "Write calls carried fewer records than the batches could hold: "
                        + "; ".join(calls.lines())
                    ),
                )
            )
    return [section]


# --------------------------------------------------------------------------------------
# (d) peak memory


async def memory(bench: Bench) -> list[Section]:
    """(d) the service's peak RSS draining backlogs through a slow emulator."""
    o = bench.options
    section = Section(
        f"(d) peak RSS (VmHWM) of the service draining backlogs through a "
        f"{o.rss_latency_ms:g} ms emulator, {o.people:,} people (Zipf), example mapping"
    )
    peaks: dict[int, float] = {}
    profiles: dict[int, str] = {}
    growths: dict[int, float] = {}
    for count in o.rss_events:
        async with Rig(bench.children, bench.workdir, bench.cores) as rig:
            emu = rig.emulator(o.rss_latency_ms)
            await _seed_population(emu, o.people, o)
            topics = Topics.fresh(f"d{count}")
            await make_topics(rig.bootstrap, topics, o.partitions)
            backlog = Backlog(count, o.people, o.zipf, seed=3, start_ms=_backlog_start(count))
            bench.say(f"(d) producing {count:,} events ...")
            produced, took, _ = await produce(rig.bootstrap, topics.input, backlog.records())
            bench.say(f"(d) draining {count:,} events (produced in {took:.0f} s) ...")
            drain = await _service(
                rig,
                f"service-{count}",
                emu,
                topics,
                rig.write_mapping(EXAMPLE_MAPPING),
                produced,
                _drain_timeout(produced, 150),
            )
        section.lines.append("  " + _drain_line(drain))
        marks, growth = rss_profile(drain.rss, drain.expected)
        growths[count] = growth
        # Where the highest sample was (the peak itself falls between two samples): a
        # transient, or the end of a climb. The samples are kept with --keep.
        top = max(drain.rss, key=lambda s: s[1], default=None)
        at = (
            f"; highest sample {top[1] / 1024:,.0f} MB at {top[0] / max(1, count):.0%} of the "
            "outcomes"
            if top is not None
            else ""
        )
        (bench.workdir / f"rss-{count}.tsv").write_text(
            "".join(f"{seen}\t{kib}\n" for seen, kib in drain.rss)
        )
        profiles[count] = (
            f"RSS at 25/50/75/100% of the {count:,} outcomes: "
            + " / ".join(f"{m:,.0f}" for m in marks)
            + f" MB; {growth:+,.1f} MB per 100,000 events while draining (25% to 90%){at}"
        )
        section.lines.append("    " + profiles[count])
        _check(drain, section)
        mb = (drain.peak_rss_kib or 0) / 1024
        peaks[count] = mb
        section.rows.append(
            Row(
                f"(d) peak RSS, {count:,} events",
                mb if drain.peak_rss_kib else math.nan,
                "MB",
                bench.passthrough_peak_kib / 1024 if bench.passthrough_peak_kib else None,
                "passthrough's peak",
                250.0,
                at_most=True,
                absolute=True,
                why=f"{_drain_line(drain)}. Peak resident memory of the service process.",
            )
        )
    small, large = 100_000, 1_000_000
    if small in peaks and large in peaks:
        # Over a million events, 1 MB per 100,000 would be 10 MB: below that (or falling) the
        # curve did not climb.
        if growths[large] < 1.0:
            verdict = (
                f"The long run's RSS did not climb while draining ({growths[large]:+.1f} MB per "
                "100,000 events), so nothing is kept per event: its higher peak is the largest "
                "moment of backlog in a ten times longer run, or the allocator's high-water "
                "mark (peaks of equal runs differ by several percent)."
            )
        else:
            verdict = (
                f"The long run's RSS climbed while draining ({growths[large]:+.1f} MB per "
                "100,000 events): something is kept per event (or per anything growing with "
                "the run)."
            )
        section.rows.append(
            Row(
                "(d) peak RSS, 1,000,000 vs 100,000 events",
                peaks[large],
                "MB",
                peaks[small],
                "100,000-event peak",
                1.1,
                at_most=True,
                why=(
                    "The peak grew with the backlog (same people, same settings). "
                    f"{profiles[small]}. {profiles[large]}. {verdict}"
                ),
            )
        )
    elif large not in peaks:
        section.lines.append(
            "  the 1,000,000-event run is not part of the default run (it takes several "
            "minutes more): add --million"
        )
    return [section]


# --------------------------------------------------------------------------------------
# (e) latency at a steady rate


async def latency(bench: Bench) -> list[Section]:
    """(e) produce-to-write latency at a paced rate, against linger + 2 x latency; the Kafka
    leg alone (the passthrough at the same rate) as a reference."""
    o = bench.options
    total = int(o.paced_rate * o.paced_seconds)
    warmup = 200
    people = total + warmup
    linger = DEFAULT_LINGER_MS
    ideal = linger + 2 * o.paced_latency_ms
    bound = ideal + 50
    section = Section(
        f"(e) latency from produce to Salesforce write at {o.paced_rate:,} events/s for "
        f"{o.paced_seconds:g} s, SYNC_BATCH_LINGER_MS={linger}, emulator latency "
        f"{o.paced_latency_ms:g} ms, example mapping, every event a different person"
    )
    order = list(range(people))
    random.Random(11).shuffle(order)
    emails = iter(person_email(n) for n in order)
    factory = EventFactory(seed=4)
    async with Rig(bench.children, bench.workdir, bench.cores) as rig:
        kafka_leg = await _kafka_leg(bench, rig, min(total, o.paced_rate * 10))
        emu = rig.emulator(o.paced_latency_ms)
        section.lines.append("  " + await _seed_population(emu, people, o))
        topics = Topics.fresh("e")
        await make_topics(rig.bootstrap, topics, o.partitions)
        port = free_port()
        env = service_env(rig.bootstrap, topics, emu, rig.write_mapping(EXAMPLE_MAPPING), port)
        env["SYNC_BATCH_LINGER_MS"] = str(linger)
        watcher = Watcher(rig.bootstrap, topics.results)
        await watcher.start()
        log = bench.workdir / "service-latency.log"
        child = bench.children.python("service", SERVICE, env=env, log=log, cwd=bench.workdir)
        try:
            bench.say("(e) warming the service up (group join, token, describe) ...")
            await _paced(rig.bootstrap, topics.input, emails, factory, rate=200, count=warmup)
            if not await watcher.wait_for(warmup, timeout=120, alive=child.alive):
                raise RuntimeError(f"the service did not answer the warm-up; see {log}")
            await emu.reset()
            meter = CpuMeter(
                {"service": child.pid, "emulator": emu.child.pid, "broker": rig.broker.pid},
                bench.cores,
            )
            meter.start()
            bench.say(f"(e) producing {o.paced_rate:,} events/s for {o.paced_seconds:g} s ...")
            produced = await _paced(
                rig.bootstrap, topics.input, emails, factory, rate=o.paced_rate, count=total
            )
            done = await watcher.wait_for(warmup + total, timeout=120, alive=child.alive)
            cpu = meter.stop()
            peak = memory_kib(child.pid)
            metrics = await scrape(port)
            journal = await emu.journal()
        finally:
            await asyncio.to_thread(bench.children.stop, child)
            await watcher.stop()
    writes = [(w[4], w[0]) for w in journal["writes"] if w[1] == "Contact" and w[4]]
    applied = [(k, at) for k, at, synced in produced if synced]
    latencies, missing = match_latencies(applied, writes)
    p50 = percentile(latencies, 0.5) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    over = sum(1 for v in latencies if v * 1000 > bound)
    leg50, leg99 = (percentile(kafka_leg, q) * 1000 for q in (0.5, 0.99))
    by_action = []
    for action in ("update", "create"):
        mine = [(w[4], w[0]) for w in journal["writes"] if w[1] == "Contact" and w[2] == action]
        found, _ = match_latencies(applied, mine)
        if found:
            by_action.append(
                f"{action}d Contacts ({len(found):,}) p50 {percentile(found, 0.5) * 1000:,.0f} "
                f"ms / p99 {percentile(found, 0.99) * 1000:,.0f} ms"
            )
    drain = Drain("service", total, watcher.seen, done, cpu, peak, None, metrics, log)
    section.lines += [
        "  produce time: the Kafka record timestamp the bench set at send (the event's own "
        "created_at/updated_at is the same millisecond); write time: when the emulator "
        "answered the Contact write carrying that person (its journal, wall clock)",
        f"  Kafka leg alone (the passthrough at the same rate, input record to output record, "
        f"{len(kafka_leg):,} events): p50 {leg50:,.0f} ms, p99 {leg99:,.0f} ms",
        f"  {len(latencies):,} events matched to their Contact write; "
        f"{len(produced) - len(applied):,} ignored by design (pending approval, CPRA); "
        f"{missing:,} without a write",
        f"  p50 {p50:,.0f} ms, p90 {percentile(latencies, 0.9) * 1000:,.0f} ms, p99 "
        f"{p99:,.0f} ms, max {max(latencies, default=math.nan) * 1000:,.0f} ms; "
        f"{over:,} events ({over / max(1, len(latencies)):.1%}) over {bound:,.0f} ms",
        f"  by write: {'; '.join(by_action)}",
        "  " + _where_time_went(drain),
        "  " + cpu.describe(),
    ]
    if not done:
        section.lines.append(f"  !! not every outcome arrived; service log: {log}")
    why = (
        f"{over / max(1, len(latencies)):.1%} of events took longer than linger + 2 x latency "
        f"+ 50 ms. The linger counts from each record's Kafka timestamp, so the Kafka leg "
        f"(alone: p50 {leg50:,.0f} ms / p99 {leg99:,.0f} ms at this rate on this broker) is "
        f"inside it; each of the two calls takes longer than the configured latency (HTTP on "
        f"the loopback, both event loops, processes sharing the cores; the call times are "
        f"below), and that spends the 50 ms of slack. By write: "
        f"{'; '.join(by_action)} (a batch's updates and creates go concurrently). "
        f"{cpu.describe()}. {_where_time_went(drain)}."
    )
    section.rows += [
        Row("(e) p50 latency", p50, "ms", ideal, "linger + 2 x latency", None),
        Row(
            "(e) p99 latency",
            p99,
            "ms",
            bound,
            "linger + 2 x latency + 50 ms",
            1.0,
            at_most=True,
            why=why,
        ),
    ]
    return [section]


async def _kafka_leg(bench: Bench, rig: Rig, count: int) -> list[float]:
    """Seconds from input record to output record for the passthrough at the paced rate."""
    o = bench.options
    topics = Topics.fresh("e-kafka")
    await make_topics(rig.bootstrap, topics, o.partitions)
    legs: list[float] = []

    def note(record: Any) -> None:
        value = record.value or b""
        at = value.find(b'"in_ts":')
        if at >= 0:
            sent = int(value[at + 8 : value.index(b"}", at)])
            legs.append((record.timestamp - sent) / 1000)

    watcher = Watcher(rig.bootstrap, topics.results, on_record=note)
    await watcher.start()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": rig.bootstrap,
        "KAFKA_INPUT_TOPIC": topics.input,
        "KAFKA_RESULTS_TOPIC": topics.results,
        "KAFKA_GROUP_ID": topics.group,
    }
    log = bench.workdir / "passthrough-latency.log"
    child = bench.children.python("passthrough", PASSTHROUGH, env=env, log=log, cwd=bench.workdir)
    factory = EventFactory(seed=9)
    emails = iter(person_email(n) for n in itertools.count(10**8))
    try:
        bench.say("(e) Kafka leg: the passthrough at the same rate ...")
        await _paced(rig.bootstrap, topics.input, emails, factory, rate=200, count=100)
        if not await watcher.wait_for(100, timeout=120, alive=child.alive):
            raise RuntimeError(f"the passthrough did not answer the warm-up; see {log}")
        legs.clear()
        await _paced(rig.bootstrap, topics.input, emails, factory, rate=o.paced_rate, count=count)
        await watcher.wait_for(100 + count, timeout=60, alive=child.alive)
    finally:
        await asyncio.to_thread(bench.children.stop, child)
        await watcher.stop()
    return legs


async def _paced(
    bootstrap: str,
    topic: str,
    emails: Iterator[str],
    factory: EventFactory,
    *,
    rate: float,
    count: int,
) -> list[tuple[str, float, bool]]:
    """Produce ``count`` events at ``rate`` per second, each stamped (event time and record
    timestamp) with the moment it is sent; returns (person key, that moment, whether the
    service applies it)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    out: list[tuple[str, float, bool]] = []
    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    try:
        while len(out) < count:
            due = min(count, int((time.monotonic() - started) * rate) + 1)
            while len(out) < due:
                email = next(emails)
                now_ms = _now_ms()
                value = factory.message(email, now_ms)
                key = message_key(email)
                pending.append(
                    await producer.send(topic, value=value, key=key, timestamp_ms=now_ms)
                )
                applied = b'"pending_approval"' not in value and b'"cpra"' not in value
                out.append((key.decode(), now_ms / 1000, applied))
            await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return out


def statuses_line(counter: Counter[str]) -> str:
    """``updated 60,000, created 30,000, ...``."""
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common())
