"""The collector settings hubd applies once it serves (hubd.gc_policy)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hubd import gc_policy


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_apply_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    previous = gc_policy.apply()
    assert previous == (700, 10, 10)
    assert gc.get_threshold() == gc_policy.THRESHOLDS
    assert gc.get_freeze_count() > 0
    # The older generations still run: long-lived cycles are still freed.
    young, middle, old = gc_policy.THRESHOLDS
    assert young > 700 and middle > 0 and old > 0
