"""The service's one exception hierarchy.

Every class says what the service does about it (``reaction``), and the code decides by that
attribute, never by message text: the Salesforce transport retries ``RETRY`` and refreshes the
token on ``REFRESH``; the writer reports ``REPORT`` per record and retries ``RETRY`` chunks; the
write gate pauses writing on ``PAUSE`` (for ``pause_reason``), applies the configured policy on
``EXHAUSTED``; ``STOP`` ends the service with a non-zero exit so that Kubernetes restarts it.
Messages never carry secrets or access tokens.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal


class Reaction(StrEnum):
    """What the service does about an error."""

    RETRY = "retry"  # transient: back off with jitter and try again
    REFRESH = "refresh"  # the session expired: get one new token, retry once
    PAUSE = "pause"  # stop writing for a while (quota, budget); nothing is acknowledged
    REPORT = "report"  # permanent: give the affected events a failed outcome
    CONFIGURATION = "configuration"  # an operator must fix settings; retried slowly (paused)
    EXHAUSTED = "exhausted"  # retries outlasted their budget: SALESFORCE_ON_RETRY_EXHAUSTED
    STOP = "stop"  # the service cannot go on safely: stop, exit non-zero, be restarted


#: Reactions after which the same call can succeed later.
_RETRIABLE = frozenset({Reaction.RETRY, Reaction.REFRESH, Reaction.PAUSE})


class SyncError(Exception):
    """Base of every error raised by this service."""

    reaction: Reaction = Reaction.REPORT
    #: For ``PAUSE`` and ``CONFIGURATION``: the reason label of the pause (metrics, logs).
    pause_reason: str = "unexpected_error"
    #: A stable, machine-readable name, used in outcomes, DLQ headers and metric labels.
    code: str = "SYNC_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def retriable(self) -> bool:
        """Whether the same call can succeed if tried again later (derived from reaction)."""
        return self.reaction in _RETRIABLE

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigurationError(SyncError):
    """Settings or the mapping file are wrong; nothing will work until an operator fixes them."""

    code = "CONFIGURATION_ERROR"
    reaction = Reaction.CONFIGURATION


class MappingError(ConfigurationError):
    """The mapping file does not load, or does not fit the Salesforce org's fields."""

    code = "MAPPING_ERROR"
    pause_reason = "mapping"


# --- Salesforce -------------------------------------------------------------------------


class SalesforceError(SyncError):
    """An error answer (or no answer) from Salesforce."""

    code = "SALESFORCE_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.fields = fields


class SalesforceTransientError(SalesforceError):
    """5xx, timeouts, connection resets, concurrency limits: retry with backoff."""

    reaction = Reaction.RETRY
    code = "TRANSIENT"


class SessionExpiredError(SalesforceError):
    """401 INVALID_SESSION_ID: the access token expired or was revoked."""

    reaction = Reaction.REFRESH
    code = "INVALID_SESSION_ID"


class AuthenticationError(SalesforceError):
    """The token endpoint refused the credentials, or the session may not use the REST API.

    Writing pauses and the login is tried again every ``SALESFORCE_AUTH_RETRY_SECONDS``, so a
    fixed secret is picked up without a restart loop.
    """

    reaction = Reaction.CONFIGURATION
    pause_reason = "authentication"
    code = "AUTHENTICATION_FAILED"


class RequestLimitExceededError(SalesforceError):
    """403 REQUEST_LIMIT_EXCEEDED (TotalRequests): the org's 24-hour quota is spent."""

    reaction = Reaction.PAUSE
    pause_reason = "daily_limit"
    code = "REQUEST_LIMIT_EXCEEDED"


class ApiBudgetExceededError(SalesforceError):
    """The org's API usage passed the share this service may use; writing waits."""

    reaction = Reaction.PAUSE
    pause_reason = "api_budget"
    code = "API_BUDGET_EXCEEDED"


class SalesforceRequestError(SalesforceError):
    """A whole request was refused for a reason retrying cannot fix (400 and the like)."""

    reaction = Reaction.REPORT


class RetryBudgetExhaustedError(SalesforceError):
    """Transient errors went on for longer than the configured time budget.

    ``SALESFORCE_ON_RETRY_EXHAUSTED`` decides: ``pause`` keeps the batch (reason
    ``unavailable``), ``dead_letter`` reports the people still pending as failed. ``done`` holds
    the results of the people written before the budget ran out (by email key) and ``pending``
    the keys still unwritten, so a caller can report exactly those.
    """

    reaction = Reaction.EXHAUSTED
    pause_reason = "unavailable"
    code = "RETRY_BUDGET_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        done: dict[str, Any] | None = None,
        pending: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.done = done or {}
        self.pending = pending


# --- Kafka ------------------------------------------------------------------------------


class PublishError(SyncError):
    """An outcome or dead letter the broker refused for a reason retrying cannot fix (unknown
    topic, authorization, still too large once shrunk). Without its outcome a message cannot be
    acknowledged, so the service stops (exit non-zero) instead of stalling."""

    reaction = Reaction.STOP
    code = "PUBLISH_FAILED"


# --- operator commands (replay, redrive) ------------------------------------------------

#: The operator commands' names, as the operator types them.
Command = Literal["replay", "redrive"]

# Exit codes of the operator commands (0 is success, dry runs included).
#: The command failed; its message says what was and was not changed.
EXIT_FAILED = 1
#: The arguments, topics or settings do not make sense.
EXIT_USAGE = 2
#: Refused: somebody else is in the group the command needs to itself.
EXIT_REFUSED = 3


class CommandError(SyncError):
    """An operator command (``replay``, ``redrive``) cannot go on.

    ``exit_code`` is what the command exits with; :meth:`render` is what it prints.
    """

    exit_code: int = EXIT_FAILED

    def __str__(self) -> str:
        return self.message

    def render(self, command: Command) -> str:
        """The line ``command`` prints for the operator."""
        return f"{command}: {self.message}"


class UsageError(CommandError):
    """The command's arguments or topics do not make sense."""

    exit_code = EXIT_USAGE

    def render(self, command: Command) -> str:
        """``replay: error: ...``, worded like argparse's own usage errors."""
        return f"{command}: error: {self.message}"


class LiveMembersError(CommandError):
    """The consumer group has members other than this client."""

    exit_code = EXIT_REFUSED

    def __init__(self, group: str, count: int | None, detail: str = "") -> None:
        self.group = group
        self.count = count
        self.detail = detail
        super().__init__(self.describe())

    def describe(self) -> str:
        """``group G has N live members`` (and why, when known)."""
        if self.count is None:
            who = "at least 1 live member"
        else:
            who = f"{self.count} live member{'s' if self.count != 1 else ''}"
        text = f"group {self.group} has {who}"
        return f"{text} ({self.detail})" if self.detail else text

    def render(self, command: Command) -> str:
        """The refusal, with what the other member most likely is."""
        if command == "redrive":
            # The redrive groups are redrive's own: a member is another redrive run.
            return f"refused: {self.describe()}; is another redrive running? Nothing was published"
        # replay works on the service's group: a member is a running instance of the service.
        return f"stop the service first: {self.describe()}"


class JoinTimeoutError(CommandError):
    """The group did not hand out an assignment in time."""

    exit_code = EXIT_REFUSED

    def render(self, command: Command) -> str:
        """The refusal; redrive adds that it published nothing."""
        if command == "redrive":
            return f"refused: {self.message}; nothing published"
        return f"refused: {self.message}"


class TimeLookupError(CommandError):
    """The broker's answer to offsets_for_times is not believable."""


class RedrivePublishError(CommandError):
    """Redrive could not publish; nothing was committed."""

    def render(self, command: Command) -> str:
        """What failed, and that the next run publishes it again."""
        return (
            f"{command} failed while publishing ({self.__cause__!r}): nothing committed, so the "
            "next run re-publishes what this one sent"
        )


class RedriveCommitError(CommandError):
    """Redrive published messages but could not commit its progress."""

    def __init__(self, published: int) -> None:
        super().__init__(f"published {published} message(s) but could not commit")
        self.published = published

    def render(self, command: Command) -> str:
        """How many were published, why the commit failed, what the next run does."""
        cause = self.__cause__
        why = cause.describe() if isinstance(cause, LiveMembersError) else repr(cause)
        return (
            f"{command} published {self.published} message(s) but could not commit ({why}): "
            "the next run re-publishes those not recorded"
        )
