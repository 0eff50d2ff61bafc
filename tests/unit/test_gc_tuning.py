"""The service's garbage-collector policy: start-up objects frozen, young collections rarer."""

from __future__ import annotations

import gc
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
