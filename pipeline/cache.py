"""Result cache on Redis: one round trip per batch to read, one to write, never in the way.

The cache is an optimisation, so it must never fail a batch or slow it down: a Redis that is down
or slow turns every lookup into a miss and every write into a no-op. A circuit breaker keeps a dead
Redis from costing a connect attempt per batch: after a failure nothing is tried for
``retry_interval_s``. One warning is logged when it goes down and one info line when it is back.
Writes are ``SET key value EX ttl``, a batch's in one script call (``SET_MANY``): idempotent, so a
re-delivered batch may write again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from pipeline.settings import RedisSettings, mask_url_password

log = logging.getLogger(__name__)

# What "Redis is unavailable" looks like: connection refused/reset, timeouts, auth or server errors.
_UNAVAILABLE = (RedisError, OSError, TimeoutError)

# A batch's writes as one command with one reply. Pipelined ``SET``s cost the worker a packed command and a
# parsed "+OK" per key: a fifth of a cached message's CPU in a raid, where every message writes its result.
SET_MANY = """
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""


@dataclass
class CacheStats:
    """Counters for metrics. ``hits``/``misses`` count keys; ``errors`` failed round trips;
    ``skipped`` calls answered without trying because the breaker was open."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    skipped: int = 0
    writes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _make_client(settings: RedisSettings) -> Redis:
    kwargs: dict = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        # One immediate retry on a connection error, on a fresh connection: after a Redis restart every pooled
        # connection is dead, and each would otherwise fail once, trip the breaker and drop a batch's writes.
        # A Redis that is really down fails the retry too; then the breaker decides when to try again.
        "retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        "max_connections": settings.max_connections,
        "timeout": settings.socket_timeout_s,  # wait for a free pooled connection at most this long
        "decode_responses": False,
        **settings.credential_kwargs(),
    }
    pool = BlockingConnectionPool.from_url(settings.url, **kwargs)
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


class ResultCache:
    """Batch get/set of byte values with a TTL on ``redis.asyncio``; never raises for Redis trouble."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        client: Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._client: Redis | None = None
        if settings.enabled:
            self._client = client if client is not None else _make_client(settings)
            self._set_many = self._client.register_script(SET_MANY)  # loaded again by itself after a restart
        self._clock = clock
        # Bound on one round trip, connect included: socket timeouts alone do not cover every stall.
        self._deadline_s = 2 * settings.socket_timeout_s
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def available(self) -> bool:
        """True when enabled and the last round trip worked (or none was tried yet)."""
        return self._client is not None and self._down_since is None

    def _may_try(self) -> bool:
        if self._client is None:
            return False
        return self._down_since is None or self._clock() >= self._retry_at

    def _failed(self, exc: BaseException, op: str) -> None:
        self.stats.errors += 1
        now = self._clock()
        self._retry_at = now + self._settings.retry_interval_s
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "redis unavailable; serving without the result cache",
                extra={
                    "event": "cache_down",
                    "op": op,
                    "error": f"{type(exc).__name__}: {exc}",
                    "redis_url": mask_url_password(self._settings.url),
                    "retry_interval_s": self._settings.retry_interval_s,
                },
            )
        else:
            log.debug("redis still unavailable", extra={"event": "cache_retry_failed", "op": op})

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.info(
                "redis available again; result cache back in use",
                extra={"event": "cache_up", "down_for_s": round(self._clock() - self._down_since, 3)},
            )
            self._down_since = None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for ``keys`` in order (``None`` = miss) in one MGET; all misses if Redis is unavailable."""
        keys = list(keys)
        if not keys:
            return []
        if not self._may_try():
            self.stats.skipped += 1
            self.stats.misses += len(keys)
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._deadline_s):
                values = await self._client.mget(keys)
        except _UNAVAILABLE as exc:
            self._failed(exc, "get")
            self.stats.misses += len(keys)
            return [None] * len(keys)
        self._succeeded()
        hits = sum(v is not None for v in values)
        self.stats.hits += hits
        self.stats.misses += len(keys) - hits
        return list(values)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: int | None = None) -> bool:
        """Write all items with ``SET key value EX ttl`` in one round trip (one script call).

        ``ttl_s`` defaults to ``settings.ttl_s``. Returns whether the write reached Redis; a failure is
        counted and logged by the breaker, never raised.
        """
        ttl = self._settings.ttl_s if ttl_s is None else ttl_s
        if ttl < 1:
            raise ValueError(f"ttl_s must be >= 1 second, got {ttl}")
        wrong = [k for k, v in items.items() if not isinstance(v, bytes | bytearray | memoryview)]
        if wrong:
            raise TypeError(f"cache values must be bytes; not for {len(wrong)} keys, e.g. {wrong[0]!r}")
        if not items:
            return True
        if not self._may_try():
            self.stats.skipped += 1
            return False
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._set_many(keys=list(items), args=[ttl, *items.values()])
        except _UNAVAILABLE as exc:
            self._failed(exc, "set")
            return False
        self._succeeded()
        self.stats.writes += len(items)
        return True

    async def ping(self) -> bool:
        """Health check: does Redis answer now? Goes through the breaker like any call."""
        if not self._may_try():
            return False
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._client.ping()
        except _UNAVAILABLE as exc:
            self._failed(exc, "ping")
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        """Close the client and its connection pool."""
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)
