"""The service's one Settings object, read from the environment at the entry point.

Nothing deeper in the code reads the environment: the entry point builds ``Settings`` once and
passes it (or the parts a component needs) down. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TOKEN_PATH = "/services/oauth2/token"

#: Prefixes of the service's environment variables: any other variable with one of them is
#: reported as unknown (most likely a misspelt setting, which would otherwise be ignored).
PREFIXES = ("KAFKA_", "SALESFORCE_", "SYNC_", "HEALTH_", "METRICS_", "LOG_")

#: Variables Kubernetes injects for every Service of the namespace (``enableServiceLinks``,
#: on by default): a Service named ``kafka`` gives ``KAFKA_PORT``, ``KAFKA_SERVICE_HOST``, ...
_SERVICE_LINK = re.compile(
    r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def normalise_token_base(url: str) -> str:
    """The token endpoint's base (``https://my-domain.my.salesforce.com``) from what a user typed.

    A full ``.../services/oauth2/token`` URL is accepted and cut back to its base. ``http://`` is
    refused unless the host is loopback: client credentials must never cross a network in clear.
    """
    text = url.strip().rstrip("/")
    if text.lower().endswith(TOKEN_PATH):
        text = text[: -len(TOKEN_PATH)].rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError("must be an https:// URL such as https://my-domain.my.salesforce.com")
    if parts.query or parts.fragment or (parts.path not in {"", "/"}):
        raise ValueError(
            "must be the org's base URL (https://my-domain.my.salesforce.com) or its "
            f"{TOKEN_PATH} endpoint"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("http:// is allowed only for a loopback host; use https://")
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting of the service; each maps to the upper-cased environment variable."""

    model_config = SettingsConfigDict(
        # Environment variables that are no field are ignored here and reported by
        # unknown_variables() (at start-up; check refuses them).
        env_file=None,
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_input_topic: str = "didomi.consent-events"
    kafka_results_topic: str = "didomi.consent-results"
    kafka_dlq_topic: str = "didomi.consent-events.dlq"
    #: A compacted topic with as many partitions as the input where the service keeps what
    #: it remembers of each person's recent choices (SYNC_RECENT_CHOICES_*): read back when
    #: a partition is assigned, so it survives restarts and follows partitions between
    #: replicas. Unset: remembered in the process only.
    kafka_choices_topic: str | None = None
    #: How long an assignment waits for the choices topic to be read back.
    kafka_choices_restore_seconds: PositiveFloat = 60.0
    kafka_group_id: str = "didomi-salesforce-sync"
    kafka_client_id: str = "didomi-salesforce-sync"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    kafka_session_timeout_ms: PositiveInt = 10_000
    kafka_heartbeat_interval_ms: PositiveInt = 3_000
    kafka_max_poll_interval_ms: PositiveInt = 300_000
    kafka_fetch_max_records: PositiveInt = 1_000
    #: Longest a fetch waits for data at the broker (aiokafka's default is 500 ms): with
    #: little traffic it bounds the Kafka leg of an event's latency.
    kafka_fetch_max_wait_ms: PositiveInt = 100
    #: Idempotent producer (needs broker support; Apache Kafka has it, the embedded broker not).
    kafka_producer_idempotence: bool = False
    kafka_producer_linger_ms: Annotated[int, Field(ge=0)] = 5
    #: Largest record the producer sends (a dead letter carries the original value).
    kafka_producer_max_request_bytes: PositiveInt = 16 * 1024 * 1024

    # --- Salesforce ----------------------------------------------------------------------
    salesforce_token_url: str = ""
    salesforce_client_id: str = ""
    salesforce_client_secret: SecretStr = SecretStr("")
    salesforce_api_version: Annotated[str, Field(pattern=r"^\d{2,3}\.0$")] = "62.0"
    salesforce_client_name: str = "didomi-salesforce-sync"
    salesforce_timeout_seconds: PositiveFloat = 30.0
    salesforce_connect_timeout_seconds: PositiveFloat = 10.0
    #: Connections in the one shared HTTP session. Unset: one for every call the lanes can
    #: have in flight at once, plus two (see ``service.pool_size``); fewer make calls queue
    #: for a connection, which counts in their latency.
    salesforce_pool_size: PositiveInt | None = None
    #: Longest query URL (path and query string) sent; Salesforce caps request line plus
    #: headers at 16,384 bytes, and the rest leaves room for the request line and headers.
    salesforce_max_url_bytes: Annotated[int, Field(ge=1_000, le=16_000)] = 15_000
    salesforce_retry_budget_seconds: PositiveFloat = 300.0
    salesforce_retry_initial_seconds: PositiveFloat = 0.5
    salesforce_retry_max_seconds: PositiveFloat = 30.0
    #: How long writing stops after the org's daily API limit was hit.
    salesforce_limit_pause_seconds: PositiveFloat = 300.0
    #: How often a refused login (a configuration error) is tried again.
    salesforce_auth_retry_seconds: PositiveFloat = 60.0
    #: Stop writing when the org's 24-hour API usage passes this share of its limit, so that
    #: this service never starves the org's other integrations.
    salesforce_api_budget_share: Annotated[float, Field(gt=0, le=1)] = 0.9
    #: How long writing pauses when the share is passed before usage is looked at again.
    salesforce_budget_pause_seconds: PositiveFloat = 60.0
    #: When transient errors outlast the retry budget: ``pause`` keeps the batch (partitions
    #: paused, retried later); ``dead_letter`` gives its events failed outcomes and DLQs them.
    salesforce_on_retry_exhausted: Literal["pause", "dead_letter"] = "pause"
    #: ``allowSave`` of ``Sforce-Duplicate-Rule-Header`` on every write: true lets a duplicate
    #: rule whose action is "Alert" save anyway (a consent write must not be blocked by an
    #: alert); a "Block" rule still refuses the record.
    salesforce_duplicate_rule_allow_save: bool = True
    #: A mapped field that disappears while the service runs (deleted, or hidden from the
    #: integration user) is left out of writes, its choices refused and dead-lettered; the
    #: first batch for the target after this long describes it again, to take it back.
    salesforce_describe_recheck_seconds: PositiveFloat = 300.0
    #: Send the queries and writes a batch issues together as composite calls (up to 5 each),
    #: counted once against the org's API limit; Salesforce runs them one after another, so a
    #: batch takes longer. ``auto``: only while the service is behind (a backlog or a replay,
    #: see ``SALESFORCE_COMPOSITE_BACKLOG``); ``on``: always; ``off``: never.
    salesforce_composite: Literal["off", "auto", "on"] = "auto"
    #: Messages not yet done (not fetched yet, plus held by the service) from which
    #: ``auto`` sends composite calls.
    salesforce_composite_backlog: PositiveInt = 5_000

    # --- Sync ----------------------------------------------------------------------------
    sync_mapping_file: Path = Path("mapping.yaml")
    sync_batch_max_events: PositiveInt = 10_000
    sync_batch_max_bytes: PositiveInt = 8 * 1024 * 1024
    sync_batch_linger_ms: Annotated[int, Field(ge=0)] = 500
    sync_concurrency: Annotated[int, Field(ge=1, le=25)] = 4
    sync_max_message_bytes: PositiveInt = 1024 * 1024
    #: An event dated more than this after its Kafka record's timestamp is rejected (a
    #: future date would stamp records so that every real later choice lost against it).
    sync_max_future_skew_seconds: Annotated[float, Field(ge=0)] = 300.0
    sync_commit_interval_ms: Annotated[int, Field(ge=0)] = 1_000
    sync_shutdown_timeout_seconds: PositiveFloat = 20.0
    #: How long a rebalance waits for in-flight batches of revoked partitions before
    #: abandoning them (their offsets are not committed; the next owner redoes them).
    sync_rebalance_timeout_seconds: PositiveFloat = 10.0
    #: Largest number of fetched-but-unfinished messages and bytes held in memory; above
    #: either, partitions are paused until work drains.
    sync_max_pending_events: PositiveInt = 20_000
    sync_max_pending_bytes: PositiveInt = 64 * 1024 * 1024
    #: How long the service remembers, per person, the choices of a finished batch (newest
    #: stamp per choice, in memory): a late grant older than one of them is written nowhere,
    #: also where no record holds a stamp of the newer choice (a record made since, a person
    #: not found then). Didomi retries for minutes. 0 turns it off.
    sync_recent_choices_seconds: Annotated[float, Field(ge=0)] = 3_600.0
    #: ...for at most this many people (about 250 bytes each), the least recently taken in
    #: forgotten first.
    sync_recent_choices_people: Annotated[int, Field(ge=0)] = 100_000

    # --- Operations ----------------------------------------------------------------------
    metrics_host: str = "0.0.0.0"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9102
    #: /healthz fails when the poll loop has not come round for this long...
    health_poll_stall_seconds: PositiveFloat = 60.0
    #: ...or when no batch finished for this long while work was pending (pauses excepted).
    health_progress_stall_seconds: PositiveFloat = 600.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("salesforce_token_url")
    @classmethod
    def _token_base(cls, value: str) -> str:
        return normalise_token_base(value) if value else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism is None:
                raise ValueError("KAFKA_SASL_MECHANISM is required with a SASL_ protocol")
            if not self.kafka_sasl_username or self.kafka_sasl_password is None:
                raise ValueError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required")
        if self.salesforce_retry_max_seconds < self.salesforce_retry_initial_seconds:
            raise ValueError("SALESFORCE_RETRY_MAX_SECONDS is below the initial delay")
        return self

    def require_salesforce(self) -> None:
        """Raise ValueError naming each missing Salesforce credential (for run and check)."""
        missing = [
            name
            for name, value in (
                ("SALESFORCE_TOKEN_URL", self.salesforce_token_url),
                ("SALESFORCE_CLIENT_ID", self.salesforce_client_id),
                ("SALESFORCE_CLIENT_SECRET", self.salesforce_client_secret.get_secret_value()),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"missing settings: {', '.join(missing)}")


@dataclass(frozen=True)
class UnknownVariable:
    """An environment variable with a settings prefix that is no setting."""

    name: str
    #: The closest known variable (a likely typo of it), or None.
    closest: str | None

    def __str__(self) -> str:
        hint = f" (did you mean {self.closest}?)" if self.closest else ""
        return f"unknown variable {self.name}{hint}"


def known_variables() -> frozenset[str]:
    """Every environment variable the service reads."""
    return frozenset(name.upper() for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[UnknownVariable]:
    """Variables of ``environ`` with one of :data:`PREFIXES` that no setting reads.

    Names are compared upper-cased (settings are read case-insensitively); Kubernetes'
    service-link variables (``<SERVICE>_PORT``, ``<SERVICE>_SERVICE_HOST``, ...) are left out.
    """
    known = known_variables()
    unknown = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIXES) or upper in known or _SERVICE_LINK.match(upper):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        unknown.append(UnknownVariable(name, close[0] if close else None))
    return unknown
