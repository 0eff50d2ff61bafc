"""``python -m consumer.devkit.emulator`` as its own process, as a benchmark runs it."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from consumer.devkit.emulator.__main__ import parse_args

pytestmark = pytest.mark.integration

# The checkout this test belongs to, so the child imports the same code.
ROOT = Path(__file__).resolve().parents[2]


async def _read_url(stdout: asyncio.StreamReader) -> str:
    while True:
        line = (await stdout.readline()).decode()
        if not line:
            raise AssertionError("the emulator exited before printing its URL")
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return found.group(1)


@pytest.mark.asyncio
async def test_cli_serves_with_the_latency_it_was_given() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer.devkit.emulator",
        "--port",
        "0",
        "--client-id",
        "cli-id",
        "--client-secret",
        "cli-secret",
        "--latency-ms",
        "150",
        "--jitter-ms",
        "20",
        "--latency-seed",
        "7",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = await asyncio.wait_for(_read_url(proc.stdout), timeout=30)
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "client_credentials",
                "client_id": "cli-id",
                "client_secret": "cli-secret",
            }
            async with session.post(f"{url}/services/oauth2/token", data=form) as resp:
                assert resp.status == 200
                token = (await resp.json())["access_token"]
            started = time.monotonic()
            async with session.get(
                f"{url}/services/data/v62.0/limits",
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                assert resp.status == 200
                await resp.read()
            assert time.monotonic() - started >= 0.15
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)
    # SIGTERM ends the run cleanly (the CLI handles it), not by dying on the signal.
    assert proc.returncode == 0


def test_latency_options_parse_and_refuse_negative_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args(["--latency-ms", "12.5", "--jitter-ms", "3", "--latency-seed", "1"])
    assert (args.latency_ms, args.jitter_ms, args.latency_seed) == (12.5, 3.0, 1)
    defaults = parse_args([])
    assert (defaults.latency_ms, defaults.jitter_ms, defaults.latency_seed) == (0.0, 0.0, None)
    for bad in (["--latency-ms", "-1"], ["--jitter-ms", "nan"], ["--latency-ms", "fast"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "--latency-ms" in capsys.readouterr().err
