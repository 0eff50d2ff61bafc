"""The remembered choices outlive the process: ``KAFKA_CHOICES_TOPIC`` keeps each person's
entry, and whoever is assigned a partition reads it back before fetching its messages.

A withdrawal that found no record (match mode) is remembered only by the service; after a
restart (a deploy, a crash, a partition moved to another replica), a record made meanwhile and
a late older grant would otherwise meet with nothing to keep the grant out. On the real broker
with the service itself, and on in-memory Kafka with the pipeline restarted mid-run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from consumer.devkit.broker import create_topics
from consumer.devkit.emulator import SalesforceEmulator
from consumer.model.changes import epoch_ms
from consumer.service import EXIT_CONFIG
from tests.integration.support import (
    Topics,
    collect,
    example_mapping,
    make_emulator,
    make_topics,
    produce,
    running_service,
    settings_for,
    wait_for,
)
from tests.integration.test_consent_order import Run, running
from tests.integration.test_recent_choices import (
    EMAIL,
    deliver,
    event,
    form_contact,
    grants,
    match_only,
)
from tests.unit.fakes import MemoryChoicesLog, Sent
from tests.unit.helpers import T0

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


@asynccontextmanager
async def remembering(
    **mapping: Any,
) -> AsyncIterator[tuple[SalesforceEmulator, Run, MemoryChoicesLog]]:
    """A running pipeline (match mode, Contact only, the mapping's ``mapping`` settings
    changed) keeping its memory in an in-memory choices topic (already read back once,
    empty)."""
    config = match_only(example_mapping(), lead=False).model_copy(update=mapping)
    async with make_emulator() as emulator, running(emulator, config) as run:
        run.settings = run.settings.model_copy(update={"kafka_choices_topic": "choices"})
        log = run.choices = MemoryChoicesLog(run.producer)
        await run.restart()
        yield emulator, run, log


async def entries(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, Any]]:
    """(partition, key, value) of every record of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[int, Any]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out.extend((tp.partition, (r.key, orjson.loads(r.value))) for r in records)
        return out
    finally:
        await consumer.stop()


async def test_a_restarted_service_still_keeps_a_late_grant_off_a_record_made_since(
    kafka_bootstrap: str,
) -> None:
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 2)
    choices = f"choices-{topics.group}"
    await create_topics(kafka_bootstrap, [choices], partitions=2)
    key = EMAIL.encode()
    async with make_emulator() as emulator:
        settings = settings_for(kafka_bootstrap, topics, emulator.url, kafka_choices_topic=choices)
        mapping = match_only(example_mapping(), lead=False)
        async with collect(kafka_bootstrap, topics.results) as results:
            async with running_service(settings, mapping) as first:
                withdrawal = event("w", 5, {"id": "newsletter", "enabled": False})
                await produce(kafka_bootstrap, topics.input, [(key, withdrawal)])
                await wait_for(lambda: len(results.records) >= 1, 30, "the withdrawal")
                assert await first.finish() == 0
            # The entry went to the partition of the input the person came from.
            kept = await entries(kafka_bootstrap, choices, 2)
            [(partition, (entry_key, entry))] = kept
            [withdrawn] = results.values()
            assert withdrawn["status"] == "not_found"
            assert partition == withdrawn["source"]["partition"]
            assert entry_key == key and entry["c"][0][0] == ["purposes", "newsletter"]
            contact = form_contact(emulator)  # a web form, while no service runs
            async with running_service(settings, mapping) as second:
                await produce(
                    kafka_bootstrap, topics.input, [(key, event("late", 3, *grants("newsletter")))]
                )
                await wait_for(lambda: len(results.records) >= 2, 30, "the late grant")
                assert await second.finish() == 0
            late = results.values()[1]
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late


@pytest.mark.parametrize("partitions", [0, 1], ids=["missing", "other-partitions"])
async def test_a_choices_topic_that_cannot_serve_stops_the_start(
    kafka_bootstrap: str, partitions: int
) -> None:
    topics = Topics.fresh()
    await make_topics(kafka_bootstrap, topics, 2)
    choices = f"choices-{topics.group}"
    if partitions:
        await create_topics(kafka_bootstrap, [choices], partitions=partitions)
    async with make_emulator() as emulator:
        settings = settings_for(kafka_bootstrap, topics, emulator.url, kafka_choices_topic=choices)
        async with running_service(settings, match_only(example_mapping(), lead=False)) as service:
            # It ends by itself, before it joins the group.
            assert await asyncio.wait_for(service.task, 30) == EXIT_CONFIG


async def test_the_pipeline_reads_back_what_it_remembered_after_a_restart() -> None:
    # In-memory Kafka: the withdrawal (no record) is remembered, the pipeline restarts with
    # an empty memory and reads the choices topic back on assignment; the record made
    # meanwhile does not take the late grant. Then only what came after is read again.
    async with remembering() as (emulator, run, log):
        await deliver(run, event("w", 5, {"id": "newsletter", "enabled": False}))
        assert len(run.producer.topics["choices"]) == 1
        await run.restart()
        contact = form_contact(emulator)
        late = await deliver(run, event("late", 3, *grants("newsletter")))
        # Each new pipeline reads from the beginning.
        assert log.reads == [{0: None, 1: None}, {0: None, 1: None}]
        # A rebalance that keeps the partitions here reads on from what it read last: the
        # entry the late grant's batch wrote.
        await run.consumer.rebalance(set(run.consumer.logs))
        await run.until(lambda: len(log.reads) == 3, "the read-back")
        assert log.reads[2] == {0: 1, 1: None}
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late


async def test_a_choices_topic_that_cannot_be_read_holds_nothing_back() -> None:
    # The withdrawal is remembered in the topic. After a restart, reading it back fails (a
    # broker error): the partitions are not held for good (a newer grant is written), a
    # metric says so, and the next assignment reads the topic again from its beginning,
    # after which the withdrawal gates a late grant again.
    async with remembering() as (emulator, run, log):
        await deliver(run, event("w", 5, {"id": "newsletter", "enabled": False}))
        log.fail = KafkaConnectionError()
        await run.restart()
        # Not held: another person's event on the same partition goes through.
        other = event("o", 7, *grants("newsletter")).replace(EMAIL.encode(), b"o@example.com")
        before = len(run.outcomes())
        run.consumer.append(0, other, b"o@example.com")
        await run.until(lambda: len(run.outcomes()) > before, "the other person's outcome")
        assert run.outcomes()[-1]["organization_user_id"] == "o@example.com"
        assert run.pipeline is not None
        problems = run.pipeline._metrics.registry.get_sample_value(
            "consent_sync_recent_choices_restore_problems_total", {"problem": "read_failed"}
        )
        assert problems == 1
        log.fail = None
        reads = len(log.reads)
        await run.consumer.rebalance(set(run.consumer.logs))
        await run.until(lambda: len(log.reads) == reads + 1, "the next read-back")
        assert log.reads[-1] == {0: None, 1: None}  # nothing was read: all of it again
        contact = form_contact(emulator)
        late = await deliver(run, event("late", 3, *grants("newsletter")))
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late


async def test_an_input_partition_the_choices_topic_lacks_is_not_waited_for() -> None:
    # Input partitions added while running, not the choices topic's: the read-back of the
    # others goes on, and the missing one is reported.
    async with remembering() as (_, run, log):
        log.count = 1
        reads = len(log.reads)
        await run.consumer.rebalance(set(run.consumer.logs))
        await run.until(lambda: len(log.reads) == reads + 1, "the read-back")
        assert log.reads[-1] == {0: None}
        assert run.pipeline is not None
        problems = run.pipeline._metrics.registry.get_sample_value(
            "consent_sync_recent_choices_restore_problems_total", {"problem": "read_failed"}
        )
        assert problems == 1
        outcome = await deliver(run, event("g", 3, *grants("newsletter")))
    assert outcome["status"] == "not_found", outcome


async def test_no_message_of_a_partition_is_taken_in_before_its_choices_are_read_back() -> None:
    # A late grant waits in the input when the service starts; reading the choices topic
    # back is slow. aiokafka hands out a new assignment's records before it calls the
    # listener: the partition is held paused until the read-back is done.
    async with remembering() as (emulator, run, log):
        await deliver(run, event("w", 5, {"id": "newsletter", "enabled": False}))
        await run.finish()
        contact = form_contact(emulator)
        run.consumer.append(0, event("late", 3, *grants("newsletter")), EMAIL.encode())
        log.hold = asyncio.Event()
        await run.start()
        await run.until(lambda: len(log.reads) == 2, "the read-back to begin")
        assert TopicPartition("in", 0) in run.consumer.paused_partitions
        assert len(run.outcomes()) == 1  # held: the grant was not taken in
        log.hold.set()
        await run.until(lambda: len(run.outcomes()) == 2, "the late grant")
        late = run.outcomes()[1]
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late


async def test_what_another_member_wrote_meanwhile_is_read_when_the_partition_comes_back() -> None:
    # This member read partition 0 back, then (evicted unawares, say) another member owned
    # it and wrote the person's withdrawal there. When partition 0 comes back, the read goes
    # on from what this member last read, not from an end it noted when it lost it.
    async with remembering() as (emulator, run, log):
        await run.until(lambda: len(log.reads) == 1, "the first read-back")
        at = epoch_ms(T0 + timedelta(minutes=5))
        entry = {"v": 1, "c": [[["purposes", "newsletter"], at, 0, 7]]}
        theirs = Sent("choices", EMAIL.encode(), orjson.dumps(entry), [], 0)
        run.producer.topics["choices"].append(theirs)
        await run.consumer.rebalance(set(run.consumer.logs))
        await run.until(lambda: len(log.reads) == 2, "the read-back")
        contact = form_contact(emulator)
        late = await deliver(run, event("late", 3, *grants("newsletter")))
        record = emulator.get("Contact", contact)
    assert record is not None and record["Newsletter_Consent__c"] is not True, late
    assert late["status"] == "stale", late
