"""The adaptive micro-batcher: batches form from what is waiting, bounded, nothing dropped."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.batching import BatcherClosed, MicroBatcher

pytestmark = pytest.mark.unit


async def test_backlog_is_taken_at_once_without_lingering():
    batcher: MicroBatcher[int] = MicroBatcher(max_batch=4, linger_s=5.0, capacity=16)
    for i in range(10):
        await batcher.put(i)
    await asyncio.sleep(0.02)  # the oldest item has waited; a 5 s linger must not apply to a full batch
    started = time.monotonic()
    batches = [await batcher.next_batch() for _ in range(2)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert time.monotonic() - started < 1.0
    assert len(batcher) == 2


async def test_a_lone_item_waits_at_most_the_linger_for_company():
    batcher: MicroBatcher[str] = MicroBatcher(max_batch=8, linger_s=0.05, capacity=8)
    await batcher.put("a")
    started = time.monotonic()
    assert await batcher.next_batch() == ["a"]
    assert 0.03 <= time.monotonic() - started < 1.0


async def test_items_arriving_during_the_linger_join_the_batch():
    batcher: MicroBatcher[int] = MicroBatcher(max_batch=3, linger_s=2.0, capacity=8)

    async def trickle():
        for i in range(3):
            await batcher.put(i)
            await asyncio.sleep(0.01)

    feeder = asyncio.ensure_future(trickle())
    started = time.monotonic()
    assert await batcher.next_batch() == [0, 1, 2]  # full before the linger ran out
    assert time.monotonic() - started < 1.0
    await feeder


async def test_next_batch_waits_for_a_first_item():
    batcher: MicroBatcher[int] = MicroBatcher(max_batch=2, linger_s=0.0, capacity=2)
    taker = asyncio.ensure_future(batcher.next_batch())
    await asyncio.sleep(0.02)
    assert not taker.done()
    await batcher.put(7)
    assert await asyncio.wait_for(taker, 1.0) == [7]


async def test_a_full_buffer_holds_the_producer_back_until_a_batch_is_taken():
    batcher: MicroBatcher[int] = MicroBatcher(max_batch=2, linger_s=0.0, capacity=3)
    for i in range(3):
        await batcher.put(i)
    blocked = asyncio.ensure_future(batcher.put(3))
    await asyncio.sleep(0.02)
    assert not blocked.done() and len(batcher) == 3  # bounded: the fourth waits
    assert await batcher.next_batch() == [0, 1]
    await asyncio.wait_for(blocked, 1.0)
    assert await asyncio.wait_for(batcher.next_batch(), 1.0) == [2, 3]  # order kept, nothing lost


async def test_close_wakes_a_waiting_producer_with_the_reason_and_returns_the_leftovers():
    batcher: MicroBatcher[int] = MicroBatcher(max_batch=1, linger_s=0.0, capacity=1)
    await batcher.put(1)
    blocked = asyncio.ensure_future(batcher.put(2))
    await asyncio.sleep(0.01)
    assert batcher.close(RuntimeError("model thread died")) == [1]
    with pytest.raises(BatcherClosed) as info:
        await asyncio.wait_for(blocked, 1.0)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(BatcherClosed):
        await batcher.put(3)


@pytest.mark.parametrize(("max_batch", "linger_s", "capacity", "field"),
                         [(0, 0.0, 4, "max_batch"), (2, -1.0, 4, "linger_s"), (4, 0.0, 2, "capacity")])
def test_bad_bounds_are_refused(max_batch, linger_s, capacity, field):
    with pytest.raises(ValueError, match=field):
        MicroBatcher(max_batch, linger_s, capacity)


async def test_wait_full_returns_once_a_whole_batch_waits():
    batcher: MicroBatcher[int] = MicroBatcher(max_batch=3, linger_s=0.0, capacity=6)
    waiting = asyncio.ensure_future(batcher.wait_full())
    for i in range(2):
        await batcher.put(i)
    await asyncio.sleep(0.02)
    assert not waiting.done(), "two of three: a longer wait would still make the batch bigger"
    await batcher.put(2)
    await asyncio.wait_for(waiting, 1.0)
    await asyncio.wait_for(batcher.wait_full(), 1.0)  # still full: returns at once
    assert await batcher.next_batch() == [0, 1, 2]
