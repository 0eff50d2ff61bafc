"""The service's one exception hierarchy.

Every class says whether retrying can help (``retriable``) and, for Salesforce answers, which
of the four reactions applies: retry with backoff, refresh the token, pause consumption, or
report per record. Callers catch by class, never by message text. Messages never carry
secrets or access tokens.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Reaction(StrEnum):
    """What the pipeline does about an error."""

    RETRY = "retry"  # transient: back off with jitter and try again
    REFRESH = "refresh"  # the session expired: get one new token, retry once
    PAUSE = "pause"  # the org's quota is spent: stop writing until it recovers
    REPORT = "report"  # permanent: give the affected events a failed outcome
    CONFIGURATION = "configuration"  # an operator must fix settings; retry slowly


class SyncError(Exception):
    """Base of every error raised by this service."""

    retriable: bool = False
    reaction: Reaction = Reaction.REPORT
    #: A stable, machine-readable name, used in outcomes, DLQ headers and metric labels.
    code: str = "SYNC_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigurationError(SyncError):
    """Settings or the mapping file are wrong; nothing will work until an operator fixes them."""

    code = "CONFIGURATION_ERROR"
    reaction = Reaction.CONFIGURATION


class MappingError(ConfigurationError):
    """The mapping file does not load, or does not fit the Salesforce org's fields."""

    code = "MAPPING_ERROR"


# --- input ------------------------------------------------------------------------------


class RejectedMessage(SyncError):
    """An input message that cannot be processed; it goes to the dead-letter topic."""

    code = "REJECTED"

    def __init__(self, message: str, *, error_class: str) -> None:
        super().__init__(message, code=error_class)
        self.error_class = error_class


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

    retriable = True
    reaction = Reaction.RETRY
    code = "TRANSIENT"


class SessionExpiredError(SalesforceError):
    """401 INVALID_SESSION_ID: the access token expired or was revoked."""

    retriable = True
    reaction = Reaction.REFRESH
    code = "INVALID_SESSION_ID"


class AuthenticationError(SalesforceError):
    """The token endpoint refused the credentials, or the session may not use the REST API."""

    reaction = Reaction.CONFIGURATION
    code = "AUTHENTICATION_FAILED"


class RequestLimitExceededError(SalesforceError):
    """403 REQUEST_LIMIT_EXCEEDED (TotalRequests): the org's 24-hour quota is spent."""

    retriable = True
    reaction = Reaction.PAUSE
    code = "REQUEST_LIMIT_EXCEEDED"


class ApiBudgetExceededError(SalesforceError):
    """The org's API usage passed the share this service may use; writing waits."""

    retriable = True
    reaction = Reaction.PAUSE
    code = "API_BUDGET_EXCEEDED"


class SalesforceRequestError(SalesforceError):
    """A whole request was refused for a reason retrying cannot fix (400 and the like)."""

    reaction = Reaction.REPORT


class RetryBudgetExhaustedError(SalesforceTransientError):
    """Transient errors went on for longer than the configured time budget.

    ``done`` holds the results of the people written before the budget ran out (by email
    key) and ``pending`` the keys still unwritten, so a caller can report exactly those.
    """

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
    """An outcome or dead-letter record could not be published; nothing is committed."""

    retriable = True
    reaction = Reaction.RETRY
    code = "PUBLISH_FAILED"


# --- operator commands (replay, redrive) ------------------------------------------------


class CommandError(SyncError):
    """An operator command (``replay``, ``redrive``) cannot go on; it prints the message."""

    code = "COMMAND_ERROR"

    def __str__(self) -> str:
        return self.message


class UsageError(CommandError):
    """The command's arguments or topics do not make sense."""

    code = "USAGE"


class LiveMembersError(CommandError):
    """The consumer group has members other than this client."""

    code = "LIVE_MEMBERS"

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

    def refusal(self) -> str:
        """The refusal ``replay`` prints."""
        return f"stop the service first: {self.describe()}"


class JoinTimeoutError(CommandError):
    """The group did not hand out an assignment in time."""

    retriable = True
    code = "JOIN_TIMEOUT"


class TimeLookupError(CommandError):
    """The broker's answer to offsets_for_times is not believable."""

    code = "TIME_LOOKUP"


class RedrivePublishError(CommandError):
    """Redrive could not publish; nothing was committed."""

    retriable = True
    code = "REDRIVE_PUBLISH_FAILED"


class RedriveCommitError(CommandError):
    """Redrive published messages but could not commit its progress."""

    retriable = True
    code = "REDRIVE_COMMIT_FAILED"

    def __init__(self, published: int) -> None:
        super().__init__(f"published {published} message(s) but could not commit")
        self.published = published
