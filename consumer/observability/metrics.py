"""Every Prometheus metric of the service, defined once on an injected registry.

Labels never carry personal data: no email, no organization_user_id, no record id.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)

NAMESPACE = "consent_sync"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RECORD_BUCKETS = (1, 5, 10, 25, 50, 100, 150, 200)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)
_PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


class Metrics:
    """The service's metrics; pass a fresh registry in tests to keep them apart."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        # The process's CPU and memory, and the garbage collector `run` tunes (collections
        # per generation, objects collected): what a throughput or memory problem needs first.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.messages_consumed = Counter(
            "messages_consumed_total",
            "Messages read from the input topic.",
            ["topic"],
            namespace=ns,
            registry=r,
        )
        self.outcomes = Counter(
            "outcomes_total",
            "Outcomes published, by status and target sObject ('' for none).",
            ["status", "sobject"],
            namespace=ns,
            registry=r,
        )
        self.dead_letters = Counter(
            "dead_letters_total",
            "Messages sent to the dead-letter topic, by error class.",
            ["error_class"],
            namespace=ns,
            registry=r,
        )
        self.salesforce_calls = Counter(
            "salesforce_calls_total",
            "Salesforce API calls, by operation and HTTP status ('error' when no answer).",
            ["operation", "status"],
            namespace=ns,
            registry=r,
        )
        self.salesforce_subrequests = Counter(
            "salesforce_subrequests_total",
            "Queries and collection calls sent inside composite calls (SALESFORCE_COMPOSITE), "
            "by operation and HTTP status; the composite calls themselves are "
            'salesforce_calls_total{operation="composite"}.',
            ["operation", "status"],
            namespace=ns,
            registry=r,
        )
        self.salesforce_latency = Histogram(
            "salesforce_call_duration_seconds",
            "Latency of Salesforce API calls.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.records_per_call = Histogram(
            "salesforce_records_per_call",
            "Records sent in one sObject Collections call.",
            ["operation"],
            buckets=_RECORD_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.salesforce_retries = Counter(
            "salesforce_retries_total",
            "Salesforce calls or records retried, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.token_grants = Counter(
            "salesforce_token_grants_total",
            "Access tokens requested, by result.",
            ["result"],
            namespace=ns,
            registry=r,
        )
        self.api_usage_used = Gauge(
            "salesforce_api_usage_used",
            "API calls used in the org's rolling 24 hours (Sforce-Limit-Info).",
            namespace=ns,
            registry=r,
        )
        self.api_usage_limit = Gauge(
            "salesforce_api_usage_limit",
            "The org's 24-hour API call limit (Sforce-Limit-Info).",
            namespace=ns,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages behind the partition's high watermark, from the committed offset "
            "(highwater minus committed; fetched-but-unfinished messages count).",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.batches_in_flight = Gauge(
            "batches_in_flight",
            "Batches being written to Salesforce.",
            namespace=ns,
            registry=r,
        )
        self.recent_people = Gauge(
            "recent_choices_people",
            "People whose latest choices the service remembers in memory (SYNC_RECENT_CHOICES_*).",
            namespace=ns,
            registry=r,
        )
        self.recent_forgotten_early = Counter(
            "recent_choices_forgotten_early_total",
            "People forgotten by SYNC_RECENT_CHOICES_PEOPLE before SYNC_RECENT_CHOICES_SECONDS "
            "was over (the bound, not the window, decides how long choices are remembered).",
            namespace=ns,
            registry=r,
        )
        self.recent_restore_problems = Counter(
            "recent_choices_restore_problems_total",
            "Reading the choices topic back: read_failed (cut short by an error or "
            "KAFKA_CHOICES_RESTORE_SECONDS), unreadable_entry.",
            ["problem"],
            namespace=ns,
            registry=r,
        )
        self.batch_events = Histogram(
            "batch_events",
            "Input messages per batch.",
            buckets=_BATCH_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.batch_people = Histogram(
            "batch_people",
            "Distinct people per batch (after dedup).",
            buckets=_BATCH_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.batch_duration = Histogram(
            "batch_duration_seconds",
            "Time from dispatching a batch to its outcomes being acknowledged.",
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.batch_phase = Histogram(
            "batch_phase_seconds",
            "Where a batch's time goes, by phase: merge (dispatch to its first write, the "
            "batch task's start included), salesforce (every target's writes), outcomes "
            "(building them, and starting the lane's next batch), order (waiting for the "
            "lane's previous batch to publish), "
            "publish (to the broker's acknowledgement).",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.commits = Counter(
            "offset_commits_total",
            "Offset commits, by result.",
            ["result"],
            namespace=ns,
            registry=r,
        )
        self.paused = Gauge(
            "salesforce_writes_paused",
            "1 while writing to Salesforce is paused (quota, API budget, login, outage).",
            namespace=ns,
            registry=r,
        )
        self.fields_unavailable = Gauge(
            "salesforce_fields_unavailable",
            "Mapped fields Salesforce stopped letting the service write while it ran (deleted, "
            "or hidden by field-level security): their choices are refused and dead-lettered "
            "until the field is back.",
            ["sobject"],
            namespace=ns,
            registry=r,
        )
        self.pauses = Counter(
            "salesforce_pauses_total",
            "Times writing to Salesforce was paused, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.ready = Gauge(
            "ready",
            "1 when the service is ready (in its group, Salesforce authenticated).",
            namespace=ns,
            registry=r,
        )
