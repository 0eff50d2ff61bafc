"""The final value of every field is the latest choice for it, by event time, whatever the
delivery: random partial events and user deletions (``on_user_deleted: withdraw``) for a few
people, in random order over two partitions, cut at random batch boundaries, with duplicates
and a restart in between; then a replay of everything writes nothing.

Somewhere in between, someone may make a Lead for a person who had none (a web form): it
holds no stamp, so it takes only choices delivered after it was made. It must never say
"consent" unless the person's latest choice is one (the person's Contact keeps a late older
grant off it), it holds the latest choice when that came after it, and a replay brings it
there.

The Salesforce side is real (the writer, over HTTP, against the emulator with its describe
and its per-record rules); Kafka is in memory (tests/unit/fakes.py), so each example takes
a fraction of a second. The expected state is folded here from the choices themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from consumer.devkit.emulator import SalesforceEmulator
from consumer.engine.health import Health
from consumer.engine.pipeline import Pipeline
from consumer.mapping import MappingConfig
from consumer.observability.metrics import Metrics
from consumer.salesforce.check import check_mapping
from consumer.salesforce.client import SalesforceClient
from consumer.salesforce.writer import TargetWriter
from consumer.service import build_pipeline
from consumer.settings import Settings
from tests.integration.scenario import T0, TOPICS, Choice
from tests.integration.support import CLIENT_ID, CLIENT_SECRET, example_mapping, make_emulator
from tests.unit.fakes import MemoryChoicesLog, MemoryConsumer, MemoryProducer

pytestmark = pytest.mark.integration

EMAILS = ("ada@example.com", "bob@example.com", "cy@example.com")
TOPIC = "in"


#: What a user deletion leaves in each Contact field and in the Lead's.
WITHDRAWN = {
    "Newsletter_Consent__c": False,
    "Analytics_Consent__c": False,
    "Newsletter_Topics__c": None,
    "Topic_Product_News__c": False,
    "Topic_Offers__c": False,
    "Newsletter_Frequency__c": None,
}


@dataclass(frozen=True)
class Event:
    person: int
    second: int
    choice: Choice
    n: int
    #: A ``user.deleted`` at ``second`` (``choice`` unused): every field withdrawn.
    deleted: bool = False

    def value(self) -> bytes:
        when = (T0 + timedelta(seconds=self.second)).isoformat().replace("+00:00", "Z")
        if self.deleted:
            user = {
                "id": f"user-{self.person}",
                "organization_user_id": EMAILS[self.person],
                "created_at": T0.isoformat().replace("+00:00", "Z"),
                "updated_at": when,
            }
            return orjson.dumps({"type": "user.deleted", "parameters": {"entity": user}})
        entity = {
            "id": f"ev-{self.n}",
            "created_at": when,
            "user": {"organization_user_id": EMAILS[self.person]},
            "consents": {"purposes": self.choice.purposes()},
        }
        return orjson.dumps({"type": "event.created", "parameters": {"entity": entity}})


@st.composite
def choices(draw: st.DrawFn) -> Choice:
    c = Choice(
        newsletter=draw(st.none() | st.booleans()),
        analytics=draw(st.none() | st.booleans()),
        topics=draw(st.none() | st.lists(st.sampled_from(TOPICS), unique=True)),
        frequency=draw(st.none() | st.sampled_from(("weekly", "monthly"))),
    )
    if c == Choice():
        c.newsletter = draw(st.booleans())
    return c


Delivery = tuple[list[tuple[Event, int]], list[int], int, int | None]

#: The person someone makes a Lead for while the service runs (they have a Contact).
NEW_LEAD = 1


def chunk_sizes(draw: st.DrawFn, total: int) -> list[int]:
    """Random sizes of the chunks ``total`` deliveries are fed in (each at least 1)."""
    chunks: list[int] = []
    left = total
    while left:
        size = draw(st.integers(1, left))
        chunks.append(size)
        left -= size
    return chunks


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    """Events in a random arrival order with duplicates, each on a random partition; the
    chunk sizes they are fed in; the chunk after which the service restarts; the chunk
    before which a Lead is made for NEW_LEAD (None: never)."""
    events = [
        Event(
            draw(st.integers(0, 2)),
            draw(st.integers(0, 15)),
            draw(choices()),
            n,
            deleted=draw(st.integers(0, 5)) == 5,  # shrinks towards an ordinary event
        )
        for n in range(draw(st.integers(1, 18)))
    ]
    repeated = events + draw(st.lists(st.sampled_from(events), max_size=6))
    order = draw(st.permutations(repeated))
    placed = [(e, draw(st.integers(0, 1))) for e in order]
    chunks = chunk_sizes(draw, len(placed))
    restart = draw(st.integers(0, len(chunks)))
    lead_made = draw(st.none() | st.integers(0, len(chunks) - 1))
    return placed, chunks, restart, lead_made


def touches_newsletter(event: Event) -> bool:
    return event.deleted or event.choice.newsletter is not None


def by_time(log: list[tuple[Event, int, int]]) -> list[tuple[Event, int, int]]:
    """The deliveries in the order their choices were made (a deletion after every choice
    of its time)."""
    return sorted(log, key=lambda d: (d[0].second, d[0].deleted, d[1], d[2]))


def fold(log: list[tuple[Event, int, int]]) -> tuple[dict[int, dict[str, Any]], dict[int, Any]]:
    """Each person's fields after applying every delivery by (event time, partition, offset);
    a deletion comes after every choice of its time."""
    contacts: dict[int, dict[str, Any]] = {}
    leads: dict[int, Any] = {}
    for event, _, _ in by_time(log):
        if event.deleted:
            contacts.setdefault(event.person, {}).update(WITHDRAWN)
            leads[event.person] = False
            continue
        contacts.setdefault(event.person, {}).update(event.choice.contact_fields())
        if event.choice.newsletter is not None:
            leads[event.person] = event.choice.newsletter
    return contacts, leads


class Run:
    """The service's pipeline over an in-memory topic, writing to the emulator."""

    def __init__(self, s: Settings, mapping: MappingConfig, writers: list[TargetWriter]) -> None:
        self.settings = s
        self.mapping = mapping
        self.writers = writers
        self.consumer = MemoryConsumer(TOPIC, 2)
        self.producer = MemoryProducer()
        self.pipeline: Pipeline | None = None
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.plans = [w._plan for w in writers]
        #: The choices topic's reader (None: the memory lives in the pipeline only).
        self.choices: MemoryChoicesLog | None = None

    async def start(self) -> None:
        metrics = Metrics(CollectorRegistry())
        self.pipeline = build_pipeline(
            self.settings,
            self.mapping,
            self.plans,
            self.writers,
            self.consumer,
            self.producer,
            metrics,
            Health(),
            choices=self.choices,
        )
        self.consumer.listener = self.pipeline.listener()
        # A (re)start reads each partition from its committed offset, like a new member.
        await self.consumer.rebalance(set(self.consumer.logs))
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.pipeline.run(self.stop))

    async def restart(self) -> None:
        await self.finish()
        await self.start()

    async def finish(self) -> None:
        assert self.task is not None
        self.stop.set()
        await asyncio.wait_for(self.task, 20)
        assert self.pipeline is not None and self.pipeline.failure is None

    def outcomes(self) -> list[dict[str, Any]]:
        return [orjson.loads(s.value or b"") for s in self.producer.topics["results"]]

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not predicate():
            assert self.task is not None
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the pipeline ended before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)


def quick_settings(emulator: SalesforceEmulator, composite: bool = False) -> Settings:
    """Settings for a pipeline on the emulator: no linger, commits at once, short retries."""
    return Settings(
        salesforce_token_url=emulator.url,
        salesforce_client_id=CLIENT_ID,
        salesforce_client_secret=SecretStr(CLIENT_SECRET),
        salesforce_retry_initial_seconds=0.01,
        salesforce_retry_max_seconds=0.05,
        sync_batch_linger_ms=0,
        sync_commit_interval_ms=0,
        sync_concurrency=2,
        kafka_results_topic="results",
        kafka_dlq_topic="dlq",
        salesforce_composite="on" if composite else "off",
    )


@asynccontextmanager
async def running(emulator: SalesforceEmulator, mapping: MappingConfig) -> AsyncIterator[Run]:
    """A started :class:`Run` of ``mapping`` on ``emulator`` (finished on the way out)."""
    s = quick_settings(emulator)
    async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
        report = await check_mapping(client, mapping)
        assert report.ok, report.render()
        run = Run(s, mapping, [TargetWriter(client, p, s) for p in report.plans])
        await run.start()
        try:
            yield run
        finally:
            await run.finish()


def _at_least(run: Run, count: int) -> Callable[[], bool]:
    return lambda: len(run.outcomes()) >= count


async def scenario(
    placed: list[tuple[Event, int]],
    chunks: list[int],
    restart: int,
    composite: bool = False,
    lead_made: int | None = None,
) -> None:
    async with make_emulator() as emulator:
        contact_ids = {
            i: emulator.seed("Contact", {"Email": e, "LastName": f"P{i}"})
            for i, e in enumerate(EMAILS)
            if i != 2  # the third person has no Contact: created on first sight
        }
        lead_ids = {0: emulator.seed("Lead", {"Email": EMAILS[0], "LastName": "L", "Company": "C"})}
        s = quick_settings(emulator, composite)
        mapping = example_mapping().model_copy(update={"on_user_deleted": "withdraw"})
        async with SalesforceClient(s, Metrics(CollectorRegistry())) as client:
            report = await check_mapping(client, mapping)
            assert report.ok, report.render()
            run = Run(s, mapping, [TargetWriter(client, p, s) for p in report.plans])
            await run.start()
            log: list[tuple[Event, int, int]] = []
            #: The new Lead's id, and how many deliveries came before it was made.
            new_lead: tuple[str, int] | None = None
            cursor = 0
            for n, size in enumerate(chunks):
                if n == lead_made:
                    form = {"Email": EMAILS[NEW_LEAD], "LastName": "Form", "Company": "C"}
                    new_lead = emulator.seed("Lead", form), len(log)
                for event, partition in placed[cursor : cursor + size]:
                    offset = run.consumer.append(
                        partition, event.value(), EMAILS[event.person].encode()
                    )
                    log.append((event, partition, offset))
                cursor += size
                await run.until(_at_least(run, cursor), f"chunk {n}")
                if n + 1 == restart:
                    await run.restart()
            await run.finish()
            statuses = {o["status"] for o in run.outcomes()}
            assert statuses <= {"updated", "created", "stale", "unchanged"}, statuses

            contacts, leads = fold(log)
            for person, expected in contacts.items():
                records = emulator.find_by_email("Contact", EMAILS[person])
                assert len(records) == 1, (person, records)
                record = records[0]
                if person in contact_ids:
                    assert record["Id"] == contact_ids[person]
                for name, value in expected.items():
                    held = record[name]
                    if name == "Newsletter_Topics__c" and held and value:
                        # A multipicklist is a set: Salesforce keeps its values in picklist
                        # order, whatever order they were written in.
                        held, value = set(held.split(";")), set(value.split(";"))
                    assert held == value, (person, name, record[name], value, log)
            for person, value in leads.items():
                if person in lead_ids:
                    lead = emulator.get("Lead", lead_ids[person])
                    assert lead is not None and lead["Newsletter_Consent__c"] is value
            if new_lead is not None:
                made = emulator.get("Lead", new_lead[0])
                assert made is not None
                latest = leads.get(NEW_LEAD)
                # Never a consent the person's latest choice does not give.
                assert made["Newsletter_Consent__c"] is not True or latest is True, (made, log)
                mine = [d for d in by_time(log) if d[0].person == NEW_LEAD]
                mine = [d for d in mine if touches_newsletter(d[0])]
                if mine and log.index(mine[-1]) >= new_lead[1]:
                    # The latest choice was delivered after the Lead was made.
                    assert made["Newsletter_Consent__c"] is latest, (made, log)

            # A replay of everything: the group starts over, Salesforce already reflects it
            # (but for a Lead made meanwhile, which the replay brings to the latest choice).
            writes = (emulator.stats["update"], emulator.stats["create"])
            snapshot = {
                s: {r["Id"]: dict(r) for r in emulator.records(s)} for s in ("Contact", "Lead")
            }
            run.consumer.committed.clear()
            before = len(run.outcomes())
            await run.start()
            await run.until(lambda: len(run.outcomes()) >= before + len(log), "the replay")
            await run.finish()
            replayed = run.outcomes()[before:]
            if new_lead is None:
                assert (emulator.stats["update"], emulator.stats["create"]) == writes
                assert {o["status"] for o in replayed} == {"stale"}
            else:
                made = snapshot["Lead"].pop(new_lead[0])
                after = emulator.get("Lead", new_lead[0])
                assert after is not None
                if NEW_LEAD in leads:
                    assert after["Newsletter_Consent__c"] is leads[NEW_LEAD], (made, after, log)
                assert emulator.stats["create"] == writes[1]
                for sobject, held in snapshot.items():
                    for record_id, record in held.items():
                        assert emulator.get(sobject, record_id) == record
                for o in replayed:
                    if o["organization_user_id"] != EMAILS[NEW_LEAD]:
                        assert o["status"] == "stale", o
                        continue
                    assert o["status"] in ("stale", "updated"), o
                    contact = next(t for t in o["targets"] if t["sobject"] == "Contact")
                    assert contact["status"] == "stale", o
            assert run.consumer.committed == {
                TopicPartition(TOPIC, p): len(run.consumer.logs[TopicPartition(TOPIC, p)])
                for p in (0, 1)
                if run.consumer.logs[TopicPartition(TOPIC, p)]
            }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=deliveries(), composite=st.booleans())
# A user deleted at the very second of a grant that arrives after the deletion: the deletion
# withdraws it (it sorts after every choice of its time), whatever the offsets say.
@example(
    case=(
        [
            (Event(0, 5, Choice(), 0, deleted=True), 0),
            (Event(0, 5, Choice(newsletter=True, topics=["offers"]), 1), 0),
        ],
        [1, 1],
        0,
        None,
    ),
    composite=False,
)
# The person without a Contact is deleted; a grant made before, delivered after, stays out.
@example(
    case=(
        [
            (Event(2, 5, Choice(), 0, deleted=True), 1),
            (Event(2, 3, Choice(newsletter=True, topics=["offers"]), 1), 0),
        ],
        [1, 1],
        0,
        None,
    ),
    composite=False,
)
# A Lead is made after the person's withdrawal was written to their Contact; a grant made
# before it is delivered after: the Contact's stamp keeps it off the new Lead.
@example(
    case=(
        [
            (Event(NEW_LEAD, 5, Choice(newsletter=False), 0), 0),
            (Event(NEW_LEAD, 3, Choice(newsletter=True), 1), 0),
        ],
        [1, 1],
        0,
        1,
    ),
    composite=False,
)
def test_each_field_ends_with_its_latest_choice_whatever_the_delivery(
    case: Delivery, composite: bool
) -> None:
    # With SALESFORCE_COMPOSITE too: a batch's calls then share composite calls.
    placed, chunks, restart, lead_made = case
    asyncio.run(scenario(placed, chunks, restart, composite, lead_made))
