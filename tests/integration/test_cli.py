"""The command line as an operator uses it: --help, check (good and broken mappings)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from consumer.settings import PREFIXES
from tests.integration.support import CLIENT_ID, CLIENT_SECRET, EXAMPLE_MAPPING, make_emulator

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={**_outside_settings(os.environ), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _outside_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without settings variables (``KAFKA_TEST_*`` would be
    unknown variables, which ``check`` refuses)."""
    return {k: v for k, v in environ.items() if not k.upper().startswith(PREFIXES)}


def env_for(url: str, mapping: Path, **extra: str) -> dict[str, str]:
    return {
        "SALESFORCE_TOKEN_URL": url + "/services/oauth2/token",
        "SALESFORCE_CLIENT_ID": CLIENT_ID,
        "SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
        "SYNC_MAPPING_FILE": str(mapping),
        "LOG_FORMAT": "text",
        **extra,
    }


async def test_help_lists_the_commands() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    assert "run" in out and "check" in out


async def test_check_passes_on_a_fitting_mapping() -> None:
    async with make_emulator() as emulator:
        code, out, err = await run_cli("check", env=env_for(emulator.url, EXAMPLE_MAPPING))
    assert code == 0, err
    assert "OK: the mapping fits the org." in out
    assert "preference topics -> Newsletter_Topics__c: ';'-joined (multipicklist)" in out
    assert CLIENT_SECRET not in out + err


async def test_check_reports_each_problem_and_fails(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        """
targets:
  - sobject: Contact
    upsert_mode: true
    allow_late_overwrites: true
    purposes: {newsletter: Newsletter_Topics__c, analytics: Missing_Field__c}
    preferences: {frequency: Newsletter_Consent__c}
  - sobject: Lead
    upsert_mode: true
    allow_late_overwrites: true
    purposes: {newsletter: Newsletter_Consent__c}
""",
        encoding="utf-8",
    )
    async with make_emulator() as emulator:
        code, out, _ = await run_cli("check", env=env_for(emulator.url, mapping))
    assert code == 2
    assert "field Newsletter_Topics__c is multipicklist, expected boolean" in out
    assert "field Missing_Field__c does not exist" in out
    assert "field Newsletter_Consent__c is boolean, expected" in out
    assert "required field LastName has no default" in out
    assert "required field Company has no default" in out
    # Allowed, yet said: without the sync state a late event overwrites a newer choice.
    assert "Contact sync_state_field: not set" in out and "Lead sync_state_field: not set" in out


async def test_run_refuses_to_start_on_a_broken_mapping(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "targets:\n  - sobject: Contact\n    allow_late_overwrites: true\n"
        "    purposes: {newsletter: Nope__c}\n",
        encoding="utf-8",
    )
    async with make_emulator() as emulator:
        env = env_for(
            emulator.url, mapping, METRICS_PORT="0", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"
        )
        code, _, err = await run_cli("run", env=env)
    assert code == 2
    assert "the mapping does not fit the org" in err
    assert "purposes.newsletter: field Nope__c does not exist" in err


async def test_check_with_wrong_secret_says_what_to_fix() -> None:
    async with make_emulator() as emulator:
        env = env_for(emulator.url, EXAMPLE_MAPPING)
        env["SALESFORCE_CLIENT_SECRET"] = "not-the-secret-123"
        code, out, err = await run_cli("check", env=env)
    assert code == 2
    assert "invalid_client" in err.lower() and "SALESFORCE_CLIENT_SECRET" in err
    assert "not-the-secret-123" not in out + err


async def test_configuration_errors_are_reported_before_connecting(tmp_path: Path) -> None:
    code, _, err = await run_cli(
        "run",
        env={
            "SALESFORCE_TOKEN_URL": "http://example.com",
            "SALESFORCE_CLIENT_ID": "x",
            "SALESFORCE_CLIENT_SECRET": "y",
        },
    )
    assert code == 2
    assert "SALESFORCE_TOKEN_URL" in err and "loopback" in err
    code, _, err = await run_cli(
        "check",
        env={
            "SALESFORCE_TOKEN_URL": "https://acme.my.salesforce.com",
            "SALESFORCE_CLIENT_ID": "x",
            "SALESFORCE_CLIENT_SECRET": "y",
            "SYNC_MAPPING_FILE": str(tmp_path / "absent.yaml"),
        },
    )
    assert code == 2
    assert "cannot read mapping file" in err


async def test_check_refuses_an_unknown_variable_and_names_the_closest() -> None:
    async with make_emulator() as emulator:
        env = env_for(emulator.url, EXAMPLE_MAPPING, KAFKA_GROUPID="typo", SYNC_FOO_BAR="1")
        code, out, _ = await run_cli("check", env=env)
    assert code == 2
    assert "unknown variable KAFKA_GROUPID (did you mean KAFKA_GROUP_ID?)" in out
    assert "unknown variable SYNC_FOO_BAR\n" in out
    # The rest of the check still ran and is reported.
    assert "OK: the mapping fits the org." in out
    assert "2 unknown environment variable(s)" in out
