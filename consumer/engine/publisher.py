"""The publisher: outcomes to the results topic and dead letters to the dead-letter topic.

Waits until the broker acknowledged every record, because only then may the messages they
answer be committed. Each failed record is handled by what its error says:

- retriable (a leader moved, a timeout, a lost connection): only that record is sent again,
  after a growing delay; what was acknowledged is never sent twice;
- too large (for the producer's ``max_request_size`` or the topic's ``max.message.bytes``):
  the record is shrunk, never retried as it is: a dead letter loses its value first (a
  header says so; the ``x-dlq-source-*`` headers still say where the original is), then its key
  and original headers; an outcome is cut down to its status, ids and position;
- anything else (unknown topic, authorization, still too large once shrunk) cannot succeed by
  retrying: :class:`~consumer.errors.PublishError`, and the service stops (exit non-zero)
  instead of stalling with nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from consumer.engine.ports import ProducerPort
from consumer.errors import PublishError
from consumer.kafka.partitioner import CachedPartitioner
from consumer.model.messages import DLQ_HEADER_PREFIX, VALUE_OMITTED_HEADER
from consumer.observability.metrics import Metrics
from consumer.stages.report import DeadLetterOut, OutcomeDoc, Publication, outcome_json

logger = logging.getLogger(__name__)

#: Set on a dead letter sent without its key and original headers (still too large without
#: its value).
KEY_OMITTED_HEADER = "x-dlq-key-omitted"
#: Set on an outcome cut down to its status, ids and position (too large for the topic).
OUTCOME_SHRUNK_HEADER = "x-outcome-shrunk"
#: Outcomes serialized and sent at a time (then acknowledged before the next slice).
PUBLISH_SLICE = 2_000


@dataclass(slots=True)
class _Record:
    """One record to send, and how it can still be shrunk."""

    what: str  # "outcome" | "dead letter" | "choices"
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    #: How many times it was shrunk already.
    shrunk: int = 0
    outcome: OutcomeDoc | None = None
    #: Sent on its own (not in a batch with others): its batch was refused for size, and
    #: only this record's own answer tells whether it is the one too large.
    alone: bool = False
    #: The partition it must go to (None: by its key, as the producer's partitioner would).
    partition: int | None = None

    def smaller(self) -> _Record | None:
        """The next smaller form of this record, or None when nothing is left to cut."""
        if self.what == "dead letter":
            if self.shrunk == 0:
                headers = (*self.headers, (VALUE_OMITTED_HEADER, b"too large for the topic"))
                return replace(self, value=b"", headers=headers, shrunk=1)
            if self.shrunk == 1:
                ours = tuple((k, v) for k, v in self.headers if k.startswith(DLQ_HEADER_PREFIX))
                headers = (*ours, (KEY_OMITTED_HEADER, b"too large for the topic"))
                return replace(self, key=None, headers=headers, shrunk=2)
            return None
        if self.shrunk == 0 and self.outcome is not None:
            small = _minimal(self.outcome)
            headers = (*self.headers, (OUTCOME_SHRUNK_HEADER, b"too large for the topic"))
            return replace(self, value=outcome_json(small), key=None, headers=headers, shrunk=1)
        return None


class Publisher:
    """Publishes a batch's dead letters, then its outcomes, and waits for every ack."""

    def __init__(
        self,
        producer: ProducerPort,
        *,
        results_topic: str,
        dlq_topic: str,
        metrics: Metrics,
        retry_initial_seconds: float = 0.5,
        retry_max_seconds: float = 10.0,
        max_record_bytes: int = 16 * 1024 * 1024,
        choices_topic: str | None = None,
    ) -> None:
        self._producer = producer
        self._results = results_topic
        self._dlq = dlq_topic
        self._choices = choices_topic
        self._metrics = metrics
        self._initial = retry_initial_seconds
        self._max = retry_max_seconds
        self._partitioner = CachedPartitioner()
        #: The producer's max_request_size: send() refuses a larger record, and batches are
        #: held to the same rule (a broker without a limit would take it).
        self._max_record = max_record_bytes

    async def publish(
        self,
        publications: Sequence[Publication],
        dead: Sequence[DeadLetterOut],
        choices: Sequence[tuple[int, bytes, bytes]] = (),
    ) -> None:
        """Send dead letters and the people's remembered choices (partition, key, value: to
        the choices topic), then outcomes; return once the broker acknowledged all of them.

        Raises :class:`PublishError` when a record can never be published.
        """
        first = [self._dead_letter(d) for d in dead]
        if choices and (topic := self._choices) is not None:
            # Checked before anything goes out (the producer would refuse the record with a
            # bare assertion): a batch that cannot publish publishes nothing, or its dead
            # letters would go out again after the restart.
            have = await self._producer.partitions_for(topic)
            if missing := sorted({p for p, _, _ in choices} - have):
                raise PublishError(
                    f"{topic} has no partition {missing[0]}: give it as many partitions as "
                    "the input"
                )
            # With the dead letters (one round trip): acknowledged before the messages are
            # done, so a restart after the commit finds what this batch chose.
            first += [_Record("choices", topic, k, v, (), partition=p) for p, k, v in choices]
        # Dead letters first: whoever reads an outcome saying "dead-lettered" finds it there.
        await self._deliver(first)
        # Outcomes in slices, in order: a batch of many events never holds all its outcome
        # bytes and the producer's copies of them at once.
        for start in range(0, len(publications), PUBLISH_SLICE):
            await self._deliver(
                [self._outcome(p) for p in publications[start : start + PUBLISH_SLICE]]
            )
        if dead:
            for cls, n in Counter(d.info.error_class for d in dead).items():
                self._metrics.dead_letters.labels(cls).inc(n)
        counts: Counter[tuple[str, str]] = Counter()
        for pub in publications:
            targets = pub.doc["targets"]
            if not targets:
                counts[(pub.doc["status"], "")] += 1
            for target in targets:
                counts[(target["status"], target["sobject"])] += 1
        for (status, sobject), n in counts.items():
            self._metrics.outcomes.labels(status, sobject).inc(n)

    def _dead_letter(self, letter: DeadLetterOut) -> _Record:
        message = letter.message
        kept = tuple((k, v) for k, v in message.headers if not k.startswith(DLQ_HEADER_PREFIX))
        return _Record(
            "dead letter",
            self._dlq,
            message.key,
            message.value,
            (*kept, *letter.info.headers()),
        )

    def _outcome(self, pub: Publication) -> _Record:
        return _Record("outcome", self._results, pub.key, pub.value(), (), outcome=pub.doc)

    async def _deliver(self, records: list[_Record]) -> None:
        delay = self._initial
        pending = records
        while pending:
            answers = await self._send_all(pending)
            again: list[_Record] = []
            transient: BaseException | None = None
            for record, answer in zip(pending, answers, strict=True):
                if answer is _SPLIT:
                    again.append(replace(record, alone=True))
                    continue
                if not isinstance(answer, BaseException):
                    continue
                if isinstance(answer, MessageSizeTooLargeError):
                    smaller = record.smaller()
                    if smaller is None:
                        raise PublishError(
                            f"{record.what} for {record.topic} is too large even when shrunk"
                        ) from answer
                    logger.warning(
                        "%s too large for %s; sending it shrunk", record.what, record.topic
                    )
                    again.append(smaller)
                elif isinstance(answer, KafkaError) and _retriable(answer):
                    again.append(record)
                    transient = answer
                elif isinstance(answer, asyncio.CancelledError):
                    raise answer
                else:
                    raise PublishError(
                        f"publishing a {record.what} to {record.topic} failed: "
                        f"{type(answer).__name__}"
                    ) from answer
            if transient is not None:
                logger.warning(
                    "publishing failed; retrying",
                    extra={"records": len(again), "error": repr(transient), "delay_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max)
            pending = again

    async def _send_all(self, records: list[_Record]) -> list[object]:
        """Queue every record, then wait for every delivery; one answer (or error) each.

        Records go in batches, one per partition (filled up to the producer's batch size),
        in their order: one future per batch instead of one per record. A record marked
        ``alone`` is sent by itself.
        """
        answers: list[object] = [None] * len(records)
        futures: list[asyncio.Future[Any]] = []
        members: list[list[int]] = []
        groups: dict[tuple[str, int], list[int]] = {}
        partitions: dict[str, list[int]] = {}
        no_metadata: dict[str, KafkaError] = {}
        for i, record in enumerate(records):
            if _size(record) > self._max_record:
                answers[i] = MessageSizeTooLargeError(
                    f"the record is over max_request_size ({self._max_record} bytes)"
                )
                continue
            if record.alone:
                try:
                    futures.append(
                        await self._producer.send(
                            record.topic,
                            value=record.value,
                            key=record.key,
                            partition=record.partition,
                            headers=list(record.headers),
                        )
                    )
                except (KafkaError, ValueError, TypeError) as exc:
                    # send() refuses a record over max_request_size before queuing it.
                    answers[i] = exc
                    continue
                members.append([i])
                continue
            known = partitions.get(record.topic)
            if known is None:
                if (unknown := no_metadata.get(record.topic)) is not None:
                    answers[i] = unknown
                    continue
                try:
                    known = partitions[record.topic] = sorted(
                        await self._producer.partitions_for(record.topic)
                    )
                except KafkaError as exc:
                    # No metadata within request_timeout_ms: every record of the topic in
                    # this call gets that answer (asked once), and is retried.
                    answers[i] = no_metadata[record.topic] = exc
                    continue
            partition = record.partition  # known to exist (publish checks)
            if partition is None:
                partition = self._partitioner(record.key, known, known)
            groups.setdefault((record.topic, partition), []).append(i)

        async def queue(batch: Any, topic: str, partition: int, held: list[int]) -> None:
            try:
                futures.append(await self._producer.send_batch(batch, topic, partition=partition))
            except KafkaError as exc:
                # send_batch() itself raises KafkaTimeoutError once it waited request_timeout_ms
                # for the partition's previous batch (the broker unreachable): those records'
                # answer, retried like a delivery timeout; the rest of the call goes on.
                for i in held:
                    answers[i] = exc
                return
            members.append(held)

        for (topic, partition), indexes in groups.items():
            batch = self._producer.create_batch()
            held: list[int] = []
            for i in indexes:
                record = records[i]
                fits = batch.append(
                    key=record.key, value=record.value, timestamp=None, headers=list(record.headers)
                )
                if fits is None:
                    await queue(batch, topic, partition, held)
                    batch, held = self._producer.create_batch(), []
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=None,
                        headers=list(record.headers),
                    )
                held.append(i)
            if held:
                await queue(batch, topic, partition, held)
        delivered = await asyncio.gather(*futures, return_exceptions=True)
        for held, answer in zip(members, delivered, strict=True):
            if isinstance(answer, MessageSizeTooLargeError) and len(held) > 1:
                # Which record is too large only its own answer can tell.
                answer = _SPLIT
            for i in held:
                answers[i] = (
                    answer if isinstance(answer, BaseException) or answer is _SPLIT else None
                )
        return answers


def _size(record: _Record) -> int:
    """A record's bytes as the producer counts them (key, value, headers; overhead aside)."""
    return (
        len(record.key or b"")
        + len(record.value or b"")
        + sum(len(k) + len(v) for k, v in record.headers)
    )


#: A batch of several records refused for its size: each is sent again on its own.
_SPLIT = object()


def _retriable(error: KafkaError) -> bool:
    # aiokafka marks a delivery timeout as not retriable, but it is what a batch gets when
    # the broker was unreachable for request_timeout_ms: sending it again can succeed.
    return bool(error.retriable) or isinstance(error, KafkaTimeoutError)


def _minimal(doc: OutcomeDoc) -> OutcomeDoc:
    """An outcome cut down to its status, ids and position."""
    keep = ("status", "error_class", "event_id", "event_type", "source", "event_time")
    small: OutcomeDoc = {k: doc[k] for k in keep if k in doc}
    small["reason"] = "outcome too large for the results topic: details dropped"
    small["targets"] = []
    small["processed_at"] = doc["processed_at"]
    return small
