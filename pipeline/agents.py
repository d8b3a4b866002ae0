"""Faust agents: thin glue from topics to the ``Moderator``.

At-least-once: a batch's events are acked only after ``Moderator.handle`` returned for it, i.e. after the
broker confirmed every output. A batch that cannot be finished is never acked: transient errors are
retried; an unexpected one stops the process without committing, so the batch is redelivered after restart
instead of being lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn

import faust
from aiokafka.errors import KafkaError

from pipeline.batching import MicroBatcher
from pipeline.cache import ResultCache
from pipeline.enforcement import Enforcement
from pipeline.feedback import FeedbackStore
from pipeline.metrics import Metrics
from pipeline.moderation import BatchStats, InRecord, Moderator
from pipeline.profiles import ProfilesHolder, profiles_holder
from pipeline.reloads import register_reloads
from pipeline.schemas import DeadLetter, InvalidMessage, decode_feedback
from pipeline.serving import ServingHolder
from pipeline.settings import Settings

log = logging.getLogger("chatmod.agents")
MAX_ATTEMPTS = 5  # per batch, for errors that are not the broker's (a bug must not spin forever)


def settle_heap(gen0_threshold: int) -> None:
    """Take what start-up (or a model reload) left on the heap out of the cyclic collector's sight.

    A worker holds ~10^5 long-lived objects (models, tokenizers, Faust, clients). Python's oldest-generation
    collection walks all of them: a 35 ms pause, measured in process over a raid, every second or so under
    load, in the middle of whatever batch is in flight. Frozen (``gc.freeze``), they are skipped; they are
    still freed by reference counting, and thawed and collected once more at the next reload, so an old
    model's cycles do not outlive it. ``gen0_threshold`` (0: Python's 700) lets a batch's short-lived
    objects die by reference counting before the youngest generation is scanned at all.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if gen0_threshold:
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


class FaustPublisher:
    """Queues records on the app's producer; returns the broker's delivery future."""

    def __init__(self, app: faust.App):
        self.app = app

    async def send(self, topic: str, key: bytes | None, value: bytes, headers=None):
        return await self.app.producer.send(topic, key, value, None, None, headers)


class RateLimiter:
    """Token bucket: ``await limiter(n)`` waits until n more events fit under ``rate`` per second.
    It slows the consumer down (backpressure); it never drops anything."""

    def __init__(self, rate: float):
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate, self.tokens, self.stamp = rate, rate, time.monotonic()

    async def __call__(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


@dataclass
class WorkerState:
    """What the worker knows about itself (for logs, metrics, readiness)."""

    settings: Settings
    holder: ServingHolder | None = None
    cache: ResultCache | None = None
    moderator: Moderator | None = None
    profiles: ProfilesHolder | None = None
    enforcement: Enforcement | None = None
    totals: BatchStats = field(default_factory=BatchStats)  # counters only: ``latencies_ms`` stays empty
    batches: int = 0
    models_loaded: bool = False
    consuming: bool = False  # the consumer group has assigned partitions (possibly none) and streams resumed
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def ready(self) -> bool:
        """Models loaded and the agent consuming: what ``/ready`` answers."""
        return self.models_loaded and self.consuming

    @property
    def redis_available(self) -> bool:
        return self.cache is not None and self.cache.available

    async def close(self) -> None:
        """The worker's Redis clients, once it stops consuming (a failure to close loses nothing)."""
        for client in (self.cache, self.enforcement):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    def add(self, stats: BatchStats) -> None:
        t = self.totals
        self.batches += 1
        for name in ("received", "results", "dead_letters", "cache_hits", "replayed", "classified", "flagged",
                     "actions"):
            setattr(t, name, getattr(t, name) + getattr(stats, name))
        for k, v in stats.decisions.items():
            t.decisions[k] = t.decisions.get(k, 0) + v
        for k, v in stats.dead_letter_kinds.items():
            t.dead_letter_kinds[k] = t.dead_letter_kinds.get(k, 0) + v
        t.model_seconds += stats.model_seconds
        self.metrics.observe_batch(stats, stats.latencies_ms)
        self.refresh_gauges()

    def refresh_gauges(self) -> None:
        self.metrics.set_status(ready=self.ready, redis_available=self.redis_available)


def register_agents(app: faust.App, settings: Settings) -> WorkerState:
    topics, batching = settings.topics, settings.batching
    messages = app.topic(topics.messages, value_type=bytes, key_type=bytes, value_serializer="raw",
                         key_serializer="raw", partitions=topics.partitions)
    outputs = [app.topic(name, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw",
                         partitions=topics.partitions)
               for name in (topics.moderated, topics.flagged, topics.dlq, topics.actions)]
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatmod-model")
    state = WorkerState(settings)
    app.chatmod_state = state  # type: ignore[attr-defined]

    @app.on_before_shutdown.connect
    async def _close(sender: faust.App, **kwargs: object) -> None:  # after the consumer stopped, before exit
        await state.close()

    @app.on_rebalance_complete.connect
    async def _consuming(sender: faust.App, **kwargs: object) -> None:  # streams resume right after this
        state.consuming = True
        state.refresh_gauges()

    starting = asyncio.Lock()  # one model load, also if Faust restarts the agent while a start is under way

    async def start() -> Moderator:
        async with starting:
            if state.moderator is None:
                for topic in outputs:
                    await topic.maybe_declare()
                loop = asyncio.get_running_loop()
                state.holder = await loop.run_in_executor(executor, ServingHolder, settings)
                state.metrics.set_models(state.holder.current.refs)
                state.metrics.set_shadow(state.holder.current.shadow_refs)
                state.holder.on_reload(state.metrics.set_models)  # model_info follows hot reloads
                state.holder.on_reload(lambda _refs: settle_heap(settings.worker.gc_threshold))
                state.cache = ResultCache(settings.redis) if settings.redis.enabled else None
                state.profiles = profiles_holder(settings)
                await loop.run_in_executor(None, state.profiles.refresh, state.holder.current.policy)
                state.enforcement = Enforcement(settings.redis) if settings.redis.enabled else None
                state.moderator = Moderator(
                    settings, classifier=lambda: state.holder.current, cache=state.cache,
                    publisher=FaustPublisher(app), executor=executor,
                    dlq_limiter=RateLimiter(batching.dlq_max_per_s), profiles=state.profiles.get,
                    enforcement=state.enforcement,
                )
                settle_heap(settings.worker.gc_threshold)
                state.models_loaded = True
                state.refresh_gauges()
                log.info("worker ready", extra={"models": state.holder.current.refs, "topic": topics.messages})
        return state.moderator

    # One actor feeds an adaptive batcher; batches are taken when the model is ready for the next one, so
    # whatever arrived meanwhile rides along (big batches under load, no waiting when idle). A batch past the
    # model publishes while the next is in the model: up to max_inflight_batches are in flight. Events are
    # acked only when their batch is confirmed; Faust commits a partition only up to its first unacked
    # event, so nothing is committed early, whatever order batches finish in.
    @app.agent(messages, name="moderate_messages")
    async def moderate_messages(stream: faust.StreamT) -> None:
        await consume_in_batches(stream, await start(), state)

    if settings.feedback.enabled:
        _register_feedback(app, settings, state)
    register_reloads(app, settings, state)
    return state


def _register_feedback(app: faust.App, settings: Settings, state: WorkerState) -> None:
    """Moderator verdicts: valid ones appended (and fsynced) to the feedback store, bad ones to the DLQ;
    the batch is acked only after both."""
    topics = settings.topics
    feedback = app.topic(topics.feedback, value_type=bytes, key_type=bytes, value_serializer="raw",
                         key_serializer="raw", partitions=topics.partitions)
    store = FeedbackStore(settings.feedback.store)
    publisher = FaustPublisher(app)

    @app.agent(feedback, name="collect_feedback")
    async def collect_feedback(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.feedback.max_batch, within=1.0):
            good, letters = [], []
            for e in events:
                m = e.message
                try:
                    good.append(decode_feedback(m.value, settings.batching.max_message_bytes))
                except InvalidMessage as err:
                    letters.append(DeadLetter.from_invalid(err, m.value, m.topic, m.partition, m.offset))
            attempt = 0
            while True:  # never ack a batch that is not stored: retry until the disk or broker is back
                attempt += 1
                try:
                    if good:
                        await asyncio.get_running_loop().run_in_executor(None, store.append, good)
                    futures = [await publisher.send(topics.dlq, None, d.value or b"", d.to_headers()) for d in letters]
                    await asyncio.gather(*futures)
                    break
                except (OSError, KafkaError) as exc:
                    delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
                    log.error("feedback batch not stored; retrying", extra={"error": repr(exc), "retry_in_s": delay})
                    await asyncio.sleep(delay)
            await _overturn_strikes(good, state)
            state.metrics.feedback.labels(outcome="stored").inc(len(good))
            state.metrics.feedback.labels(outcome="dead_letter").inc(len(letters))
            for d in letters:
                log.info("dead letter", extra={"kind": d.kind, "reason": d.reason, "topic": d.source_topic,
                                               "partition": d.source_partition, "offset": d.source_offset})


async def _overturn_strikes(verdicts: list, state: WorkerState) -> None:
    """A verdict that clears a message (every toxicity label 0) removes the strike it earned, if any."""
    cleared = [v.id for v in verdicts if v.task.value == "toxicity" and not any(v.labels.values())]
    if not cleared or state.enforcement is None:
        return
    try:
        removed = await state.enforcement.overturn(cleared)
    except Exception as exc:  # noqa: BLE001 - Redis away: the strike decays on its own; the verdict is stored
        log.warning("could not remove overturned strikes", extra={"error": str(exc), "verdicts": len(cleared)})
        return
    state.metrics.strikes_removed.inc(removed)
    if removed:
        log.info("strikes removed by overturning verdicts", extra={"removed": removed})


async def consume_in_batches(stream: faust.StreamT, moderator: Moderator, state: WorkerState) -> None:
    """Feed ``stream`` to ``moderator`` in micro-batches, acking each event once its batch is confirmed."""
    batching = state.settings.batching
    manual = stream.noack()  # acks are ours: after the batch's outputs are confirmed
    batcher: MicroBatcher[faust.EventT] = MicroBatcher(
        batching.max_batch, batching.max_wait_ms / 1000.0,
        capacity=batching.max_batch * (batching.max_inflight_batches + 1))
    runner = asyncio.ensure_future(_run_batches(moderator, batcher, manual, state, batching.max_inflight_batches))
    try:
        async for event in manual.events():
            await batcher.put(event)
    finally:
        batcher.close()  # buffered events are not acked: they are redelivered after a restart
        if not runner.done():
            runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner  # started batches finish and are acked first


async def _run_batches(moderator: Moderator, batcher: MicroBatcher, stream: faust.StreamT, state: WorkerState,
                       max_inflight: int) -> None:
    """Take batches from ``batcher`` one model slot at a time; each finishes (publish, cache, ack) in its own
    task. Cancelled: the batches already taken run to the end before this returns."""
    inflight: set[asyncio.Task] = set()

    def batch_done(task: asyncio.Task) -> None:
        inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:  # _finish retries; this is a bug
            _exit_uncommitted("batch failed after it was handled", task.exception(), 0)

    try:
        while True:
            while len(inflight) >= max_inflight:  # bounded: a slow broker slows the model down too
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            events = await batcher.next_batch()
            model_free = asyncio.Event()
            task = asyncio.ensure_future(_complete(moderator, events, stream, state, model_free.set))
            inflight.add(task)
            task.add_done_callback(batch_done)
            # The next batch forms while this one is in the model; with a whole batch already waiting it is
            # taken at once, so its decoding and look-ups overlap the model and the model never idles.
            waiters = {asyncio.ensure_future(model_free.wait()), asyncio.ensure_future(batcher.wait_full())}
            try:
                await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
    except asyncio.CancelledError:  # stopping: what was taken is finished and acked, the rest redelivered
        batcher.close()
        if inflight:
            await asyncio.shield(asyncio.gather(*inflight, return_exceptions=True))
        raise
    except Exception as exc:  # a bug outside the retried part: never ack what was not finished
        _exit_uncommitted("batch loop failed", exc, len(batcher))


async def _complete(moderator: Moderator, events: list, stream: faust.StreamT, state: WorkerState,
                    model_done: Callable[[], None]) -> None:
    records = [InRecord(e.message.topic, e.message.partition, e.message.offset, e.message.value,
                        e.message.timestamp or time.time()) for e in events]
    stats = await _finish(moderator, records, model_done)
    for event in events:
        await stream.ack(event)
    state.add(stats)
    log.debug("batch", extra={"size": len(records), "classified": stats.classified, "cache_hits": stats.cache_hits,
                              "dead_letters": stats.dead_letters,
                              "stage_ms": {k: round(v * 1000, 1) for k, v in stats.stage_seconds.items()}})


async def _finish(moderator: Moderator, records: list[InRecord], model_done: Callable[[], None]) -> BatchStats:
    """Handle one batch to completion: retried on broker errors, shielded from cancellation (a SIGTERM
    lets the in-flight batch finish before its offsets are acked)."""
    attempt = 0
    while True:
        attempt += 1
        task = asyncio.ensure_future(moderator.handle(records, model_done))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await task  # finish and confirm the in-flight batch, then let the worker stop
            raise
        except KafkaError as exc:  # broker away: wait and retry the whole (idempotent) batch
            delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
            log.warning("publish failed; retrying batch", extra={"error": repr(exc), "attempt": attempt,
                                                                 "retry_in_s": delay})
            await asyncio.sleep(delay)
        except Exception as exc:  # noqa: BLE001 - Redis away: the gauges keep their last values
            if attempt < MAX_ATTEMPTS:
                log.exception("batch failed; retrying", extra={"attempt": attempt, "error": repr(exc)})
                await asyncio.sleep(0.5 * attempt)
                continue
            _exit_uncommitted("batch keeps failing", exc, len(records))


def _exit_uncommitted(what: str, exc: BaseException, size: int) -> NoReturn:
    """End the process at once, without committing: the unfinished batches are redelivered on restart."""
    log.critical(f"{what}; exiting without committing (it will be redelivered)",
                 extra={"error": repr(exc), "size": size})
    logging.shutdown()
    os._exit(70)
