"""Live events for the open pages: one Redis subscription per console process, fanned out to every page.

A page re-reads the queue when it hears that something changed, at most once a second, and never reads
what the event says; so a page needs a wake-up, not every event. Under a busy queue (hundreds of new items
a second) each page gets at most one event per ``COALESCE_S``, carrying the latest, instead of one per
item; and Redis delivers each event to the console once, not once per open page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

log = logging.getLogger("chatmod.console")

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
COALESCE_S = 0.25  # what arrives for a page within this long after an event is one more event
SUBSCRIBE_WAIT_S = 5.0  # how long a new page waits for the console's subscription before it is told it is live


class EventHub:
    """The console's subscription to ``channel``; ``stream`` is one page's server-sent events."""

    def __init__(self, redis, channel: str):
        self.redis, self.channel = redis, channel
        self.latest = b"{}"
        self.subscribed = asyncio.Event()
        self._pages: set[asyncio.Event] = set()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatmod-console-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=KEEPALIVE_S)
                    if message:
                        self.latest = message["data"]
                        for wake in self._pages:
                            wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: pages stay connected, we subscribe again
                self.subscribed.clear()
                log.warning("console events unavailable; subscribing again", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    @contextlib.contextmanager
    def _page(self) -> Iterator[asyncio.Event]:
        wake = asyncio.Event()
        self._pages.add(wake)
        try:
            yield wake
        finally:
            self._pages.discard(wake)

    async def stream(self, disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
        """``: connected`` once the page will hear what happens from now on, then coalesced ``data:`` events
        and keep-alives until ``disconnected()`` says the page is gone."""
        with self._page() as wake:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.subscribed.wait(), SUBSCRIBE_WAIT_S)
            yield b": connected\n\n"
            while not await disconnected():
                try:
                    await asyncio.wait_for(wake.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                wake.clear()
                yield b"data: " + self.latest + b"\n\n"
                await asyncio.sleep(COALESCE_S)
