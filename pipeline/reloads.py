"""Hot reload in a running worker: models and policy profiles on a control notice (Redis pub/sub) and on a
periodic poll, and the per-channel mood gauges; all on one thread, off the model's."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import faust

from pipeline.control import listen_for_changes
from pipeline.mood import MOOD_FLUSH_S, channel_mood
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.agents import WorkerState

log = logging.getLogger("chatmod.agents")
MOOD_REFRESH_S = 15.0  # how often the per-channel mood gauges are re-read from Redis


class _Reloader:
    """Model and profile reloads and the mood gauges, run on one thread off the model's."""

    def __init__(self, settings: Settings, state: WorkerState) -> None:
        self.settings, self.state = settings, state
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatmod-reload")

    async def models(self, reason: str) -> str:
        state = self.state
        if state.holder is None:
            return "unchanged"  # still starting: the first load reads the registry anyway
        outcome = await asyncio.get_running_loop().run_in_executor(self.executor, state.holder.reload)
        if outcome != "unchanged":
            state.metrics.model_reloads.labels(outcome=outcome).inc()
            log.info("model reload", extra={"outcome": outcome, "reason": reason,
                                            "serving": state.holder.current.refs})
        return outcome

    async def profiles(self, reason: str) -> str:
        state = self.state
        if state.holder is None or state.profiles is None:
            return "unchanged"
        base = state.holder.current.policy
        outcome = await asyncio.get_running_loop().run_in_executor(self.executor, state.profiles.refresh, base)
        if outcome != "unchanged":
            state.metrics.profile_reloads.labels(outcome=outcome).inc()
            log.info("profiles reload", extra={"outcome": outcome, "reason": reason,
                                               "generation": state.profiles.generation})
        return outcome

    async def on_notice(self, notice: dict) -> None:
        reason = f"control notice: {notice.get('reason', '?')}"
        if notice.get("event") == "profiles-changed":
            await self.profiles(reason)
        else:
            await self.models(reason)

    async def mood(self) -> None:
        state = self.state
        if state.profiles is None or state.profiles.store is None:
            return
        store = state.profiles.store
        try:
            mood = await asyncio.get_running_loop().run_in_executor(
                self.executor, channel_mood, store.client, self.settings.redis.key_prefix, time.time())
        except Exception as exc:
            log.debug("channel mood unavailable", extra={"error": str(exc)})
            return
        state.metrics.set_mood(mood)


def register_reloads(app: faust.App, settings: Settings, state: WorkerState) -> None:
    """Hot reload: on a control notice (Redis pub/sub) and on a periodic registry poll; the mood gauges."""
    reload = _Reloader(settings, state)
    if settings.redis.enabled:
        @app.task
        async def watch_control_channel() -> None:
            await listen_for_changes(settings.redis, reload.on_notice)

        @app.timer(interval=MOOD_REFRESH_S)
        async def refresh_mood() -> None:
            await reload.mood()

        @app.timer(interval=MOOD_FLUSH_S)
        async def flush_mood() -> None:  # batches flush when due; this sends a quiet stream's last counts
            if state.enforcement is not None:
                try:
                    await state.enforcement.flush_mood(only_if_due=True)
                except Exception as exc:  # noqa: BLE001 - kept in memory for the next flush
                    log.debug("mood counts not flushed", extra={"error": str(exc)})

        if settings.policy.profiles_poll_s > 0:
            @app.timer(interval=settings.policy.profiles_poll_s)
            async def poll_profiles() -> None:
                await reload.profiles("profiles poll")

    if settings.models.reload_poll_s > 0:
        @app.timer(interval=settings.models.reload_poll_s)
        async def poll_registry() -> None:
            await reload.models("registry poll")
