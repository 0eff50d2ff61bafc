"""The engine's rules on in-memory ports: order per person, in-order commits, lanes in
parallel, failures that stop the service, rebalance and drain. No broker, no HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from consumer.engine import pipeline as pipeline_module
from consumer.engine.gate import GatePolicy, WriteGate
from consumer.engine.health import Health
from consumer.engine.pipeline import INTAKE_CHUNK, EngineConfig, Pipeline
from consumer.engine.publisher import Publisher
from consumer.errors import PublishError, RetryBudgetExhaustedError
from consumer.observability.metrics import Metrics
from consumer.stages.parse import ParseRules
from tests.unit.fakes import MemoryChoicesLog, MemoryConsumer, MemoryProducer, MemoryWriter, Record
from tests.unit.helpers import example_plans

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
TOPIC = "in"


def event(email: str, seq: int, *, newsletter: bool | None = True) -> bytes:
    """An event.created whose Newsletter_Frequency__c value names its sequence number."""
    purpose: dict[str, Any] = {"id": "newsletter", "values": {"frequency": {"value": f"v{seq}"}}}
    if newsletter is not None:
        purpose["enabled"] = newsletter
    return orjson.dumps(
        {
            "type": "event.created",
            "parameters": {
                "entity": {
                    "id": f"ev-{seq}",
                    "created_at": (T0 + timedelta(seconds=seq)).isoformat(),
                    "user": {"organization_user_id": email},
                    "consents": {"purposes": [purpose]},
                }
            },
        }
    )


class Harness:
    """A pipeline on in-memory ports."""

    def __init__(
        self,
        partitions: int = 1,
        *,
        choices: bool = False,
        daily_limit_seconds: float = 0.05,
        **config: Any,
    ) -> None:
        self.consumer = MemoryConsumer(TOPIC, partitions)
        self.producer = MemoryProducer()
        #: The choices topic (KAFKA_CHOICES_TOPIC), when ``choices``.
        self.log = MemoryChoicesLog(self.producer) if choices else None
        self.contact = MemoryWriter("Contact")
        self.lead = MemoryWriter("Lead")
        self.metrics = Metrics(CollectorRegistry())
        self.health = Health()
        self.gate = WriteGate(
            GatePolicy(
                pause_seconds={"daily_limit": daily_limit_seconds}, default_pause_seconds=0.05
            ),
            self.metrics,
            self.health,
            clock=time.monotonic,
        )
        publisher = Publisher(
            self.producer,
            results_topic="results",
            dlq_topic="dlq",
            metrics=self.metrics,
            retry_initial_seconds=0.001,
            choices_topic="choices" if choices else None,
        )
        defaults: dict[str, Any] = {
            "concurrency": 4,
            "linger_seconds": 0.0,
            "commit_interval_seconds": 0.0,
            "shutdown_timeout_seconds": 5.0,
            "rebalance_timeout_seconds": 0.2,
        }
        defaults.update(config)
        self.pipeline = Pipeline(
            EngineConfig(**defaults),
            ParseRules(),
            example_plans(),
            [self.contact, self.lead],
            self.consumer,
            publisher,
            self.gate,
            self.metrics,
            self.health,
            choices=self.log,
        )
        self.consumer.listener = self.pipeline.listener()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.pipeline.run(self.stop))

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)

    def outcomes(self) -> list[dict[str, Any]]:
        return [orjson.loads(s.value or b"{}") for s in self.producer.topics["results"]]

    async def until(self, what: str, predicate: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError(f"the pipeline ended before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.002)


def tp(p: int) -> TopicPartition:
    return TopicPartition(TOPIC, p)


@pytest.mark.asyncio
async def test_every_message_gets_one_outcome_and_commits_reach_the_end() -> None:
    h = Harness(partitions=3)
    for i in range(30):
        h.consumer.append(i % 3, event(f"p{i % 5}@x.com", i))
    h.consumer.append(0, b"not json")
    h.consumer.append(1, b"")
    h.start()
    await h.until("32 outcomes", lambda: len(h.outcomes()) == 32)
    await h.until("commits", lambda: h.consumer.committed == {tp(0): 11, tp(1): 11, tp(2): 10})
    await h.finish()
    assert len(h.producer.topics["dlq"]) == 2
    offsets = sorted((o["source"]["partition"], o["source"]["offset"]) for o in h.outcomes())
    assert len(set(offsets)) == 32
    assert h.pipeline.failure is None


def _person_sequences(writer: MemoryWriter) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for call in writer.calls:
        for person, fields in call.people.items():
            seen.setdefault(person, []).append(int(str(fields["Newsletter_Frequency__c"])[1:]))
    return seen


async def _ordered_run(
    people: list[int], latencies: list[float], partitions: int, chunk: int = INTAKE_CHUNK
) -> None:
    h = Harness(partitions=partitions, concurrency=3, batch_max_people=2, batch_max_events=4)
    h.contact.latencies = list(latencies)
    # The first half before the start; the second while batches are written, in polls taken
    # in by chunks of ``chunk`` (1: lanes freed mid-poll start batches between any two
    # records of it).
    half = len(people) // 2
    for seq, person in enumerate(people):
        if seq == half and half > 0:
            h.start()
            await h.until("a write", lambda: h.contact.in_flight > 0 or bool(h.contact.calls))
        # Producers key by person, so one person's events share a partition.
        h.consumer.append(person % partitions, event(f"p{person}@x.com", seq))
    if h.task is None:
        h.start()
    with mock.patch.object(pipeline_module, "INTAKE_CHUNK", chunk):
        await h.until("every outcome", lambda: len(h.outcomes()) == len(people))
    await h.finish()
    expected: dict[str, list[int]] = {}
    for seq, person in enumerate(people):
        expected.setdefault(f"p{person}@x.com", []).append(seq)
    for email, written in _person_sequences(h.contact).items():
        # Coalescing may skip intermediate values, never reorder them, and the last write
        # of each person is their latest event.
        assert written == sorted(written), (email, written)
        assert set(written) <= set(expected[email])
        assert written[-1] == expected[email][-1]
    assert set(_person_sequences(h.contact)) == set(expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    people=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    latencies=st.lists(st.floats(0, 0.004), max_size=40),
    partitions=st.integers(1, 3),
    chunk=st.sampled_from([1, INTAKE_CHUNK]),
)
def test_one_person_is_written_in_order_whatever_the_latencies(
    people: list[int], latencies: list[float], partitions: int, chunk: int
) -> None:
    asyncio.run(_ordered_run(people, latencies, partitions, chunk))


@pytest.mark.asyncio
async def test_lanes_write_in_parallel_under_skew() -> None:
    # One person in every other event (realistic skew): a lane per person keeps the others
    # moving while the hot person's lane is busy.
    h = Harness(concurrency=4, batch_max_people=5)
    h.contact.latencies = [0.02] * 200
    for i in range(120):
        email = "hot@x.com" if i % 2 == 0 else f"p{i}@x.com"
        h.consumer.append(0, event(email, i))
    h.start()
    await h.until("every outcome", lambda: len(h.outcomes()) == 120)
    await h.finish()
    assert h.contact.max_in_flight >= 3


@pytest.mark.asyncio
async def test_a_batchs_time_is_told_by_phase() -> None:
    h = Harness()
    h.contact.latencies = [0.05]
    h.consumer.append(0, event("a@x.com", 0))
    h.start()
    await h.until("the outcome", lambda: len(h.outcomes()) == 1)
    await h.finish()
    get = h.metrics.registry.get_sample_value
    phases = ("merge", "salesforce", "outcomes", "order", "publish")
    sums = {p: get("consent_sync_batch_phase_seconds_sum", {"phase": p}) for p in phases}
    counts = {p: get("consent_sync_batch_phase_seconds_count", {"phase": p}) for p in phases}
    batches = get("consent_sync_batch_duration_seconds_count")
    assert batches == 1 and set(counts.values()) == {batches}
    assert sums["salesforce"] is not None and sums["salesforce"] >= 0.05
    # The phases cover the whole batch, from dispatch to acknowledged outcomes.
    total = get("consent_sync_batch_duration_seconds_sum")
    assert sum(v for v in sums.values() if v is not None) == pytest.approx(total)


@pytest.mark.asyncio
async def test_commits_only_the_done_prefix() -> None:
    h = Harness()
    slow, fast = "slow@x.com", "fast@x.com"
    h.contact.hold[slow] = asyncio.Event()
    h.consumer.append(0, event(slow, 0))
    h.consumer.append(0, event(fast, 1))
    h.start()
    await h.until("the fast person's outcome", lambda: len(h.outcomes()) == 1)
    assert h.outcomes()[0]["organization_user_id"] == fast
    assert tp(0) not in h.consumer.committed  # offset 0 is not done: nothing moves
    h.contact.hold[slow].set()
    await h.until("commit past both", lambda: h.consumer.committed.get(tp(0)) == 2)
    await h.finish()


@pytest.mark.asyncio
async def test_a_batch_that_fails_unexpectedly_stops_the_service_after_committing() -> None:
    h = Harness(concurrency=1, batch_max_people=1)

    def refuse(sent: Any) -> BaseException | None:
        return TopicAuthorizationFailedError() if sent.key == b"b@x.com" else None

    h.producer.fail_when = refuse
    h.consumer.append(0, event("a@x.com", 0))
    h.consumer.append(0, event("b@x.com", 1))
    h.consumer.append(0, event("c@x.com", 2))
    h.start()
    assert h.task is not None
    await asyncio.wait_for(h.task, 10)  # it stops by itself, without a stop request
    assert isinstance(h.pipeline.failure, PublishError)
    assert [o["organization_user_id"] for o in h.outcomes()] == ["a@x.com"]
    assert h.consumer.committed == {tp(0): 1}  # a is done; b and c are read again


@pytest.mark.asyncio
async def test_pending_work_pauses_partitions_and_resumes_when_it_drains() -> None:
    h = Harness(max_pending_events=3)
    h.contact.gate = asyncio.Event()
    for i in range(10):
        h.consumer.append(0, event(f"p{i}@x.com", i))
    h.start()
    await h.until("the partition paused", lambda: tp(0) in h.consumer.paused_partitions)
    h.contact.gate.set()
    await h.until("every outcome", lambda: len(h.outcomes()) == 10)
    await h.until("resumed", lambda: not h.consumer.paused_partitions)
    await h.finish()


@pytest.mark.asyncio
async def test_shutdown_writes_what_was_fetched_and_commits() -> None:
    h = Harness(linger_seconds=60.0)
    for i in range(5):
        h.consumer.append(0, event(f"p{i}@x.com", i))
    h.start()
    await h.until("fetched", lambda: h.pipeline._parts.in_flight() == 5)
    assert h.outcomes() == []  # still lingering
    await h.finish()
    assert len(h.outcomes()) == 5
    assert h.consumer.committed == {tp(0): 5}


@pytest.mark.asyncio
async def test_rebalance_abandons_late_batches_and_their_events_are_read_again() -> None:
    h = Harness(rebalance_timeout_seconds=0.05)
    stuck = asyncio.Event()
    h.contact.hold["a@x.com"] = stuck
    h.consumer.append(0, event("a@x.com", 0))
    h.consumer.append(0, event("b@x.com", 1))
    h.start()
    await h.until("b's outcome", lambda: len(h.outcomes()) == 1)
    await h.consumer.rebalance({tp(0)})  # revokes everything, reassigns from committed
    assert h.consumer.committed.get(tp(0)) is None  # a (offset 0) was not done
    stuck.set()
    await h.until(
        "a's outcome", lambda: any(o["organization_user_id"] == "a@x.com" for o in h.outcomes())
    )
    await h.until("commit past both", lambda: h.consumer.committed.get(tp(0)) == 2)
    await h.finish()


@pytest.mark.asyncio
async def test_a_kept_partition_with_abandoned_work_is_read_again_from_its_first_gap() -> None:
    h = Harness(partitions=2, concurrency=1, rebalance_timeout_seconds=0.05)
    stuck = asyncio.Event()
    h.contact.hold["a@x.com"] = stuck
    h.consumer.append(0, event("a@x.com", 0))
    h.consumer.append(1, event("a@x.com", 1))
    h.start()
    await h.until("both fetched", lambda: h.pipeline._parts.in_flight() == 2)
    # A cooperative-style revocation of partition 0 only: the batch holding a's events of both
    # partitions is abandoned, so partition 1 (kept) must be read again, or it never commits.
    await h.pipeline.on_revoked({tp(0)})
    stuck.set()
    await h.until("partition 1 committed", lambda: h.consumer.committed.get(tp(1)) == 1)
    await h.finish()


@pytest.mark.asyncio
async def test_no_batch_starts_while_partitions_are_revoked() -> None:
    # Partition 0 is revoked while a's batch (a's events of both partitions) is stuck: the
    # revocation waits for it, abandons it, and partition 1 is read again from its first gap.
    # Meanwhile b's batch (partition 1 only, another lane) ends. b's next event must not
    # start a batch before the revocation is over: that batch's messages are about to be
    # forgotten and read again (the batch would write them, and their re-read a second time).
    h = Harness(partitions=2, concurrency=2, rebalance_timeout_seconds=0.2)
    stuck_a, stuck_b = asyncio.Event(), asyncio.Event()
    h.contact.hold["a@x.com"] = stuck_a  # lane 0
    h.contact.hold["b@x.com"] = stuck_b  # lane 1
    h.consumer.append(0, event("a@x.com", 0))
    h.consumer.append(1, event("a@x.com", 1))
    h.consumer.append(1, event("b@x.com", 2))
    h.start()
    await h.until("both batches in flight", lambda: h.contact.in_flight == 2)
    h.consumer.append(1, event("b@x.com", 3))
    await h.until("b's next event fetched", lambda: h.pipeline._parts.in_flight() == 4)
    revoking = False
    starts: list[bool] = []
    start = h.pipeline._start

    def noting(lane: Any) -> None:
        starts.append(revoking)
        start(lane)

    h.pipeline._start = noting  # type: ignore[method-assign]

    async def answer_b() -> None:
        await asyncio.sleep(0.05)  # within the revocation's wait for a's batch
        stuck_b.set()

    answering = asyncio.ensure_future(answer_b())
    revoking = True
    await h.pipeline.on_revoked({tp(0)})
    revoking = False
    await answering
    stuck_a.set()
    await h.until("partition 1 committed", lambda: h.consumer.committed.get(tp(1)) == 3)
    await h.finish()
    assert starts and not any(starts)
    # b's choices reached Salesforce oldest first, the newest last.
    b_values = [
        c.people["b@x.com"]["Newsletter_Frequency__c"]
        for c in h.contact.calls
        if "b@x.com" in c.people
    ]
    assert b_values[-1] == "v3" and b_values.index("v2") < b_values.index("v3")


@pytest.mark.asyncio
async def test_a_daily_limit_pauses_writing_and_partitions_then_resumes() -> None:
    from consumer.errors import RequestLimitExceededError

    h = Harness()
    h.contact.errors = [RequestLimitExceededError("limit", status=403)]
    h.consumer.append(0, event("a@x.com", 0))
    h.start()
    await h.until("paused", lambda: h.gate.closed())
    assert h.gate.deliberate()
    await h.until("the outcome", lambda: len(h.outcomes()) == 1)
    assert h.outcomes()[0]["status"] == "updated"
    assert len(h.contact.calls) == 1
    assert (
        h.metrics.registry.get_sample_value(
            "consent_sync_salesforce_pauses_total", {"reason": "daily_limit"}
        )
        == 1
    )
    await h.finish()


@pytest.mark.asyncio
async def test_a_backlog_fills_every_collection_call_with_200_people() -> None:
    h = Harness(concurrency=1, batch_max_events=10_000, linger_seconds=0.0)
    for i in range(450):
        h.consumer.append(0, event(f"p{i}@x.com", i))
    h.start()
    await h.until("every outcome", lambda: len(h.outcomes()) == 450)
    await h.finish()
    assert [len(c.people) for c in h.contact.calls] == [200, 200, 50]


@pytest.mark.asyncio
async def test_while_a_lane_is_busy_a_persons_events_coalesce_by_event_time() -> None:
    h = Harness(concurrency=1)
    h.contact.hold["first@x.com"] = asyncio.Event()
    h.consumer.append(0, event("first@x.com", 0))
    h.start()
    await h.until("the first write under way", lambda: h.contact.in_flight == 1)
    # Three events of one person arrive, out of event-time order, while the lane is busy.
    for seq in (30, 10, 20):
        h.consumer.append(0, event("late@x.com", seq))
    await h.until("fetched", lambda: h.pipeline._parts.in_flight() == 4)
    h.contact.hold["first@x.com"].set()
    await h.until("every outcome", lambda: len(h.outcomes()) == 4)
    await h.finish()
    second = h.contact.calls[1].people
    assert list(second) == ["late@x.com"]  # one write for the three events
    assert second["late@x.com"]["Newsletter_Frequency__c"] == "v30"  # the latest by event time
    merged = [o for o in h.outcomes() if o["organization_user_id"] == "late@x.com"]
    assert {t["merged_events"] for o in merged for t in o["targets"]} == {3}


@pytest.mark.asyncio
async def test_exported_lag_counts_from_the_committed_offset() -> None:
    h = Harness()
    h.contact.gate = asyncio.Event()  # every write waits: fetched, not done
    for i in range(6):
        h.consumer.append(0, event(f"p{i}@x.com", i))

    def lag() -> float | None:
        return h.metrics.registry.get_sample_value(
            "consent_sync_consumer_lag_messages", {"topic": TOPIC, "partition": "0"}
        )

    h.start()
    await h.until("fetched", lambda: h.pipeline._parts.in_flight() == 6)
    await h.until("the lag exported", lambda: lag() is not None)
    # Fetched but unfinished: still behind (a next-fetch-position lag would say 0 here).
    assert lag() == 6
    h.contact.gate.set()
    await h.until("committed", lambda: h.consumer.committed == {tp(0): 6})
    await h.until("the lag caught up", lambda: lag() == 0)
    await h.finish()


@pytest.mark.asyncio
async def test_polls_that_return_at_once_still_let_batches_run_between_them() -> None:
    # aiokafka's getmany() returns without waiting while it holds fetched records: a backlog
    # must not be taken in whole before the first batch gets to write (or an answer is read).
    h = Harness(fetch_max_records=10)
    for i in range(2_000):
        h.consumer.append(0, event(f"p{i}@x.com", i))
    taken_in: list[int] = []
    write = h.contact.write

    async def noting(people: Any, done: Any = None, **told: Any) -> Any:
        taken_in.append(h.consumer.position(tp(0)))
        return await write(people, done, **told)

    h.contact.write = noting  # type: ignore[method-assign]
    h.start()
    await h.until("the first write", lambda: bool(taken_in))
    await h.finish()
    assert taken_in[0] < 200  # without a pause per poll: all 2,000


@pytest.mark.asyncio
async def test_salesforce_answers_are_read_while_a_large_poll_is_taken_in() -> None:
    # A batch is waiting for Salesforce when a poll of 1,000 records arrives; its answer
    # comes while that poll is being taken in and is read before the poll's end, and the
    # freed lane starts its next batch (what it holds of the poll so far) without waiting
    # for the end. One lane, so that every person is in it.
    h = Harness(fetch_max_records=1_000, concurrency=1)
    h.contact.gate = asyncio.Event()
    h.consumer.append(0, event("first@x.com", 0))
    h.start()
    await h.until("the first write", lambda: h.contact.in_flight == 1)
    for i in range(1, 1_001):
        h.consumer.append(0, event(f"p{i}@x.com", i))
    taken = 0
    written_before_the_poll_ended: list[bool] = []
    take_in = h.pipeline._take_in

    def counting(tp: TopicPartition, record: Any, fetched_ms: float) -> None:
        nonlocal taken
        take_in(tp, record, fetched_ms)
        taken += 1
        if taken == 50:
            assert h.contact.gate is not None
            h.contact.gate.set()  # Salesforce answers now, mid-poll
        if taken == 1_000:
            calls = h.contact.calls
            written_before_the_poll_ended.append(
                len(calls) >= 2
                and list(calls[0].people) == ["first@x.com"]
                and 0 < len(calls[1].people) < 1_000
            )

    h.pipeline._take_in = counting  # type: ignore[method-assign]
    await h.until("every outcome", lambda: len(h.outcomes()) == 1_001)
    await h.finish()
    assert written_before_the_poll_ended == [True]
    # Nobody lost or written twice, in order of arrival.
    people = [key for call in h.contact.calls for key in call.people]
    assert people == ["first@x.com", *(f"p{i}@x.com" for i in range(1, 1_001))]


@pytest.mark.parametrize(
    ("age_ms", "left"), [(4_000, 6.0), (7_000, 7.0), (60_000, 10.0), (None, 10.0)]
)
def test_a_records_age_at_fetch_counts_against_its_linger(age_ms: int | None, left: float) -> None:
    # Linger 10 s: a record produced 4 s before the poll waits 6 s more, one 7 s old 7 s
    # more; a record a minute old (a backlog) and one without a timestamp (-1) the whole.
    h = Harness(linger_seconds=10.0)
    fetched_ms = time.time() * 1000
    stamp = -1 if age_ms is None else int(fetched_ms) - age_ms
    record = Record(TOPIC, 0, 0, stamp, None, event("late@x.com", 0))
    h.pipeline._take_in(tp(0), record, fetched_ms)
    wait = h.pipeline._lanes.route("late@x.com").buffer.time_to_ready()
    assert wait == pytest.approx(left, abs=0.05)


@pytest.mark.asyncio
async def test_writers_are_told_when_the_service_works_through_a_backlog() -> None:
    # 300 messages held (fetched in one poll) at the first batch, none left to fetch:
    # behind at 300, caught up at 301 (each message counted once).
    for threshold, behind in ((300, True), (301, False)):
        h = Harness(backlog_messages=threshold, fetch_max_records=1_000)
        for i in range(300):
            h.consumer.append(0, event(f"p{i}@x.com", i))
        h.start()
        await h.until("every outcome", lambda h=h: len(h.outcomes()) == 300)  # type: ignore[misc]
        await h.finish()
        assert h.contact.backlogs[0] is behind
        if not behind:
            assert not any(h.contact.backlogs)
        assert h.lead.backlogs == h.contact.backlogs[: len(h.lead.backlogs)]


@pytest.mark.asyncio
async def test_writers_are_told_how_many_writers_write_their_batch() -> None:
    # The Lead target maps the newsletter purpose only: events without it write Contacts
    # alone (a lone writer sends a lone call at once instead of holding it for company).
    for newsletter, company in ((None, 1), (True, 2)):
        h = Harness()
        for i in range(50):
            h.consumer.append(0, event(f"p{i}@x.com", i, newsletter=newsletter))
        h.start()
        await h.until("every outcome", lambda h=h: len(h.outcomes()) == 50)  # type: ignore[misc]
        await h.finish()
        assert h.contact.company and set(h.contact.company) == {company}
        assert h.lead.company == ([] if company == 1 else h.contact.company)


@pytest.mark.asyncio
async def test_a_rebalance_during_a_large_poll_waits_for_it_and_loses_nothing() -> None:
    h = Harness(partitions=2, fetch_max_records=1_000)
    for i in range(600):
        h.consumer.append(i % 2, event(f"p{i % 50}@x.com", i))
    taken = 0
    rebalances: list[asyncio.Task[None]] = []
    take_in = h.pipeline._take_in

    def counting(tp: TopicPartition, record: Any, fetched_ms: float) -> None:
        nonlocal taken
        take_in(tp, record, fetched_ms)
        taken += 1
        if taken == 150:  # mid-poll: the revocation must wait for the other 450
            rebalances.append(asyncio.ensure_future(h.consumer.rebalance({tp0, tp1})))

    tp0, tp1 = tp(0), tp(1)
    h.pipeline._take_in = counting  # type: ignore[method-assign]
    h.start()
    await h.until("the rebalance", lambda: bool(rebalances) and rebalances[0].done())
    rebalances[0].result()
    await h.until("commits at the end", lambda: h.consumer.committed == {tp0: 300, tp1: 300})
    await h.finish()
    seen = {(o["source"]["partition"], o["source"]["offset"]) for o in h.outcomes()}
    assert seen == {(p, o) for p in (0, 1) for o in range(300)}  # each at least once
    assert h.pipeline.failure is None


@pytest.mark.asyncio
async def test_a_target_that_gives_up_before_reading_lets_the_batchs_others_go_on() -> None:
    # Contact and Lead read their records' stamps and wait for each other before writing.
    # The Lead's write fails until its retry budget is spent (dead_letter policy) before it
    # read anything: the Contact must not wait for it for ever.
    h = Harness()
    h.gate._policy = GatePolicy(
        pause_seconds={}, default_pause_seconds=0.05, on_retry_exhausted="dead_letter"
    )
    h.contact.stateful = h.lead.stateful = True
    h.lead.errors.append(RetryBudgetExhaustedError("Lead: still failing", pending=("a@x.com",)))
    h.consumer.append(0, event("a@x.com", 0))
    h.start()
    await h.until("the outcome", lambda: len(h.outcomes()) == 1, timeout=5)
    await h.finish()
    targets = {t["sobject"]: t["status"] for t in h.outcomes()[0]["targets"]}
    assert targets == {"Contact": "updated", "Lead": "failed"}, h.outcomes()


@pytest.mark.asyncio
async def test_a_read_back_of_the_choices_topic_never_outlives_the_pipeline() -> None:
    # Assigned while joining, then stopped before run (a stop during the join): close()
    # stops the read-back, which would otherwise hold on to a reader being closed.
    h = Harness(choices=True)
    assert h.log is not None
    h.log.hold = asyncio.Event()
    await h.consumer.rebalance({tp(0)})
    assert tp(0) in h.consumer.paused_partitions  # held while it reads
    task = h.pipeline._restore_task
    assert task is not None and not task.done()
    await h.pipeline.close()
    assert task.cancelled() and h.pipeline.failure is None
    # Closed (or draining): an assignment starts no read-back.
    h.pipeline.on_assigned({tp(0)})
    assert h.pipeline._restore_task is None
    # Running: a read-back under way when the service stops is stopped by the drain.
    h = Harness(choices=True)
    assert h.log is not None
    h.log.hold = asyncio.Event()
    await h.consumer.rebalance({tp(0)})
    h.start()
    task = h.pipeline._restore_task
    assert task is not None
    await h.finish()
    assert task.cancelled() and h.pipeline._restore_task is None
    assert h.pipeline.failure is None
