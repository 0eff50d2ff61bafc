"""Command line: ``python -m consumer run | check | replay | redrive``.

Signals are handled here and nowhere else (only ``run`` installs handlers).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from consumer import logs
from consumer.errors import MappingError, SyncError
from consumer.mapping import MappingConfig, load_mapping
from consumer.observability.metrics import Metrics
from consumer.ops import redrive, replay
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.service import EXIT_CONFIG, Service
from consumer.settings import Settings, UnknownVariable, unknown_variables

#: Allocations between two young collections of the cyclic garbage collector (default 700).
GC_YOUNG_THRESHOLD = 100_000
#: Allocations from this size up are mapped on their own and unmapped when freed (glibc).
MALLOC_MMAP_THRESHOLD = 128 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents the commands in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description=(
            "Keeps Salesforce Contacts and Leads in step with Didomi consent events read from "
            "Kafka. Configuration comes from environment variables (see README)."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the sync service until SIGTERM or SIGINT")
    sub.add_parser(
        "check",
        help="log in to Salesforce, validate the mapping against the org's fields, print a "
        "report; exit non-zero on a problem",
    )
    replay.add_arguments(
        sub.add_parser(
            "replay",
            help="move the service group's committed offsets to replay (service stopped)",
            description="Resets the committed offsets of KAFKA_GROUP_ID on KAFKA_INPUT_TOPIC "
            "so that the service reads again from there. Stop the service first: the command "
            "joins the group once to make sure nobody else is in it, and refuses otherwise. "
            "Prints one line per partition: committed offset, new offset and the difference. "
            "Needs only the Kafka settings.",
            epilog="exit codes: 0 done or dry run, 1 Kafka error (nothing changed), "
            "2 bad arguments or configuration, 3 refused: the group has live members",
        )
    )
    redrive.add_arguments(
        sub.add_parser(
            "redrive",
            help="re-publish dead letters from KAFKA_DLQ_TOPIC to KAFKA_INPUT_TOPIC",
            description="Reads KAFKA_DLQ_TOPIC from the redrive group's committed position "
            "until caught up and re-publishes the selected dead letters to KAFKA_INPUT_TOPIC "
            "with their original key, value and headers (x-dlq-* headers removed except "
            "x-dlq-first-seen; x-redriven-at and x-redriven-from added), waits for every "
            "acknowledgement, then commits. Messages skipped by --error-class are not "
            "consumed: the redrive group's offset stops at the first skipped message of each "
            "partition, and per-class groups (<group>.<class>) remember what a filtered run "
            "redrove, so a later run with another --error-class (or none) redrives the "
            "skipped ones and nothing is published twice. Needs only the Kafka settings.",
            epilog="exit codes: 0 done or dry run, 1 Kafka error (nothing committed), "
            "2 bad arguments or configuration, 3 refused: a redrive group is in use",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    unknown = unknown_variables(os.environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"configuration error: {_settings_errors(exc)}", file=sys.stderr)
        for variable in unknown:
            print(f"configuration error: {variable}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "check":
        # check refuses them (exit 2), after reporting everything else it finds.
        for variable in unknown:
            print(f"configuration error: {variable}")
    else:
        _warn_unknown(unknown)
    if args.command == "replay":  # Kafka only: no Salesforce settings, no mapping
        return replay.main(settings, args)
    if args.command == "redrive":
        return redrive.main(settings, args)
    try:
        settings.require_salesforce()
        mapping = load_mapping(settings.sync_mapping_file)
    except (ValueError, MappingError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        code = asyncio.run(_check(settings, mapping))
        if unknown:
            print(f"check failed: {len(unknown)} unknown environment variable(s), listed above")
            return EXIT_CONFIG
        return code
    return asyncio.run(_run(settings, mapping))


def _warn_unknown(unknown: Sequence[UnknownVariable]) -> None:
    """Log each unknown variable at start-up: a misspelt setting is otherwise ignored."""
    for variable in unknown:
        logger.warning(
            "%s: it is ignored; `check` refuses it",
            variable,
            extra={"variable": variable.name, "closest": variable.closest},
        )


async def _check(settings: Settings, mapping: MappingConfig) -> int:
    async with SalesforceClient(settings, Metrics()) as client:
        try:
            report = await check_mapping(client, mapping)
        except SyncError as exc:
            print(f"check failed: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    print(report.render())
    return 0 if report.ok else EXIT_CONFIG


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running consumer.

    Almost nothing the pipeline drops is cyclic (reference counting frees it), but with the
    default thresholds the collector kept walking the pending events: a full collection each
    time a quarter of the old generation was new, about 20% of the service's CPU in ``make
    bench`` (c). Objects alive at start (modules, schemas, clients' setup) are frozen out of
    every collection, and a young collection waits for 100,000 allocations (net of frees)
    instead of 700: more than the pending events' working set, so the collector runs when
    garbage that only it can free has piled up, not while the working set churns (at 10,000,
    143 young and 13 middle collections took 9% of (a)'s CPU and freed 273 objects in all).
    At most that many cyclic objects wait to be freed.
    """
    gc.collect()  # nothing cyclic left over from start-up is frozen with the rest
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _tune_malloc(environ: Mapping[str, str] = os.environ) -> bool:
    """Give freed large buffers back to the system (glibc); True when set.

    glibc raises its mmap threshold each time a mapped block is freed, so after a while the
    large buffers (fetch responses, request and outcome bytes) come from the heap, which a
    long run fragments: RSS kept the high-water mark of the largest burst (``make bench``
    (d): 256 MB after 1,000,000 events against 199 after 100,000). A fixed threshold keeps
    them mapped, and freed heap tops are trimmed. Settings an operator gives through
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``'
    ``glibc.malloc.*`` win; other C libraries are left alone.
    """
    if (
        "MALLOC_MMAP_THRESHOLD_" in environ
        or "MALLOC_TRIM_THRESHOLD_" in environ
        or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped: bool = mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) == 1
    trimmed: bool = mallopt(_M_TRIM_THRESHOLD, MALLOC_MMAP_THRESHOLD) == 1
    return mapped and trimmed


async def _run(settings: Settings, mapping: MappingConfig) -> int:
    _tune_gc()
    _tune_malloc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("stopping", extra={"signal": signal.Signals(signum).name})
            stop.set()
        else:
            logger.warning("second signal: exiting now without draining")
            os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await Service(settings, mapping).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _settings_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    )
