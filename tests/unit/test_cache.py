"""ResultCache: one round trip per batch, TTLs set; a dead or slow Redis costs nothing and raises nothing."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from redis.asyncio import BlockingConnectionPool, Connection, Redis

from pipeline.cache import ResultCache
from pipeline.settings import RedisSettings

REDIS_PORT = 6379
TEST_REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/14"


@pytest.fixture
async def redis_db():
    """A raw client on DB 14, flushed before and after; skips when no Redis runs locally."""
    client = Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 -- any failure means "no Redis here"
        await client.aclose()
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {exc}")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(url: str = TEST_REDIS_URL, **overrides) -> RedisSettings:
    return RedisSettings(url=url, **({"retry_interval_s": 0.2, "socket_timeout_s": 0.2} | overrides))


class CountingConnection(Connection):
    """Counts writes to the socket: one per round trip (a pipeline sends all its commands at once)."""

    sends = 0

    async def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return await super().send_packed_command(command, check_health)


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _start_proxy(port: int) -> asyncio.Server:
    """A TCP forwarder 127.0.0.1:port -> the real Redis: Redis 'comes back' when it starts."""

    async def handle(client_r, client_w):
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", REDIS_PORT)
        await asyncio.gather(_forward(client_r, redis_w), _forward(redis_r, client_w))

    return await asyncio.start_server(handle, "127.0.0.1", port)


@pytest.mark.integration
async def test_round_trip_with_ttl(redis_db):
    cache = ResultCache(_settings(ttl_s=600))
    try:
        items = {f"chatmod:v1:res:{i}": f"result-{i}".encode() for i in range(20)}
        assert await cache.set_many(items) is True
        assert await cache.set_many(items) is True  # idempotent re-delivery
        got = await cache.get_many([*items, "chatmod:v1:res:absent"])
        assert got == [*items.values(), None]
        assert 590 <= await redis_db.ttl("chatmod:v1:res:3") <= 600
        await cache.set_many({"short": b"x"}, ttl_s=5)
        assert 1 <= await redis_db.ttl("short") <= 5
        stats = cache.stats
        assert (stats.hits, stats.misses, stats.errors, stats.writes) == (20, 1, 0, 41)
        assert cache.available
    finally:
        await cache.close()


@pytest.mark.integration
async def test_writes_survive_a_redis_that_forgot_the_script(redis_db):
    """A restarted Redis (or ``SCRIPT FLUSH``) has no scripts: the batch write loads it again itself."""
    cache = ResultCache(_settings(ttl_s=60))
    try:
        assert await cache.set_many({"a": b"1"}) is True
        await redis_db.script_flush()
        assert await cache.set_many({"a": b"2", "b": b"3"}) is True
        assert await cache.get_many(["a", "b"]) == [b"2", b"3"]
        assert 50 <= await redis_db.ttl("b") <= 60
        assert cache.stats.errors == 0
    finally:
        await cache.close()


@pytest.mark.integration
async def test_one_round_trip_per_batch(redis_db):
    pool = BlockingConnectionPool.from_url(TEST_REDIS_URL, connection_class=CountingConnection)
    cache = ResultCache(_settings(socket_timeout_s=5.0), client=Redis(connection_pool=pool))  # a busy CI box
    try:
        assert await cache.ping()  # connect (handshake commands) before counting
        CountingConnection.sends = 0
        keys = [f"k{i}" for i in range(64)]
        await cache.set_many(dict.fromkeys(keys, b"v"))
        assert CountingConnection.sends == 1
        assert await cache.get_many(keys) == [b"v"] * 64
        assert CountingConnection.sends == 2
    finally:
        await cache.close()


@pytest.mark.unit
async def test_redis_down_is_all_misses_fast_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.cache")
    url = f"redis://127.0.0.1:{_free_port()}/14"
    cache = ResultCache(_settings(url, password="hunter2", retry_interval_s=0.5))
    try:
        start = time.perf_counter()
        assert await cache.get_many(["a", "b"]) == [None, None]
        assert await cache.set_many({"a": b"1"}) is False
        for _ in range(50):  # breaker open: no connection attempts, no waiting
            assert await cache.get_many(["a"]) == [None]
        assert time.perf_counter() - start < 0.3
        assert not cache.available
        assert cache.stats.errors == 1 and cache.stats.skipped == 51 and cache.stats.misses == 52

        await asyncio.sleep(0.55)  # after retry_interval_s it tries again
        assert await cache.get_many(["a"]) == [None]
        assert cache.stats.errors == 2

        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].event == "cache_down"
        assert "hunter2" not in caplog.text
    finally:
        await cache.close()


@pytest.mark.unit
async def test_slow_redis_times_out_to_misses():
    async def silent(reader, writer):  # accepts, reads, never answers
        await reader.read(65536)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = ResultCache(_settings(f"redis://127.0.0.1:{port}/14", socket_timeout_s=0.1))
    try:
        start = time.perf_counter()
        assert await cache.get_many(["a"]) == [None]
        assert time.perf_counter() - start < 1.0
        assert not cache.available and cache.stats.errors == 1
    finally:
        await cache.close()
        server.close()


@pytest.mark.integration
async def test_comes_back_when_redis_does(redis_db, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.cache")
    port = _free_port()
    cache = ResultCache(_settings(f"redis://127.0.0.1:{port}/14", retry_interval_s=0.5))
    await redis_db.set("k", b"v")
    proxy = None
    try:
        assert await cache.get_many(["k"]) == [None] and not cache.available
        proxy = await _start_proxy(port)
        assert await cache.get_many(["k"]) == [None]  # still inside retry_interval_s: not tried
        await asyncio.sleep(0.55)
        assert await cache.get_many(["k"]) == [b"v"]
        assert cache.available
        events = [getattr(r, "event", None) for r in caplog.records]
        assert events == ["cache_down", "cache_up"]
    finally:
        await cache.close()
        if proxy is not None:
            proxy.close()


@pytest.mark.unit
async def test_disabled_cache_never_connects():
    cache = ResultCache(RedisSettings(url="redis://127.0.0.1:1/14", enabled=False))
    assert await cache.get_many(["a"]) == [None]
    assert await cache.set_many({"a": b"1"}) is False
    assert not cache.available and cache.stats.errors == 0
    await cache.close()


@pytest.mark.unit
async def test_values_must_be_bytes():
    cache = ResultCache(RedisSettings(enabled=False))
    with pytest.raises(TypeError, match="must be bytes"):
        await cache.set_many({"a": "text"})


@pytest.mark.integration
async def test_a_redis_restart_costs_no_writes():
    """After a restart every pooled connection is dead: each is replaced on first use, not reported as an
    outage (which would skip the writes of every batch until the breaker's next try)."""
    from pipeline.devstack.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        cache = ResultCache(_settings(server.url, retry_interval_s=30.0, socket_timeout_s=2.0))
        try:
            # several connections in the pool, as concurrent batches leave it
            assert all(await asyncio.gather(*(cache.set_many({f"k{i}": b"v"}) for i in range(4))))
            server.stop()
            server.start()  # same port, empty
            assert all(await asyncio.gather(*(cache.set_many({f"n{i}": b"v"}) for i in range(4))))
            assert await cache.get_many(["n0", "n3"]) == [b"v", b"v"]
            assert cache.available and cache.stats.errors == 0
        finally:
            await cache.close()
