"""How an operator command ends: one exit code and, on failure, one line on stderr.

The commands raise; :func:`run_command` is the one place that turns what they raise into an
exit code and a message. A :class:`~consumer.errors.CommandError` carries both (its
``exit_code`` and :meth:`~consumer.errors.CommandError.render`); any other Kafka error is a
failure that stopped the command before it changed anything.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TextIO

from aiokafka.errors import KafkaError

from consumer.errors import EXIT_FAILED, Command, CommandError

#: The command did what was asked (a dry run included).
EXIT_OK = 0

#: What a command has not done when a plain Kafka error stops it. Both commit offsets only in
#: their last step: a plain KafkaError comes from the reads and joins before it, or from that
#: commit failing. (Redrive publishes before it commits; a failure after publishing is wrapped
#: in a CommandError that says what was published.)
_UNCHANGED: dict[Command, str] = {
    "replay": "nothing changed",
    "redrive": "nothing committed",
}


async def run_command(command: Command, body: Awaitable[int], err: TextIO) -> int:
    """Await ``body`` (the command's work) and return its exit code.

    A :class:`CommandError` prints its rendering for ``command`` on ``err`` and exits with its
    ``exit_code``; a :class:`KafkaError` prints that nothing was changed and exits with
    :data:`EXIT_FAILED`. Anything else propagates: it is a bug, and its traceback is wanted.
    """
    try:
        return await body
    except CommandError as exc:
        print(exc.render(command), file=err)
        return exc.exit_code
    except KafkaError as exc:
        print(f"{command} failed, {_UNCHANGED[command]}: {exc!r}", file=err)
        return EXIT_FAILED
