"""Model rollouts without restarts: a notice on a Redis channel, and a registry poll as a safety net.

``chatmod models promote|rollback`` (and a retrain that passes its gate) change the registry, then
publish ``{"event": "models-changed", ...}`` on ``<key_prefix>:control``. Every worker subscribes (Redis
pub/sub is a broadcast, which one Kafka consumer group is not) and reloads: the new model set is built
and verified completely in a side thread while the current one keeps serving, then swapped between
batches. A notice can be missed (Redis down, a worker starting), so each worker also re-reads the
registry every ``CHATMOD_MODELS_RELOAD_POLL_S`` seconds. A corrupt or contract-breaking artifact is
refused by the reload, logged, counted in ``chatmod_model_reloads_total{outcome="refused"}``, and the
previous models keep serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from pipeline.settings import RedisSettings

log = logging.getLogger("chatmod.control")


EVENTS = ("models-changed", "profiles-changed")


def control_channel(redis: RedisSettings) -> str:
    return f"{redis.key_prefix}:control"


def _client_kwargs(redis: RedisSettings) -> dict:
    timeout = max(2.0, redis.socket_timeout_s)  # a control call is rare: no need for the hot path's short fuse
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, **redis.credential_kwargs()}


def announce_models_changed(redis: RedisSettings, refs: dict[str, str | None], reason: str) -> int | None:
    """Tell running workers the registry changed; the number of workers that heard it, or ``None`` when
    Redis could not be reached (workers then pick the change up at their next registry poll)."""
    return _announce(redis, {"event": "models-changed", "current": refs, "reason": reason})


def announce_current_models(redis: RedisSettings, registry, reason: str) -> int | None:  # noqa: ANN001 - ModelRegistry
    """After a promote or rollback: announce the registry's current model per task (see above)."""
    return announce_models_changed(redis, {t: registry.current(t) for t in ("toxicity", "sentiment")}, reason)


def announce_profiles_changed(redis: RedisSettings, reason: str) -> int | None:
    """Tell running workers the policy profiles changed (they re-read them; a poll covers a missed notice)."""
    return _announce(redis, {"event": "profiles-changed", "reason": reason})


def _announce(redis: RedisSettings, notice: dict) -> int | None:
    import redis as redis_lib

    notice = json.dumps({**notice, "at": time.time()})
    try:
        client = redis_lib.Redis.from_url(redis.url, **_client_kwargs(redis))
        try:
            return int(client.publish(control_channel(redis), notice))
        finally:
            client.close()
    except (redis_lib.RedisError, OSError) as exc:
        log.warning("could not announce the change; workers will see it at their next poll",
                    extra={"error": str(exc), "event": json.loads(notice)["event"]})
        return None


async def listen_for_changes(redis: RedisSettings, on_change: Callable[[dict], Awaitable[None]],
                             stop: asyncio.Event | None = None) -> None:
    """Call ``on_change(notice)`` for every notice on the control channel, until ``stop`` is set.

    Reconnects after ``retry_interval_s`` when Redis is away; never raises for Redis errors.
    """
    from redis import asyncio as aioredis
    from redis.exceptions import RedisError

    channel = control_channel(redis)
    stop = stop or asyncio.Event()
    while not stop.is_set():
        client = aioredis.Redis.from_url(redis.url, **(_client_kwargs(redis) | {"socket_timeout": None}))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            log.info("listening for model changes", extra={"channel": channel})
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                try:
                    notice = json.loads(message["data"])
                except (TypeError, ValueError):
                    log.warning("ignored a malformed control notice", extra={"channel": channel})
                    continue
                if isinstance(notice, dict) and notice.get("event") in EVENTS:
                    await on_change(notice)
        except (RedisError, OSError) as exc:
            log.warning("control channel unavailable; retrying", extra={"error": str(exc),
                                                                        "retry_in_s": redis.retry_interval_s})
            try:
                await asyncio.wait_for(stop.wait(), timeout=redis.retry_interval_s)
            except TimeoutError:
                pass
        finally:
            try:
                await pubsub.aclose()
                await client.aclose()
            except (RedisError, OSError):
                pass
