"""Run the emulator standalone: ``python -m consumer.devkit.emulator --port 8080 [--seed-demo]``.

``--latency-ms`` / ``--jitter-ms`` delay every answer, so a benchmark can run the emulator as
its own process and measure a client against realistic round trips. ``--control`` adds routes
outside Salesforce's API under ``/_emulator/``: ``GET stats`` (counters, API usage, records per
sObject, journal summary), ``GET journal?calls=N&writes=M`` (entries from those positions on;
recorded only with ``--journal``), ``POST seed`` (``{"sobject": ..., "records": [...]}``) and
``POST reset`` (counters and journal). ``--port 0`` picks a free port; the first line printed
names the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from consumer.devkit.emulator import SalesforceEmulator
from consumer.devkit.emulator.app import CONTROL_PREFIX
from consumer.devkit.emulator.fields import example_custom_fields


def seed_demo(emu: SalesforceEmulator) -> None:
    """A few Contacts and Leads for the demo to find by email (one email on two Contacts)."""
    emu.seed("Contact", {"Email": "alice@example.com", "FirstName": "Alice", "LastName": "Martin"})
    emu.seed("Contact", {"Email": "bob@example.com", "FirstName": "Bob", "LastName": "Durand"})
    emu.seed("Contact", {"Email": "shared@example.com", "FirstName": "Chloe", "LastName": "One"})
    emu.seed("Contact", {"Email": "Shared@Example.com", "FirstName": "Chloe", "LastName": "Two"})
    emu.seed("Contact", {"Email": "o'brien@example.com", "FirstName": "Pat", "LastName": "O'Brien"})
    emu.seed("Lead", {"Email": "alice@example.com", "LastName": "Martin", "Company": "Acme"})
    emu.seed("Lead", {"Email": "dave@example.com", "LastName": "Petit", "Company": "Globex"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        prog="python -m consumer.devkit.emulator",
        description="Run the Salesforce REST API emulator.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--client-id", default="demo-client-id")
    parser.add_argument("--client-secret", default="demo-client-secret")
    parser.add_argument("--api-limit", type=int, default=15000)
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--seed-demo", action="store_true", help="insert demo Contacts and Leads")
    parser.add_argument(
        "--latency-ms",
        type=_non_negative,
        default=0.0,
        help="delay every answer by this many milliseconds",
    )
    parser.add_argument(
        "--jitter-ms",
        type=_non_negative,
        default=0.0,
        help="add a uniformly random 0..N milliseconds on top of --latency-ms",
    )
    parser.add_argument(
        "--latency-seed", type=int, default=None, help="seed the jitter for repeatable runs"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="serve /_emulator/stats, /_emulator/journal, /_emulator/seed and /_emulator/reset "
        "(for a benchmark driving this process)",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="record when each call was answered and each record written (read it with "
        "--control at /_emulator/journal)",
    )
    return parser.parse_args(argv)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


async def _serve(args: argparse.Namespace) -> None:
    emu = SalesforceEmulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        custom_fields=example_custom_fields(),
        api_limit=args.api_limit,
        page_size=args.page_size,
        control=args.control,
    )
    emu.journal.enabled = args.journal
    if args.seed_demo:
        seed_demo(emu)
    emu.set_latency(base_ms=args.latency_ms, jitter_ms=args.jitter_ms, seed=args.latency_seed)
    url = await emu.start(host=args.host, port=args.port)
    print(f"Salesforce emulator listening on {url}", flush=True)
    print(f"  token URL:     {url}/services/oauth2/token", flush=True)
    print(f"  client_id:     {args.client_id}", flush=True)
    print(f"  client_secret: {args.client_secret}", flush=True)
    print(f"  API versions:  {', '.join(emu.state.api_versions)}", flush=True)
    if args.latency_ms or args.jitter_ms:
        print(f"  latency:       {args.latency_ms:g} ms + 0..{args.jitter_ms:g} ms", flush=True)
    if args.control:
        journal = "on" if args.journal else "off"
        print(f"  control:       {url}{CONTROL_PREFIX}/ (journal {journal})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform; Ctrl-C then ends the run with KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m consumer.devkit.emulator``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parse_args(argv)))


if __name__ == "__main__":
    main()
