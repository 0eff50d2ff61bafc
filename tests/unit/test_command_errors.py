"""How the operator commands end on each error: exit code and the line an operator reads."""

from __future__ import annotations

import io

import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from consumer.errors import (
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_USAGE,
    Command,
    CommandError,
    JoinTimeoutError,
    LiveMembersError,
    RedriveCommitError,
    RedrivePublishError,
    TimeLookupError,
    UsageError,
)
from consumer.ops.command import EXIT_OK, run_command

pytestmark = pytest.mark.asyncio

DOWN = KafkaConnectionError("down")
FENCED = CommitFailedError()


async def ends(command: Command, error: BaseException | None) -> tuple[int, str]:
    """Run a command body that raises ``error`` (or returns 0); exit code and stderr."""

    async def body() -> int:
        if error is not None:
            raise error
        return EXIT_OK

    err = io.StringIO()
    code = await run_command(command, body(), err)
    return code, err.getvalue()


def caused(error: CommandError, cause: BaseException) -> CommandError:
    """``error`` raised ``from cause``, as the commands raise it."""
    try:
        raise error from cause
    except CommandError as exc:
        return exc


async def test_success_prints_nothing() -> None:
    assert await ends("replay", None) == (EXIT_OK, "")


@pytest.mark.parametrize(
    ("command", "error", "code", "line"),
    [
        (
            "replay",
            LiveMembersError("g", 1),
            EXIT_REFUSED,
            "stop the service first: group g has 1 live member",
        ),
        (
            "redrive",
            LiveMembersError("g", 2, "why"),
            EXIT_REFUSED,
            "refused: group g has 2 live members (why); is another redrive running? "
            "Nothing was published",
        ),
        ("replay", JoinTimeoutError("no assignment"), EXIT_REFUSED, "refused: no assignment"),
        (
            "redrive",
            JoinTimeoutError("no assignment"),
            EXIT_REFUSED,
            "refused: no assignment; nothing published",
        ),
        (
            "replay",
            UsageError("topic t does not exist"),
            EXIT_USAGE,
            "replay: error: topic t does not exist",
        ),
        ("redrive", UsageError("no DLQ"), EXIT_USAGE, "redrive: error: no DLQ"),
        ("replay", TimeLookupError("bad index"), EXIT_FAILED, "replay: bad index"),
        (
            "redrive",
            caused(RedrivePublishError("publishing failed"), DOWN),
            EXIT_FAILED,
            f"redrive failed while publishing ({DOWN!r}): nothing committed, "
            "so the next run re-publishes what this one sent",
        ),
        (
            "redrive",
            caused(RedriveCommitError(4), LiveMembersError("g.A", None)),
            EXIT_FAILED,
            "redrive published 4 message(s) but could not commit (group g.A has at least 1 "
            "live member): the next run re-publishes those not recorded",
        ),
        (
            "redrive",
            caused(RedriveCommitError(1), FENCED),
            EXIT_FAILED,
            f"redrive published 1 message(s) but could not commit ({FENCED!r}): "
            "the next run re-publishes those not recorded",
        ),
        ("replay", CommandError("something"), EXIT_FAILED, "replay: something"),
    ],
)
async def test_each_command_error_has_its_exit_code_and_wording(
    command: Command, error: CommandError, code: int, line: str
) -> None:
    assert error.exit_code == code
    assert await ends(command, error) == (code, line + "\n")


@pytest.mark.parametrize(
    ("command", "unchanged"), [("replay", "nothing changed"), ("redrive", "nothing committed")]
)
async def test_a_kafka_error_fails_the_command_saying_nothing_changed(
    command: Command, unchanged: str
) -> None:
    code, text = await ends(command, KafkaConnectionError("broker gone"))
    assert code == EXIT_FAILED
    assert text.startswith(f"{command} failed, {unchanged}: ")
    assert "broker gone" in text


async def test_other_exceptions_are_bugs_and_propagate() -> None:
    with pytest.raises(ZeroDivisionError):
        await ends("replay", ZeroDivisionError())
