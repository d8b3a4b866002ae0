"""The worker's heap discipline: start-up's objects frozen out of the collector's sight, thawed at reloads."""

from __future__ import annotations

import gc
import weakref

import pytest

from pipeline.agents import settle_heap

pytestmark = pytest.mark.unit


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_what_start_up_loaded_is_frozen_and_the_threshold_set(restore_gc) -> None:
    settle_heap(10_000)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == 10_000
    settle_heap(0)  # 0 keeps whatever threshold is set
    assert gc.get_threshold()[0] == 10_000


def test_a_frozen_cycle_let_go_is_collected_at_the_next_settle(restore_gc) -> None:
    """An old model's cycles must not outlive it: a reload thaws, collects and freezes again."""
    old = Node()
    gone = weakref.ref(old)
    settle_heap(0)  # start-up: the cycle is frozen
    del old
    gc.collect()
    assert gone() is not None  # frozen: invisible to a collection
    settle_heap(0)  # a reload
    assert gone() is None
