"""``python -m consumer.devkit.bench``: the command line, the run, the report.

Sections run in order (pure path, then (a)+(b), (c), (d), (e)); each prints its details as it
ends, and a table at the end sets every figure next to its baseline, the ratio and the target,
with the reason for each missed target. Every process started is stopped in the ``finally``
(also on Ctrl-C or SIGTERM), and the working directory (logs, mapping files) is removed unless
``--keep`` is given or something failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from consumer.devkit.bench.figures import Row, render_table
from consumer.devkit.bench.procs import Children
from consumer.devkit.bench.pure import run_pure
from consumer.devkit.bench.scenarios import (
    Bench,
    Options,
    Section,
    latency,
    memory,
    throughput,
    write_rate,
)

SECTIONS = ("pure", "a", "c", "d", "e")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        prog="python -m consumer.devkit.bench",
        description="Benchmarks of the consent sync, each figure as a ratio to a baseline "
        "measured in the same run: (a) throughput vs an aiokafka passthrough, (b) Salesforce "
        "calls vs the packing bound, (c) records/s at 100 ms latency vs 4 x 200 / 0.1 s, "
        "(d) peak RSS draining backlogs, (e) produce-to-write latency at a steady rate.",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} ((b) comes with (a))",
    )
    parser.add_argument("--events", type=int, default=100_000, help="(a) backlog size")
    parser.add_argument("--people", type=int, default=10_000, help="(a), (d) population")
    parser.add_argument("--zipf", type=float, default=1.0, help="(a), (d) Zipf exponent")
    parser.add_argument("--partitions", type=int, default=4, help="input topic partitions")
    parser.add_argument("--rate-events", type=int, default=40_000, help="(c) backlog size")
    parser.add_argument(
        "--million",
        action="store_true",
        help="(d) also drain 1,000,000 events (several minutes more)",
    )
    parser.add_argument("--rss-events", type=int, default=100_000, help="(d) smaller backlog")
    parser.add_argument("--paced-seconds", type=float, default=30.0, help="(e) duration")
    parser.add_argument("--paced-rate", type=int, default=1_000, help="(e) events per second")
    parser.add_argument("--pure-events", type=int, default=20_000, help="pure path: events")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep logs and files afterwards")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each service under cProfile (a .prof beside its log; implies --keep)",
    )
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS) - {"b"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if "b" in only:
        only.add("a")
    args.sections = only
    return args


def options_from(args: argparse.Namespace) -> Options:
    """The measurement sizes the arguments ask for."""
    rss = (args.rss_events, 1_000_000) if args.million else (args.rss_events,)
    o = Options(
        events=args.events,
        people=args.people,
        zipf=args.zipf,
        partitions=args.partitions,
        rate_events=args.rate_events,
        rss_events=rss,
        paced_rate=args.paced_rate,
        paced_seconds=args.paced_seconds,
    )
    if args.quick:
        o.events, o.people, o.rate_events = 10_000, 2_000, 8_000
        o.rss_events = (10_000,)
        o.paced_seconds = 5.0
    return o


def machine_lines(argv: list[str]) -> list[str]:
    """What the figures were measured on, and the command that measured them."""
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    command = shlex.join(["python", "-m", "consumer.devkit.bench", *argv])
    return [
        f"command: {command}",
        f"machine: {platform.machine()}, {cores} cores ({usable} usable), "
        f"{platform.system()} {platform.release()}; load average {load} at start",
        f"python:  {platform.python_implementation()} {platform.python_version()}",
    ]


def _say(text: str) -> None:
    print(text, flush=True)


def _print_section(section: Section) -> None:
    _say(f"\n== {section.title}")
    for line in section.lines:
        _say(line)


async def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the chosen sections; print details as they end and the table at the end."""
    started = time.monotonic()
    for line in machine_lines(argv):
        _say(line)
    options = options_from(args)
    if "pure" in args.sections:
        _say("\n== pure path (in process, no I/O)")
        events = 4_000 if args.quick else args.pure_events
        for line in run_pure(events, max(1, events // 10), 1_000, 3):
            _say(line)
    workdir = Path(tempfile.mkdtemp(prefix="consent-sync-bench-"))
    children = Children()
    children.profile = args.profile
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    bench = Bench(children, workdir, cores, options, lambda t: _say(f"  .. {t}"))
    rows: list[Row] = []
    failed = False
    steps: list[tuple[str, Callable[[], Awaitable[list[Section]]]]] = [
        ("a", lambda: throughput(bench)),
        ("c", lambda: write_rate(bench)),
        ("d", lambda: memory(bench)),
        ("e", lambda: latency(bench)),
    ]
    try:
        for name, step in steps:
            if name not in args.sections:
                continue
            try:
                sections = await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                failed = True
                _say(f"\n!! section ({name}) failed:\n{traceback.format_exc()}")
                continue
            for section in sections:
                _print_section(section)
                rows += section.rows
    finally:
        await asyncio.to_thread(children.stop_all)
        if args.keep or args.profile or failed:
            _say(f"\nlogs and files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if rows:
        _say("\n== summary (ratio = figure / baseline; baselines measured in this run)")
        _say(render_table(rows))
    _say(f"\nbench took {time.monotonic() - started:,.0f} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m consumer.devkit.bench``."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)

    async def guarded() -> int:
        # SIGTERM ends the run like Ctrl-C: the main task is cancelled, its finally stops
        # every child.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(args, given)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process the bench started was stopped", file=sys.stderr)
        return 130
