"""Adaptive micro-batching: a bounded buffer between the consumer and the model.

The model is the scarce resource, so a batch is taken when the model is ready for one, not on a timer:
whatever arrived while the previous batch was in the model forms the next batch (up to ``max_batch``).
Under load, batches grow by themselves and the model runs at its most efficient batch sizes; at low load
a message waits at most ``linger_s`` for company before it goes to the model alone. The same idea as
Ray Serve's and BentoML's adaptive batching and Kafka's ``linger.ms``.

Under a backlog (a whole batch already waiting) the consumer may take the next batch before the model is
free, so that its preparation (decoding, cache look-ups) overlaps the model's work and the model never
idles between batches.

The buffer holds at most ``capacity`` items: ``put`` waits while it is full, so a slow model slows the
consumer down (and Faust stops fetching) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class BatcherClosed(Exception):
    """The batch consumer stopped; nothing more is accepted. ``__cause__`` says why, when it failed."""


class MicroBatcher(Generic[T]):
    """``await put(item)`` on one side, ``await next_batch()`` on the other; one consumer of batches."""

    def __init__(self, max_batch: int, linger_s: float, capacity: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        if capacity < max_batch:
            raise ValueError(f"capacity ({capacity}) must be >= max_batch ({max_batch}), or no batch can fill")
        self.max_batch, self.linger_s, self.capacity = max_batch, linger_s, capacity
        self._items: deque[tuple[float, T]] = deque()  # (monotonic time it arrived, item)
        self._arrived = asyncio.Event()  # something was put since the consumer last looked
        self._space = asyncio.Event()  # a batch was taken since a producer found the buffer full
        self._full = asyncio.Event()  # a whole batch is waiting
        self._closed: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Add ``item``; waits while the buffer is full. Raises ``BatcherClosed`` once closed."""
        while len(self._items) >= self.capacity and self._closed is None:
            self._space.clear()
            await self._space.wait()
        if self._closed is not None:
            raise BatcherClosed("the batch consumer stopped") from self._closed
        self._items.append((time.monotonic(), item))
        self._arrived.set()
        if len(self._items) >= self.max_batch:
            self._full.set()

    async def next_batch(self) -> list[T]:
        """The next batch: waits for a first item, then until ``max_batch`` items are here or the oldest
        has waited ``linger_s``, whichever comes first (a backlog is taken at once)."""
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._items) < self.max_batch and self.linger_s > 0:
            deadline = self._items[0][0] + self.linger_s
            while len(self._items) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
        take = min(self.max_batch, len(self._items))
        batch = [self._items.popleft()[1] for _ in range(take)]
        self._space.set()
        return batch

    async def wait_full(self) -> None:
        """Returns once ``max_batch`` items are waiting: under a backlog the next batch can be taken (and
        prepared) while the model still works on the previous one, since waiting would not make it bigger."""
        while len(self._items) < self.max_batch and self._closed is None:
            self._full.clear()
            await self._full.wait()

    def close(self, reason: BaseException | None = None) -> list[T]:
        """Stop accepting items (waiting producers get ``BatcherClosed``); returns what was still buffered,
        which no batch will take."""
        self._closed = reason if reason is not None else BatcherClosed("closed")
        left = [item for _, item in self._items]
        self._items.clear()
        self._space.set()
        self._full.set()
        return left
