"""Per-person ordering of in-flight batches (no I/O: futures only)."""

from __future__ import annotations

import pytest

from consumer.engine.pipeline import KeySequencer

pytestmark = pytest.mark.asyncio


async def test_a_batch_waits_only_for_earlier_batches_sharing_a_person() -> None:
    seq = KeySequencer()
    first_wait, first = seq.claim({"a", "b"})
    second_wait, second = seq.claim({"c"})
    third_wait, third = seq.claim({"b", "c"})
    assert first_wait == []
    assert second_wait == []
    assert set(map(id, third_wait)) == {id(first), id(second)}
    fourth_wait, _ = seq.claim({"b"})
    assert fourth_wait == [third]  # the latest holder of "b", not every earlier one


async def test_release_lets_followers_go_and_forgets_finished_keys() -> None:
    seq = KeySequencer()
    _, first = seq.claim({"a"})
    waits, second = seq.claim({"a"})
    seq.release({"a"}, first)
    assert all(f.done() for f in waits)
    assert len(seq) == 1  # "a" is now held by the second batch
    seq.release({"a"}, second)
    assert len(seq) == 0
    again, _ = seq.claim({"a"})
    assert again == []
