"""Channel mood and health: every message counted per channel and minute, read back as trends.

Workers count each batch's messages in memory (messages, flagged ones, each sentiment class, each toxicity
label's summed score) and send the counts to Redis at most once per ``MOOD_FLUSH_S``, one hash per channel
and minute plus an index of channels by last activity: per batch they would cost a round trip each (10%
of the worker's CPU in a raid, measured), for a statistic read per minute. ``channel_mood`` reads the
sentiment shares over a window (the ``chatmod_channel_mood`` gauges, ``chatmod status --channels``);
``channel_health`` reads each minute (the console's charts). A redelivered message may be counted twice:
these are trends, not ledgers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

MOOD_BUCKET_S = 60
MOOD_FLUSH_S = 1.0
MOOD_RETAIN_S = 2 * 3600
SENTIMENTS = ("negative", "neutral", "positive")


def mood_key(prefix: str, channel: str, minute: int) -> str:
    return f"{prefix}:v1:mood:{hashlib.sha256(channel.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}:{minute}"


def index_key(prefix: str) -> str:
    return f"{prefix}:v1:mood:channels"


class MoodCounter:
    """A worker's counts since its last flush (async Redis client). ``count`` takes enforcement items:
    anything with ``channel``, ``ts``, ``decision``, ``sentiment`` and ``toxicity``."""

    def __init__(self, client, prefix: str):
        self.client, self.prefix = client, prefix
        self._counts: dict[tuple[str, int], dict[str, float]] = {}
        self._latest: dict[str, float] = {}
        self._flushed_at = float("-inf")

    def due(self) -> bool:
        return bool(self._counts) and time.monotonic() - self._flushed_at >= MOOD_FLUSH_S

    def count(self, items: Sequence) -> None:
        """Per channel and minute: messages, flagged ones, each sentiment class, each toxicity score's sum."""
        for it in items:
            bucket = self._counts.setdefault((it.channel, int(it.ts // MOOD_BUCKET_S)), {})
            bucket["n"] = bucket.get("n", 0) + 1
            if it.decision != "allow":
                bucket["flagged"] = bucket.get("flagged", 0) + 1
            if it.sentiment is not None:
                bucket[it.sentiment] = bucket.get(it.sentiment, 0) + 1
            for label, score in (it.toxicity or {}).items():
                bucket[f"tox:{label}"] = bucket.get(f"tox:{label}", 0.0) + score
            self._latest[it.channel] = max(self._latest.get(it.channel, 0.0), it.ts)

    async def flush(self) -> None:
        """Send the mood counts gathered since the last flush (kept for the next one if Redis fails)."""
        counts, latest = self._counts, self._latest
        if not counts:
            return
        pipe = self.client.pipeline(transaction=False)
        for (channel, minute), fields in counts.items():
            key = mood_key(self.prefix, channel, minute)
            for name, n in fields.items():
                if isinstance(n, int):
                    pipe.hincrby(key, name, n)
                else:
                    pipe.hincrbyfloat(key, name, n)
            pipe.expire(key, MOOD_RETAIN_S)
        index = index_key(self.prefix)
        pipe.zadd(index, latest)
        pipe.zremrangebyscore(index, "-inf", max(latest.values()) - MOOD_RETAIN_S)
        self._counts, self._latest = {}, {}
        try:
            await pipe.execute()
        except BaseException:
            for key, fields in counts.items():  # back, merged with anything counted meanwhile
                bucket = self._counts.setdefault(key, {})
                for name, n in fields.items():
                    bucket[name] = bucket.get(name, 0) + n
            for channel, ts in latest.items():
                self._latest[channel] = max(self._latest.get(channel, 0.0), ts)
            raise
        self._flushed_at = time.monotonic()


def _sums(raw: dict) -> dict[str, float]:
    return {name.decode(): float(value) for name, value in raw.items()}


def channel_mood(client, prefix: str, now: float, window_s: int = 300, limit: int = 50) -> dict[str, dict]:
    """Channels active in the last ``window_s`` (at most ``limit``, the most recent first), each with its
    message count and its negative, neutral and positive shares over the window (sync client)."""
    channels = client.zrevrangebyscore(index_key(prefix), "+inf", now - window_s, start=0, num=limit)
    minutes = range(int((now - window_s) // MOOD_BUCKET_S), int(now // MOOD_BUCKET_S) + 1)
    pipe = client.pipeline(transaction=False)
    names = [c.decode() for c in channels]
    for channel in names:
        for minute in minutes:
            pipe.hgetall(mood_key(prefix, channel, minute))
    answers = pipe.execute() if names else []
    out = {}
    for k, channel in enumerate(names):
        totals: dict[str, float] = {}
        for bucket in answers[k * len(minutes) : (k + 1) * len(minutes)]:
            for name, value in _sums(bucket).items():
                totals[name] = totals.get(name, 0) + value
        rated = sum(totals.get(s, 0) for s in SENTIMENTS)
        out[channel] = {"messages": int(totals.get("n", 0)),
                        **{s: round(totals.get(s, 0) / rated, 4) if rated else 0.0 for s in SENTIMENTS}}
    return out


async def channel_health(client, prefix: str, minutes: int = 60, limit: int = 12) -> dict[str, list[dict]]:
    """The most recently active channels, each with ``minutes`` buckets (oldest first):
    ``{"minute", "n", "flagged_share", "toxicity": {label: mean}, "sentiment": {class: share}}`` (async client)."""
    now = time.time()
    channels = [c.decode() for c in await client.zrevrangebyscore(
        index_key(prefix), "+inf", now - minutes * MOOD_BUCKET_S, start=0, num=limit)]
    last = int(now // MOOD_BUCKET_S)
    span = range(last - minutes + 1, last + 1)
    pipe = client.pipeline(transaction=False)
    for channel in channels:
        for minute in span:
            pipe.hgetall(mood_key(prefix, channel, minute))
    answers = await pipe.execute() if channels else []
    out: dict[str, list[dict]] = {}
    for k, channel in enumerate(channels):
        series = []
        for j, minute in enumerate(span):
            raw = _sums(answers[k * len(span) + j])
            n = raw.get("n", 0.0)
            rated = sum(raw.get(c, 0.0) for c in SENTIMENTS)
            series.append({
                "minute": minute * MOOD_BUCKET_S, "n": n, "flagged_share": raw.get("flagged", 0.0) / n if n else 0.0,
                "toxicity": {name[4:]: v / n for name, v in raw.items() if name.startswith("tox:") and n},
                "sentiment": {c: raw[c] / rated for c in SENTIMENTS if c in raw and rated},
            })
        out[channel] = series
    return out
