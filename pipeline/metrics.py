"""Prometheus metrics of one worker, in their own registry, served on ``/metrics``.

A dedicated ``CollectorRegistry`` (not prometheus-client's global one) keeps the exposition to what
this worker measures, and lets tests build as many ``Metrics`` as they like without name clashes.
Every name carries the ``chatmod_`` prefix, e.g. ``chatmod_messages_in_total``.

Cache hits and misses count results, not Redis keys: a hit is a result whose scores (or the whole
published result, on a redelivery) came from the cache; a miss is one that needed the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pipeline.moderation import BatchStats

NAMESPACE = "chatmod"
DECISIONS = ("allow", "review", "block")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The worker's counters, histograms and gauges; ``exposition()`` renders them for a scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        kw = {"namespace": NAMESPACE, "registry": self.registry}
        self.messages_in = Counter("messages_in", "Records consumed from the messages topic.", **kw)
        self.results_out = Counter("results_out", "Results published to the moderated topic.", **kw)
        self.dead_letters = Counter("dead_letters", "Records sent to the DLQ, by error kind.", ["kind"], **kw)
        self.cache_hits = Counter("cache_hits", "Results served from the Redis cache.", **kw)
        self.cache_misses = Counter("cache_misses", "Results that needed the model.", **kw)
        self.decisions = Counter("decisions", "Published results by decision.", ["decision"], **kw)
        self.flagged = Counter("flagged", "Results published to the flagged topic (review or block).", **kw)
        self.batch_size = Histogram("batch_size", "Records per micro-batch.", buckets=BATCH_SIZE_BUCKETS,
                                    **kw)
        self.model_latency = Histogram("model_latency_seconds", "Model call per batch (misses only).",
                                       buckets=MODEL_LATENCY_BUCKETS, **kw)
        self.end_to_end_latency = Histogram(
            "end_to_end_latency_seconds", "From the input record's Kafka timestamp to its result.",
            buckets=END_TO_END_BUCKETS, **kw)
        self.model_info = Gauge("model_info", "1 for the model version serving each task.", ["task", "ref"],
                                **kw)
        self.model_reloads = Counter("model_reloads", "Model reloads that swapped or were refused (the previous "
                                     "models kept serving).", ["outcome"], **kw)
        for outcome in ("swapped", "refused"):
            self.model_reloads.labels(outcome=outcome)
        self.profile_reloads = Counter("profile_reloads", "Policy profile re-reads that loaded a change, or found "
                                       "Redis unavailable (the profiles in force stayed).", ["outcome"], **kw)
        self.actions = Counter("enforcement_actions", "Enforcement actions published to the actions topic.", **kw)
        self.enforcement_degraded = Counter("enforcement_degraded", "Batches decided without strikes, flood or "
                                            "raid state because Redis was unavailable.", **kw)
        self.strikes_removed = Counter("strikes_removed", "Strikes deleted by verdicts that overturned them.", **kw)
        self.channel_mood = Gauge("channel_mood", "Share of a channel's messages per sentiment over the last 5 "
                                  "minutes (the 50 most recently active channels; from Redis, all workers).",
                                  ["channel", "sentiment"], **kw)
        self.channel_messages = Gauge("channel_messages", "A channel's messages over the last 5 minutes.",
                                      ["channel"], **kw)
        self.feedback = Counter("feedback", "Moderator verdicts consumed: stored, or sent to the DLQ.", ["outcome"],
                                **kw)
        self.shadow_compared = Counter("shadow_compared", "Texts classified by both the serving and the shadow "
                                       "model.", **kw)
        self.shadow_agreements = Counter("shadow_agreements", "Texts where the shadow model decided as the serving "
                                         "one (toxicity: allow/review/block; sentiment: class).", ["task"], **kw)
        self.shadow_drift = Histogram("shadow_score_drift", "Mean |shadow - serving| probability per text.",
                                      ["task"], buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), **kw)
        self.shadow_info = Gauge("shadow_model_info", "1 for the shadow model compared on each task.",
                                 ["task", "ref"], **kw)
        self.redis_available = Gauge("redis_available", "1 when the result cache answers, else 0.", **kw)
        self.worker_ready = Gauge("worker_ready", "1 once models are loaded and the agent consumes.", **kw)
        for decision in DECISIONS:  # present (at 0) from the first scrape, so rate() works at once
            self.decisions.labels(decision=decision)

    def observe_batch(self, stats: BatchStats, latencies_ms: Iterable[float] | None = None) -> None:
        """Count one handled batch. ``latencies_ms`` defaults to ``stats.latencies_ms`` (one per result)."""
        self.messages_in.inc(stats.received)
        self.results_out.inc(stats.results)
        self.batch_size.observe(stats.received)
        kinds = stats.dead_letter_kinds
        if sum(kinds.values()) != stats.dead_letters:  # kinds not recorded: still count every letter
            kinds = {**kinds, "unknown": stats.dead_letters - sum(kinds.values())}
        for kind, n in kinds.items():
            if n:
                self.dead_letters.labels(kind=kind).inc(n)
        hits = stats.cache_hits + stats.replayed
        self.cache_hits.inc(hits)
        self.cache_misses.inc(max(0, stats.results - hits))
        for decision, n in stats.decisions.items():
            if n:
                self.decisions.labels(decision=decision).inc(n)
        self.flagged.inc(stats.flagged)
        self.actions.inc(stats.actions)
        if stats.enforcement_degraded:
            self.enforcement_degraded.inc()
        if stats.classified:
            self.model_latency.observe(stats.model_seconds)
        for ms in stats.latencies_ms if latencies_ms is None else latencies_ms:
            self.end_to_end_latency.observe(ms / 1000.0)
        if stats.shadow is not None:
            self.shadow_compared.inc(stats.shadow.compared)
            for task, n in stats.shadow.agreements.items():
                self.shadow_agreements.labels(task=task).inc(n)
            for task, values in stats.shadow.drift.items():
                for value in values:
                    self.shadow_drift.labels(task=task).observe(value)

    def set_mood(self, mood: Mapping[str, Mapping[str, float]]) -> None:
        """Replace the per-channel mood gauges (channels no longer active disappear)."""
        self.channel_mood.clear()
        self.channel_messages.clear()
        for channel, row in mood.items():
            self.channel_messages.labels(channel=channel).set(row["messages"])
            for sentiment in ("negative", "neutral", "positive"):
                self.channel_mood.labels(channel=channel, sentiment=sentiment).set(row[sentiment])

    def set_shadow(self, refs: Mapping[str, str]) -> None:
        self.shadow_info.clear()
        for task, ref in refs.items():
            self.shadow_info.labels(task=str(task), ref=ref).set(1)

    def set_models(self, refs: Mapping[str, str]) -> None:
        """Mark ``refs`` ({task: "name@version"}) as the serving models; earlier versions disappear."""
        self.model_info.clear()
        for task, ref in refs.items():
            self.model_info.labels(task=str(task), ref=ref).set(1)

    def set_status(self, *, ready: bool, redis_available: bool) -> None:
        self.worker_ready.set(1 if ready else 0)
        self.redis_available.set(1 if redis_available else 0)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
