"""A record made while the service runs never says "consent" unless the person's latest
choice is one, whatever the delivery: choices for a person with no record (match mode:
``not_found``, remembered only by the service), in random order with duplicates, cut at
random batch boundaries, with restarts (the memory read back from the choices topic); a
Contact made by someone else at a random moment. Once the Contact exists, the latest choice
delivered after it was made is written whenever it is the latest of all.

Pipeline over in-memory Kafka (tests/unit/fakes.py), the writer over HTTP against the
emulator; the choices topic in memory too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.test_choices_topic import remembering
from tests.integration.test_consent_order import Run, chunk_sizes
from tests.integration.test_recent_choices import EMAIL, event, form_contact, user_deleted

#: (minute, True / False for a newsletter choice, None for a user deletion), the order of
#: delivery, the batch sizes, the restarts (after which chunk, before the last), and the
#: chunk before which the Contact is made.
Case = tuple[list[tuple[int, bool | None]], list[int], set[int], int]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    choices = draw(
        st.lists(st.tuples(st.integers(0, 20), st.none() | st.booleans()), min_size=1, max_size=10)
    )
    delivered = draw(
        st.permutations(choices + draw(st.lists(st.sampled_from(choices), max_size=4)))
    )
    chunks = chunk_sizes(draw, len(delivered))
    restarts = draw(st.sets(st.integers(1, len(chunks) - 1))) if len(chunks) > 1 else set()
    made = draw(st.integers(0, len(chunks) - 1))
    return delivered, chunks, restarts, made


def newest(delivered: list[tuple[int, bool | None]]) -> int:
    """The index of the delivery whose choice stands last by event time: a deletion after
    the choices of its minute, then the later offset (a duplicate re-delivered later
    wins a tie, as its stamp does)."""
    return max(range(len(delivered)), key=lambda i: (delivered[i][0], delivered[i][1] is None, i))


def arrived(run: Run, count: int) -> Callable[[], bool]:
    return lambda: len(run.outcomes()) >= count


async def scenario(case: Case) -> None:
    delivered, chunks, restarts, made = case
    async with remembering(on_user_deleted="withdraw") as (emulator, run, _):
        contact: str | None = None
        #: Deliveries from the Contact's making on.
        first_after: int | None = None
        cursor = 0
        for n, size in enumerate(chunks):
            if n == made:
                contact, first_after = form_contact(emulator), cursor
            before = len(run.outcomes())
            for i in range(cursor, cursor + size):
                minute, choice = delivered[i]
                newsletter = {"id": "newsletter", "enabled": choice}
                value = (
                    user_deleted(minute) if choice is None else event(f"e{i}", minute, newsletter)
                )
                run.consumer.append(0, value, EMAIL.encode())
            await run.until(arrived(run, before + size), f"chunk {n}")
            cursor += size
            if contact is not None:
                # At every moment: never a consent the newest choice delivered so far does
                # not give (a later withdrawal would hide it at the end).
                now = emulator.get("Contact", contact)
                so_far = delivered[:cursor]
                assert now is not None
                assert now["Newsletter_Consent__c"] is not True or so_far[newest(so_far)][1], (
                    n,
                    case,
                )
            if n + 1 in restarts:
                await run.restart()
        assert contact is not None
        record = emulator.get("Contact", contact)
    assert record is not None
    held = record["Newsletter_Consent__c"]
    last = newest(delivered)
    # Never a consent the person's latest choice does not give.
    assert held is not True or delivered[last][1] is True, (held, case)
    # The latest choice of all, delivered once the Contact existed, is written.
    if first_after is not None and last >= first_after:
        assert held is (delivered[last][1] is True), (held, case)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
# Withdrawn with no record; a Contact is made; an older grant comes late, then a newer
# withdrawal that would hide it at the end.
@example(case=([(5, False), (3, True), (7, False)], [1, 1, 1], set(), 1))
# Withdrawn with no record; a Contact is made; an older grant comes late.
@example(case=([(5, False), (3, True)], [1, 1], set(), 1))
# The same across a restart: the withdrawal is read back from the choices topic.
@example(case=([(5, False), (3, True)], [1, 1], {1}, 1))
# Deleted with no record; a grant from before the deletion comes late after a restart.
@example(case=([(5, None), (3, True)], [1, 1], {1}, 1))
def test_a_record_made_meanwhile_never_says_consent_the_latest_choice_does_not(
    case: Case,
) -> None:
    asyncio.run(scenario(case))
