"""Shared fixtures: a real tansu broker, a real Redis, a tiny model store, and names that do not collide.

Integration and e2e tests take `broker` and/or `redis_url`; both skip (not fail) with the reason when
the binary they need is missing. Add new shared fixtures in the section they belong to.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.devstack.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    ServiceStartError,
    resolve_redis_binary,
    resolve_tansu_binary,
)

# The machine's Redis is used when it answers; tests get this DB, flushed before each test,
# so they never touch DB 0 where a developer's own data may live. Under pytest-xdist (`make test`
# runs two workers) each worker has its own DB: 15, 14, ... (keys and channels also carry a
# per-test prefix, see `topic_prefix`).
LOCAL_REDIS = "redis://127.0.0.1:6379"
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... or "" when run alone
TEST_REDIS_DB = 15 - int(XDIST_WORKER.removeprefix("gw") or 0)
if XDIST_WORKER:
    # Two pytest workers share the machine's cores: torch's OpenMP threads in both would spin-wait on
    # each other (measured 3-4x slower on two cores), so each worker computes on one thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("CHATMOD_TEST_TORCH_THREADS", "1")


# -- order -------------------------------------------------------------------------------------
LONGEST_FIRST = ("slow", "chaos")  # markers of the tests that run for minutes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The minute-long tests first: under xdist's worksteal they start at once, and the other worker takes
    the short ones queued behind them, instead of one of them starting last and running alone."""
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in LONGEST_FIRST))


# -- names -------------------------------------------------------------------------------------
@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A per-test prefix such as "test_roundtrip-3f9a1c2b." for topics, groups and cache keys."""
    test_name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    return f"{test_name}-{uuid.uuid4().hex[:8]}."


@pytest.fixture
def unique_name(topic_prefix: str) -> Callable[[str], str]:
    """Make a collision-free name: `unique_name("chat.messages.v1")` -> "<prefix>chat.messages.v1"."""
    return lambda base: f"{topic_prefix}{base}"


# -- Kafka (tansu) -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tansu_binary() -> str:
    """Path of the tansu binary; skips the test when there is none."""
    try:
        return resolve_tansu_binary()
    except ServiceStartError as exc:
        pytest.skip(f"tansu broker unavailable: {exc}")


@pytest.fixture(scope="session")
def broker(tansu_binary: str) -> Iterator[EmbeddedBroker]:
    """One in-memory tansu broker for the whole session; use `unique_name` for topics."""
    with EmbeddedBroker(binary=tansu_binary) as running:
        yield running


# -- Redis -------------------------------------------------------------------------------------
def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.3)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def _redis_server() -> Iterator[str]:
    """Base URL (no DB) of a Redis: the machine's on 6379 if it answers, else an embedded one."""
    if _redis_answers(LOCAL_REDIS):
        yield LOCAL_REDIS
        return
    try:
        resolve_redis_binary()
    except ServiceStartError as exc:
        pytest.skip(f"no Redis: nothing answers on {LOCAL_REDIS} and {exc}")
    with EmbeddedRedis() as server:
        yield f"redis://127.0.0.1:{server.port}"


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    """URL of an empty Redis DB for this test (DB 15, flushed at fixture start)."""
    import redis

    url = f"{_redis_server}/{TEST_REDIS_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


# -- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding a tiny two-head (toxicity, sentiment) int8 ONNX model, current for both."""
    from models.registry import ModelRegistry
    from tests.tiny_models import build_tiny_artifact

    root = tmp_path_factory.mktemp("store")
    build_tiny_artifact(root / "build" / "tiny", family="distilbert", seed=0, formats=("onnx_int8",))
    registry = ModelRegistry(root / "store")
    manifest = registry.add(root / "build" / "tiny")
    registry.promote(manifest.ref)
    return root / "store"
