"""One micro-batch through the pipeline: decode, look up, classify the misses, decide, publish, cache.

Independent of Faust: the agent hands in raw records and a ``Publisher``; tests can drive it directly.
Nothing is lost: every record ends as a result or a dead letter, and the caller acks the batch only
after ``handle`` returns, i.e. after every output has been confirmed by the broker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from models.labels import Task
from models.normalise import normalise_text
from models.runtime import BatchMismatch  # noqa: F401 - the one definition; re-exported for callers
from pipeline.cache import ResultCache
from pipeline.decisions import ShadowStats, build_result, compare_shadow, judge, with_text
from pipeline.enforcement import Enforcement, Item, action_records
from pipeline.policy import Policy
from pipeline.profiles import Profiles
from pipeline.schemas import ChatMessage, DeadLetter, InvalidMessage, decode_message
from pipeline.settings import Settings
from pipeline.textnorm import content_key, message_key

log = logging.getLogger("chatmod.moderation")
RECENT_SCORES = 4096  # content keys whose scores a worker keeps in memory, least recently used out (a few MB)


@dataclass(frozen=True, slots=True)
class InRecord:
    """A record as consumed: where it came from, its raw bytes, and its Kafka timestamp (epoch s).

    ``latency_ms`` in results is measured from that timestamp: produce (or broker append) to result.
    """

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: float = field(default_factory=time.time)


class Publisher(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> Awaitable: ...


class Classifier(Protocol):
    """What the pipeline classifies with (``pipeline.serving.Serving``): models and the policy derived from
    their thresholds, read together so a batch never pairs a new model with an old policy."""

    refs: dict[str, str]
    casefold: bool
    normaliser: str
    policy: Policy

    def predict(self, texts: list[str]) -> list[dict[str, dict[str, float]]]: ...


@dataclass
class BatchStats:
    received: int = 0
    results: int = 0
    dead_letters: int = 0
    cache_hits: int = 0
    replayed: int = 0
    classified: int = 0
    flagged: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {"allow": 0, "review": 0, "block": 0})
    model_seconds: float = 0.0
    # queued (the oldest record's age as the batch starts), lookup, model, publish, cache_write
    stage_seconds: dict[str, float] = field(default_factory=dict)
    dead_letter_kinds: dict[str, int] = field(default_factory=dict)  # error kind -> count
    # Kafka timestamp -> result, one per published result (replays included); this batch only.
    latencies_ms: list[float] = field(default_factory=list)
    shadow: ShadowStats | None = None
    actions: int = 0  # enforcement actions published (chat.actions.v1)
    enforcement_degraded: bool = False  # Redis away: this batch was decided without strikes or windows




@dataclass
class _Pending:
    message: ChatMessage
    record: InRecord
    text: str
    content_key: str
    message_key: str


Output = tuple[str, bytes | None, bytes, list | None]  # topic, key, value, headers


@dataclass
class _Batch:
    """One batch's working state, from decoding to the last confirmed send."""

    clf: Classifier  # models and their policy, read once for the whole batch
    stats: BatchStats
    release_model: Callable[[], None]
    pending: list[_Pending] = field(default_factory=list)
    dead: list[tuple[InRecord, InvalidMessage]] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    cache_writes: dict[str, bytes] = field(default_factory=dict)
    owned: dict[str, asyncio.Future] = field(default_factory=dict)  # texts it classifies, shared with others
    replay: dict[int, bytes] = field(default_factory=dict)  # pending index -> the result published before
    scores: dict[str, dict] = field(default_factory=dict)  # content key -> {task: {label: p}}
    cached_keys: set[str] = field(default_factory=set)  # content keys whose scores came from cache or memory
    verdicts: dict[int, tuple] = field(default_factory=dict)  # pending index -> (profile, verdict, outcome)

    @property
    def policy(self) -> Policy:
        return self.clf.policy

    @functools.cached_property
    def refs(self) -> dict[str, str]:
        """The models' refs, as results carry them (built once per batch, not per message)."""
        return self.clf.refs


class Moderator:
    """Moderates micro-batches. ``classifier`` (models and their policy, as one) is read through a getter
    once per batch, so a hot reload takes effect at the next batch without locking the hot path."""

    def __init__(self, settings: Settings, classifier: Callable[[], Classifier], cache: ResultCache | None,
                 publisher: Publisher, executor: Executor,
                 dlq_limiter: Callable[[int], Awaitable[None]] | None = None,
                 profiles: Callable[[Policy], Profiles] | None = None, enforcement: Enforcement | None = None):
        self.settings = settings
        self.profiles = profiles  # the channel's profile decides (pipeline/profiles.py); None: the policy alone
        self.enforcement = enforcement  # strikes, floods, raids (pipeline/enforcement.py); None: stateless
        self._classifier = classifier
        self.cache = cache
        self.publisher = publisher
        self.executor = executor
        self.dlq_limiter = dlq_limiter
        self.topics = settings.topics
        self.ttl_s = settings.redis.ttl_s
        self.prefix = settings.redis.key_prefix
        self._inflight: dict[str, asyncio.Future] = {}  # content key -> scores, while a batch classifies it
        # The scores of the texts this worker saw last, classified or read from Redis: a text classified a
        # moment ago by a concurrent batch whose cache write has not landed yet is taken from here, so this
        # worker scores it once and only once; and a raid's few texts never leave the worker.
        self._recent: OrderedDict[str, dict] = OrderedDict()

    async def handle(self, records: Sequence[InRecord], model_done: Callable[[], None] | None = None) -> BatchStats:
        """Moderate ``records`` to the end: results and dead letters published and confirmed, cache written.

        ``model_done`` is called once, as soon as this batch no longer needs the model (its misses are
        classified, or it had none), so that the caller can form the next batch while this one publishes.
        """
        signalled = False

        def release_model() -> None:
            nonlocal signalled
            if not signalled:
                signalled = True
                if model_done is not None:
                    model_done()

        batch = _Batch(self._classifier(), BatchStats(received=len(records)), release_model)
        if records:  # the oldest record's age as the batch starts: broker, fetch and queueing before the worker
            batch.stats.stage_seconds["queued"] = max(0.0, time.time() - min(r.timestamp for r in records))
        self._decode(records, batch)
        try:
            if batch.pending:
                await self._moderate(batch)
            release_model()
            await self._publish(batch)
            return batch.stats
        finally:
            release_model()
            # Texts stay "in flight" until their scores are in the cache, so that no batch looking them up in
            # between classifies them a second time; on failure, batches waiting on them fail and retry.
            for key, future in batch.owned.items():
                if not future.done():
                    future.set_exception(RuntimeError("the batch classifying this text did not finish"))
                if self._inflight.get(key) is future:
                    del self._inflight[key]

    def _decode(self, records: Sequence[InRecord], batch: _Batch) -> None:
        clf, limits = batch.clf, self.settings.batching
        refs, normaliser, keys = batch.refs, clf.normaliser, {}  # a text repeated in the batch is hashed once
        for rec in records:
            try:
                msg = decode_message(rec.value, limits.max_message_bytes)
            except InvalidMessage as err:
                batch.dead.append((rec, err))
                continue
            text = normalise_text(msg.text, limits.max_text_chars)
            key = keys.get(text)
            if key is None:
                key = keys[text] = content_key(text, refs, clf.casefold, self.prefix, normaliser)
            batch.pending.append(_Pending(msg, rec, text, key, message_key(self.prefix, msg.id)))

    async def _publish(self, batch: _Batch) -> None:
        """The cache written, then dead letters and every output sent and confirmed (one wait per batch).

        Each result is in Redis under its message id before any copy of it is published, so a worker that
        dies between the two leaves a record that the redelivery publishes byte for byte (published once);
        the other order left a window where a published result had no record and its redelivery was
        scored again, with its own ``latency_ms``."""
        if batch.cache_writes and self.cache is not None:
            started = time.perf_counter()
            await self.cache.set_many(batch.cache_writes, self.ttl_s)
            batch.stats.stage_seconds["cache_write"] = time.perf_counter() - started
        stats = batch.stats
        for rec, err in batch.dead:
            letter = DeadLetter.from_invalid(err, rec.value, rec.topic, rec.partition, rec.offset)
            batch.outputs.append((self.topics.dlq, None, rec.value or b"", letter.to_headers()))
            stats.dead_letter_kinds[err.kind] = stats.dead_letter_kinds.get(err.kind, 0) + 1
            log.info("dead letter", extra={"kind": err.kind, "reason": err.detail, "topic": rec.topic,
                                           "partition": rec.partition, "offset": rec.offset})
        stats.dead_letters = len(batch.dead)
        if batch.dead and self.dlq_limiter is not None:
            await self.dlq_limiter(len(batch.dead))
        started = time.perf_counter()
        futures = [await self.publisher.send(topic, key, value, headers) for topic, key, value, headers in batch.outputs]
        await asyncio.gather(*futures)
        stats.stage_seconds["publish"] = time.perf_counter() - started

    async def _moderate(self, batch: _Batch) -> None:
        pending, scores, recent = batch.pending, batch.scores, self._recent
        # Scores come from memory first (this worker's recent texts: a raid's are all there), then from Redis;
        # message keys always from Redis, where a redelivery finds the result published before.
        for p in pending:
            key = p.content_key
            if key not in scores and key in recent:
                recent.move_to_end(key)
                scores[key] = recent[key]
        remote = list(dict.fromkeys(p.content_key for p in pending if p.content_key not in scores))
        keys = [p.message_key for p in pending] + remote
        started = time.perf_counter()
        found = await self.cache.get_many(keys) if self.cache is not None else [None] * len(keys)
        batch.stats.stage_seconds["lookup"] = time.perf_counter() - started
        for i, value in enumerate(found[: len(pending)]):
            if value is not None:  # a redelivery: publish exactly what was published before
                batch.replay[i] = value
        for key, value in zip(remote, found[len(pending):], strict=True):
            if value is not None:
                scores[key] = self._remember(key, json.loads(value))
        batch.cached_keys = set(scores)
        misses = sorted({p.content_key: p.text for i, p in enumerate(pending)
                         if i not in batch.replay and p.content_key not in scores}.items())
        # Single flight: a text another in-flight batch is classifying right now is awaited, not classified
        # again, so the model does the work once (scores are batch-independent: per-token int8).
        borrowed = {key: self._inflight[key] for key, _ in misses if key in self._inflight}
        todo = [(key, text) for key, text in misses if key not in borrowed]
        if todo:
            await self._classify(todo, batch)
        batch.release_model()
        for key, shared in borrowed.items():
            scores[key] = await asyncio.shield(shared)
        await self._enforce(batch)
        self._finish_results(batch)

    async def _enforce(self, batch: _Batch) -> None:
        """Per new message: its profile, verdict and enforcement outcome; raid events go to the actions topic."""
        if self.profiles is None:
            return
        profiles = self.profiles(batch.policy)
        chosen = batch.verdicts
        items: list[Item] = []
        for i, p in enumerate(batch.pending):
            if i in batch.replay:
                continue
            scores = batch.scores[p.content_key]
            profile = profiles.for_channel(p.message.channel)
            verdict = judge(scores, batch.policy, profile, p.text)
            chosen[i] = (profile, verdict, None)
            sentiment = scores.get(Task.SENTIMENT.value)
            items.append(Item(p.message.id, p.message.channel, p.message.user, p.record.timestamp, profile,
                              verdict.decision, p.content_key, p.text,
                              max(sentiment, key=sentiment.get) if sentiment else None,
                              scores.get(Task.TOXICITY.value)))
        if self.enforcement is not None and items:
            started = time.perf_counter()
            result = await self.enforcement.apply(items)
            batch.stats.stage_seconds["enforcement"] = time.perf_counter() - started
            batch.stats.enforcement_degraded = result.degraded
            for i, outcome in zip(chosen, result.outcomes, strict=True):
                chosen[i] = (*chosen[i][:2], outcome)
            batch.outputs += [(self.topics.actions, key.encode(), value, None) for key, value in result.events]

    async def _classify(self, todo: list[tuple[str, str]], batch: _Batch) -> None:
        """Run the model on ``todo`` (content key, text), publishing each result to batches waiting on it."""
        loop = asyncio.get_running_loop()
        shared, clf, stats = batch.owned, batch.clf, batch.stats
        for key, _ in todo:
            shared[key] = loop.create_future()
            # a failure nobody awaited must not be reported as "exception never retrieved"
            shared[key].add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight.update(shared)
        try:
            texts = [text for _, text in todo]
            started = time.perf_counter()
            predicted = await loop.run_in_executor(self.executor, clf.predict, texts)
            stats.model_seconds = stats.stage_seconds["model"] = time.perf_counter() - started
            if len(predicted) != len(texts):
                raise BatchMismatch(len(texts), len(predicted))
            for (key, _), result in zip(todo, predicted):
                batch.scores[key] = self._remember(key, result)
                batch.cache_writes[key] = json.dumps(result, separators=(",", ":")).encode()
                shared[key].set_result(result)
            stats.classified = len(todo)
            shadow = getattr(clf, "shadow", None)
            if shadow is not None:  # after the serving model: the shadow never delays a decision's inputs
                shadowed = await loop.run_in_executor(self.executor, shadow.predict, texts)
                stats.shadow = compare_shadow(predicted, shadowed, batch.policy, shadow.policy)
        except BaseException as exc:
            for future in shared.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"the batch classifying this text failed: {exc!r}"))
            raise

    def _remember(self, key: str, scores: dict) -> dict:
        """Keep a text's scores in memory (least recently used out first), and return them."""
        self._recent[key] = scores
        if len(self._recent) > RECENT_SCORES:
            self._recent.popitem(last=False)
        return scores

    def _finish_results(self, batch: _Batch) -> None:
        now, stats = time.time(), batch.stats
        built: dict[str, tuple[bytes, str, list]] = {}  # message key -> (value, decision, actions): one per id
        for i, p in enumerate(batch.pending):
            latency_ms = max(0.0, now - p.record.timestamp) * 1000.0
            stats.latencies_ms.append(latency_ms)
            if i in batch.replay:
                value = batch.replay[i]
                stats.replayed += 1
                published = json.loads(value)
                decision = published.get("decision", "allow")
                actions = action_records(published)  # a redelivery republishes its actions too, identical
            elif p.message_key in built:  # the same id twice in one batch: the same result twice
                value, decision, actions = built[p.message_key]
            else:
                value, decision, actions = self._new_result(batch, i, p, latency_ms)
                built[p.message_key] = (value, decision, actions)
            key = p.message.id.encode()
            batch.outputs.append((self.topics.moderated, key, value, None))
            batch.outputs += [(self.topics.actions, user.encode(), record, None) for user, record in actions]
            stats.actions += len(actions)
            if decision != "allow":  # moderators read the text beside the verdict (the console's queue)
                batch.outputs.append((self.topics.flagged, key, with_text(value, p.message.text), None))
                stats.flagged += 1
            stats.decisions[decision] = stats.decisions.get(decision, 0) + 1
        stats.results = len(batch.pending)

    def _new_result(self, batch: _Batch, i: int, p: _Pending, latency_ms: float) -> tuple[bytes, str, list]:
        """A message's first result: built from its scores and verdict, and cached under its id."""
        cached = p.content_key in batch.cached_keys
        batch.stats.cache_hits += cached
        profile, verdict, outcome = batch.verdicts.get(i, (None, None, None))
        result = build_result(p.message, batch.scores[p.content_key], batch.policy, batch.refs, cached,
                              latency_ms, p.text, profile, verdict, outcome)
        value = result.to_json_bytes()
        batch.cache_writes[p.message_key] = value
        return value, result.decision, action_records(json.loads(value)) if result.actions else []
