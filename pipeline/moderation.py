"""One micro-batch through the pipeline: decode, look up, classify the misses, decide, publish, cache.

Independent of Faust: the agent hands in raw records and a ``Publisher``; tests can drive it directly.
Nothing is lost: every record ends as a result or a dead letter, and the caller acks the batch only
after ``handle`` returns, i.e. after every output has been confirmed by the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from models.explain import to_original
from models.labels import DECIDING_LABELS, Task
from models.runtime import BatchMismatch  # noqa: F401 - the one definition; re-exported for callers
from pipeline.cache import ResultCache
from pipeline.enforcement import Enforcement, Item, Outcome, action_records
from pipeline.policy import Policy
from pipeline.profiles import CompiledProfile, Profiles, Verdict
from pipeline.schemas import ChatMessage, DeadLetter, InvalidMessage, ModerationResult, decode_message
from pipeline.settings import Settings
from pipeline.textnorm import content_key, message_key, normalise_text

log = logging.getLogger("chatmod.moderation")
EVASION_FLAG = "evasion"
RAW_TOXICITY = "raw_toxicity"  # in a scores dict: toxicity of the text as written, when de-obfuscation changed it
SPANS = "spans"  # in a scores dict: [start, end, label, score] over the normalised text (models/explain.py)
RECENT_SCORES = 4096  # content keys whose scores a worker keeps in memory (a few MB)
TASKS = frozenset(t.value for t in Task)


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
class ShadowStats:
    """The shadow model beside the serving one on this batch's classified texts."""

    compared: int = 0
    agreements: dict[str, int] = field(default_factory=dict)  # task -> texts where both decide the same
    drift: dict[str, list[float]] = field(default_factory=dict)  # task -> mean |p_shadow - p_serving| per text


def compare_shadow(serving: list[dict], shadow: list[dict], policy: Policy, shadow_policy: Policy) -> ShadowStats:
    """Toxicity: the same decision (each model under its own thresholds); sentiment: the same class."""
    stats = ShadowStats(compared=len(serving))
    for main, other in zip(serving, shadow, strict=True):
        for task, scores in other.items():
            if task not in main or task not in TASKS:
                continue
            if task == Task.TOXICITY.value:
                same = policy.decide(main[task])[0] == shadow_policy.decide(scores)[0]
            else:
                same = max(main[task], key=main[task].get) == max(scores, key=scores.get)
            stats.agreements[task] = stats.agreements.get(task, 0) + int(same)
            drift = sum(abs(scores[k] - main[task][k]) for k in scores) / max(1, len(scores))
            stats.drift.setdefault(task, []).append(drift)
    return stats


def with_text(result: bytes, text: str) -> bytes:
    """A serialised result with the message's ``text`` appended: the flagged topic's record."""
    return result[:-1] + b',"text":' + json.dumps(text, ensure_ascii=False).encode() + b"}"


def decide(scores: dict[str, dict[str, float]], policy: Policy) -> tuple[str, list[str]]:
    """``(decision, flags)`` from one text's scores: the policy's decision on the toxicity scores (of the
    de-obfuscated text), plus the flag ``evasion`` when the text as written would have been decided
    otherwise."""
    tox = scores.get(Task.TOXICITY.value, {})
    decision, flags = policy.decide(tox) if tox else ("allow", [])
    as_written = scores.get(RAW_TOXICITY)
    if as_written is not None and policy.decide(as_written)[0] != decision:
        flags = [*flags, EVASION_FLAG]  # de-obfuscation changed the decision: the writer disguised it
    return decision, flags


def reasons(decision: str, flags: list[str], tox: dict[str, float], targeted_at: float = 0.5) -> list[str]:
    """Stable, machine-readable reason codes for a decision (documented in the README's wire contract):
    ``label:<label>`` per flagged label, ``severity:high`` (block) or ``severity:medium`` (review),
    ``target:group`` (identity hate) or ``target:individual`` (the ``targeted`` signal at or over its
    calibrated threshold, ``targeted_at``), and
    ``evasion``. An allowed message has none."""
    if decision == "allow":
        return []
    out = [f"label:{flag}" for flag in flags if flag in DECIDING_LABELS]
    out.append("severity:high" if decision == "block" else "severity:medium")
    if "identity_hate" in flags:
        out.append("target:group")
    elif tox.get("targeted", 0.0) >= targeted_at:
        out.append("target:individual")
    if EVASION_FLAG in flags:
        out.append(EVASION_FLAG)
    return out


def judge(scores: dict, policy: Policy, profile: CompiledProfile | None = None, text: str = "") -> Verdict:
    """The decision on one text: the policy's (or the profile's thresholds'), then the profile's rules
    (``pipeline/profiles.py``) on ``text``, the normalised message."""
    decision, flags = decide(scores, profile.policy if profile is not None else policy)
    if profile is None:
        return Verdict(decision, flags)
    return profile.decide(decision, flags, scores.get(Task.TOXICITY.value, {}), text)


def build_result(message: ChatMessage, scores: dict, policy: Policy, refs: dict[str, str], cached: bool,
                 latency_ms: float, normalised: str | None = None, profile: CompiledProfile | None = None,
                 verdict: Verdict | None = None, outcome: Outcome | None = None) -> ModerationResult:
    """The result for one message from its scores: the verdict (:func:`judge`, unless given), then what the
    user's ledger and the channel's windows add (``outcome``, ``pipeline/enforcement.py``). ``normalised``:
    the text the scores were computed for, to map their spans onto the message as written."""
    text = normalised if normalised is not None else message.text
    verdict = verdict or judge(scores, policy, profile, text)
    decision, flags, extra, actions = verdict.decision, verdict.flags, list(verdict.reasons), []
    if outcome is not None:
        decision, flags, extra, actions = outcome.apply(decision, flags, extra)
    tox = scores.get(Task.TOXICITY.value, {})
    codes = [*reasons(decision, flags, tox, policy.signals.get("targeted", 0.5)), *extra]
    if profile is not None and codes:
        codes.append(f"profile:{profile.ref}")
    return ModerationResult(id=message.id, channel=message.channel, user=message.user, decision=decision,
                            toxicity=tox, sentiment=scores.get(Task.SENTIMENT.value, {}),
                            flags=flags, models=refs, cached=cached, latency_ms=latency_ms,
                            spans=to_original(scores.get(SPANS) or [], message.text, text), reasons=codes,
                            profile=profile.ref if profile is not None else None, actions=actions)


@dataclass
class _Pending:
    message: ChatMessage
    record: InRecord
    text: str
    content_key: str
    message_key: str


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
        # The scores this worker computed last: a text classified a moment ago by a concurrent batch whose
        # cache write has not landed yet is taken from here, so this worker scores it once and only once.
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

        stats = BatchStats(received=len(records))
        if records:  # the oldest record's age as the batch starts: broker, fetch and queueing before the worker
            stats.stage_seconds["queued"] = max(0.0, time.time() - min(r.timestamp for r in records))
        clf = self._classifier()
        policy = clf.policy
        pending: list[_Pending] = []
        dead: list[tuple[InRecord, InvalidMessage]] = []
        for rec in records:
            try:
                msg = decode_message(rec.value, self.settings.batching.max_message_bytes)
            except InvalidMessage as err:
                dead.append((rec, err))
                continue
            text = normalise_text(msg.text, self.settings.batching.max_text_chars)
            pending.append(_Pending(msg, rec, text, content_key(text, clf.refs, clf.casefold, self.prefix, clf.normaliser),
                                    message_key(self.prefix, msg.id)))

        outputs: list[tuple[str, bytes, bytes, list | None]] = []  # topic, key, value, headers
        cache_writes: dict[str, bytes] = {}
        owned: dict[str, asyncio.Future] = {}  # texts this batch classifies, shared with concurrent batches
        try:
            return await self._handle(pending, dead, clf, policy, stats, outputs, cache_writes, owned, release_model)
        finally:
            release_model()
            # Texts stay "in flight" until their scores are in the cache, so that no batch looking them up in
            # between classifies them a second time; on failure, batches waiting on them fail and retry.
            for key, future in owned.items():
                if not future.done():
                    future.set_exception(RuntimeError("the batch classifying this text did not finish"))
                if self._inflight.get(key) is future:
                    del self._inflight[key]

    async def _handle(self, pending: list[_Pending], dead: list, clf: Classifier, policy: Policy, stats: BatchStats,
                      outputs: list, cache_writes: dict[str, bytes], owned: dict[str, asyncio.Future],
                      release_model: Callable[[], None]) -> BatchStats:
        if pending:
            await self._moderate(pending, clf, policy, stats, outputs, cache_writes, owned, release_model)
        release_model()
        for rec, err in dead:
            letter = DeadLetter.from_invalid(err, rec.value, rec.topic, rec.partition, rec.offset)
            outputs.append((self.topics.dlq, None, rec.value or b"", letter.to_headers()))
            stats.dead_letter_kinds[err.kind] = stats.dead_letter_kinds.get(err.kind, 0) + 1
            log.info("dead letter", extra={"kind": err.kind, "reason": err.detail, "topic": rec.topic,
                                           "partition": rec.partition, "offset": rec.offset})
        stats.dead_letters = len(dead)
        if dead and self.dlq_limiter is not None:
            await self.dlq_limiter(len(dead))
        # Every send is queued first, then all confirmations are awaited together: one wait per batch.
        started = time.perf_counter()
        futures = [await self.publisher.send(topic, key, value, headers) for topic, key, value, headers in outputs]
        await asyncio.gather(*futures)
        stats.stage_seconds["publish"] = time.perf_counter() - started
        if cache_writes and self.cache is not None:
            started = time.perf_counter()
            await self.cache.set_many(cache_writes, self.ttl_s)
            stats.stage_seconds["cache_write"] = time.perf_counter() - started
        return stats

    async def _moderate(self, pending: list[_Pending], clf: Classifier, policy: Policy, stats: BatchStats,
                        outputs: list, cache_writes: dict[str, bytes], owned: dict[str, asyncio.Future],
                        release_model: Callable[[], None]) -> None:
        keys = [p.message_key for p in pending] + [p.content_key for p in pending]
        started = time.perf_counter()
        found = await self.cache.get_many(keys) if self.cache is not None else [None] * len(keys)
        stats.stage_seconds["lookup"] = time.perf_counter() - started
        by_message, by_content = found[: len(pending)], found[len(pending):]

        scores: dict[str, dict[str, dict[str, float]]] = {}  # content key -> {task: {label: p}}
        replay: dict[int, bytes] = {}
        for i, p in enumerate(pending):
            if by_message[i] is not None:  # a redelivery: publish exactly what was published before
                replay[i] = by_message[i]
            elif by_content[i] is not None and p.content_key not in scores:
                scores[p.content_key] = json.loads(by_content[i])
        for p in pending:
            if p.content_key not in scores and p.content_key in self._recent:
                scores[p.content_key] = self._recent[p.content_key]
        cached_keys = set(scores)
        misses = sorted({p.content_key: p.text for i, p in enumerate(pending)
                         if i not in replay and p.content_key not in scores}.items())
        # Single flight: a text another in-flight batch is classifying right now is awaited, not classified
        # again. The scores then match whatever the cache will hold (int8 scores move a little with a
        # text's batch neighbours), and the model does the work once.
        borrowed = {key: self._inflight[key] for key, _ in misses if key in self._inflight}
        todo = [(key, text) for key, text in misses if key not in borrowed]
        if todo:
            await self._classify(todo, clf, policy, stats, scores, cache_writes, owned)
        release_model()
        for key, shared in borrowed.items():
            scores[key] = await asyncio.shield(shared)
        verdicts = await self._enforce(pending, replay, scores, policy, stats, outputs)
        self._finish_results(pending, replay, scores, cached_keys, clf, policy, stats, outputs, cache_writes, verdicts)

    async def _enforce(self, pending: list[_Pending], replay: dict[int, bytes], scores: dict, policy: Policy,
                       stats: BatchStats, outputs: list) -> dict[int, tuple]:
        """Per new message: its profile, verdict and enforcement outcome; raid events go to the actions topic."""
        if self.profiles is None:
            return {}
        profiles = self.profiles(policy)
        chosen: dict[int, tuple] = {}
        items: list[Item] = []
        for i, p in enumerate(pending):
            if i in replay:
                continue
            profile = profiles.for_channel(p.message.channel)
            verdict = judge(scores[p.content_key], policy, profile, p.text)
            chosen[i] = (profile, verdict, None)
            sentiment = scores[p.content_key].get(Task.SENTIMENT.value)
            items.append(Item(p.message.id, p.message.channel, p.message.user, p.record.timestamp, profile,
                              verdict.decision, p.content_key, p.text,
                              max(sentiment, key=sentiment.get) if sentiment else None,
                              scores[p.content_key].get(Task.TOXICITY.value)))
        if self.enforcement is not None and items:
            started = time.perf_counter()
            result = await self.enforcement.apply(items)
            stats.stage_seconds["enforcement"] = time.perf_counter() - started
            stats.enforcement_degraded = result.degraded
            for i, outcome in zip(chosen, result.outcomes, strict=True):
                chosen[i] = (*chosen[i][:2], outcome)
            outputs += [(self.topics.actions, key.encode(), value, None) for key, value in result.events]
        return chosen

    async def _classify(self, todo: list[tuple[str, str]], clf: Classifier, policy: Policy, stats: BatchStats,
                        scores: dict, cache_writes: dict[str, bytes], shared: dict[str, asyncio.Future]) -> None:
        """Run the model on ``todo`` (content key, text), publishing each result to batches waiting on it."""
        loop = asyncio.get_running_loop()
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
                scores[key] = result
                cache_writes[key] = json.dumps(result, separators=(",", ":")).encode()
                shared[key].set_result(result)
                self._recent[key] = result
            while len(self._recent) > RECENT_SCORES:
                self._recent.popitem(last=False)
            stats.classified = len(todo)
            shadow = getattr(clf, "shadow", None)
            if shadow is not None:  # after the serving model: the shadow never delays a decision's inputs
                shadowed = await loop.run_in_executor(self.executor, shadow.predict, texts)
                stats.shadow = compare_shadow(predicted, shadowed, policy, shadow.policy)
        except BaseException as exc:
            for future in shared.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"the batch classifying this text failed: {exc!r}"))
            raise

    def _finish_results(self, pending: list[_Pending], replay: dict[int, bytes], scores: dict, cached_keys: set,
                        clf: Classifier, policy: Policy, stats: BatchStats, outputs: list,
                        cache_writes: dict[str, bytes], verdicts: dict[int, tuple]) -> None:
        now = time.time()
        built: dict[str, tuple[bytes, str]] = {}  # message key -> (value, decision): one result per id
        for i, p in enumerate(pending):
            latency_ms = max(0.0, now - p.record.timestamp) * 1000.0
            stats.latencies_ms.append(latency_ms)
            if i in replay:
                value = replay[i]
                stats.replayed += 1
                published = json.loads(value)
                decision = published.get("decision", "allow")
                actions = action_records(published)  # a redelivery republishes its actions too, identical
            elif p.message_key in built:  # the same id twice in one batch: the same result twice
                value, decision, actions = built[p.message_key]
            else:
                cached = p.content_key in cached_keys
                stats.cache_hits += cached
                profile, verdict, outcome = verdicts.get(i, (None, None, None))
                result = build_result(p.message, scores[p.content_key], policy, clf.refs, cached, latency_ms, p.text,
                                      profile, verdict, outcome)
                decision = result.decision
                value = result.to_json_bytes()
                actions = action_records(json.loads(value)) if result.actions else []
                cache_writes[p.message_key] = value
                built[p.message_key] = (value, decision, actions)
            key = p.message.id.encode()
            outputs.append((self.topics.moderated, key, value, None))
            outputs += [(self.topics.actions, user.encode(), record, None) for user, record in actions]
            stats.actions += len(actions)
            if decision != "allow":  # moderators read the text beside the verdict (the console's queue)
                outputs.append((self.topics.flagged, key, with_text(value, p.message.text), None))
                stats.flagged += 1
            stats.decisions[decision] = stats.decisions.get(decision, 0) + 1
        stats.results = len(pending)
