"""The service's memory policy: start-up objects frozen, young collections rarer, and (glibc)
large buffers given back to the system when freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from consumer import cli


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_run_freezes_what_exists_and_collects_young_objects_less_often(restored_gc: None) -> None:
    gc.unfreeze()
    before = gc.get_freeze_count()
    # Containers that exist before the service starts.
    alive: list[list[int]] = [[] for _ in range(1_000)]
    cli._tune_gc()
    assert gc.get_freeze_count() >= before + len(alive)
    assert gc.get_threshold()[0] == cli.GC_YOUNG_THRESHOLD > 700


class Cyclic:
    """An object in a reference cycle with itself: only the cyclic collector frees it."""

    __slots__ = ("__weakref__", "me")

    def __init__(self) -> None:
        self.me = self


def test_cyclic_garbage_is_still_collected_within_the_young_threshold(restored_gc: None) -> None:
    gc.unfreeze()
    cli._tune_gc()
    first = Cyclic()
    gone = weakref.ref(first)
    del first
    for _ in range(cli.GC_YOUNG_THRESHOLD + 1_000):
        Cyclic()  # each is garbage at once, and counts as an allocation for the collector
    assert gone() is None  # collected without anyone calling gc.collect()


def test_malloc_gives_large_buffers_back_on_glibc_unless_the_operator_set_it() -> None:
    # This machine runs glibc (as the image does): the thresholds are set.
    assert cli._tune_malloc({}) is True
    # An operator's own MALLOC_*_THRESHOLD_ variables win: nothing is changed.
    assert cli._tune_malloc({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert cli._tune_malloc({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
    assert cli._tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is False
