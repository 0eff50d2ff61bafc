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


@pytest.mark.asyncio
async def test_control_routes_seed_and_report_the_journal() -> None:
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
        "--control",
        "--journal",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = await asyncio.wait_for(_read_url(proc.stdout), timeout=30)
        control = f"{url}/_emulator"
        async with aiohttp.ClientSession() as session:
            seed = {
                "sobject": "Contact",
                "records": [
                    {
                        "Email": f"p{i}@example.com",
                        "LastName": "P",
                        "Didomi_Id__c": f"p{i}@example.com",
                    }
                    for i in range(3)
                ],
            }
            async with session.post(f"{control}/seed", json=seed) as resp:
                assert resp.status == 200
                assert await resp.json() == {"seeded": 3}
            async with session.post(
                f"{control}/seed", json={"sobject": "Nope", "records": [{}]}
            ) as resp:
                assert resp.status == 400
            form = {
                "grant_type": "client_credentials",
                "client_id": "cli-id",
                "client_secret": "cli-secret",
            }
            async with session.post(f"{url}/services/oauth2/token", data=form) as resp:
                token = (await resp.json())["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            body = {
                "allOrNone": False,
                "records": [
                    {
                        "attributes": {"type": "Contact"},
                        "Didomi_Id__c": "P1@example.com",
                        "Newsletter_Consent__c": True,
                    },
                    {
                        "attributes": {"type": "Contact"},
                        "Didomi_Id__c": "new@example.com",
                        "LastName": "N",
                    },
                ],
            }
            upsert = f"{url}/services/data/v62.0/composite/sobjects/Contact/Didomi_Id__c"
            async with session.patch(upsert, json=body, headers=auth) as resp:
                assert resp.status == 200
            soql = (
                "SELECT Id FROM Contact WHERE Email IN ('p0@example.com', 'p2@example.com', "
                "'x@y.org')"
            )
            async with session.get(
                f"{url}/services/data/v62.0/query", params={"q": soql}, headers=auth
            ) as resp:
                assert (await resp.json())["totalSize"] == 2
            async with session.get(f"{control}/stats") as resp:
                stats = await resp.json()
            assert stats["stats"]["upsert"] == 1
            assert stats["records"] == {"Contact": 4}
            assert stats["journal"]["summary"] == [
                {
                    "kind": "query",
                    "sobject": "Contact",
                    "calls": 1,
                    "sent": 3,
                    "ok": 2,
                    "max_sent": 3,
                },
                {
                    "kind": "upsert",
                    "sobject": "Contact",
                    "calls": 1,
                    "sent": 2,
                    "ok": 2,
                    "max_sent": 2,
                },
            ]
            async with session.get(
                f"{control}/journal", params={"calls": "1", "writes": "0"}
            ) as resp:
                journal = await resp.json()
            assert [c[1:] for c in journal["calls"]] == [["query", "Contact", 3, 2]]
            assert [(w[1], w[2], w[4]) for w in journal["writes"]] == [
                ("Contact", "update", "p1@example.com"),
                ("Contact", "create", "new@example.com"),
            ]
            assert (journal["next_calls"], journal["next_writes"]) == (2, 2)
            assert all(abs(w[0] - time.time()) < 60 for w in journal["writes"])
            async with session.post(f"{control}/reset") as resp:
                assert resp.status == 200
            async with session.get(f"{control}/journal") as resp:
                assert (await resp.json())["calls"] == []
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_control_routes_are_absent_unless_asked_for() -> None:
    from consumer.devkit.emulator import SalesforceEmulator

    async with SalesforceEmulator() as emu, aiohttp.ClientSession() as session:
        async with session.get(f"{emu.url}/_emulator/stats") as resp:
            assert resp.status == 404
        # The journal is off by default: nothing is recorded.
        assert emu.journal.enabled is False
        assert emu.journal.calls == []


def test_control_and_journal_flags_parse() -> None:
    args = parse_args(["--control", "--journal"])
    assert (args.control, args.journal) == (True, True)
    defaults = parse_args([])
    assert (defaults.control, defaults.journal) == (False, False)
