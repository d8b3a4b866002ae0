"""Graduated enforcement, floods and raids: per-user and per-channel state in Redis, exact under redelivery.

**Strikes.** A flagged message in a channel whose profile has a ladder adds a strike to its user's
ledger, weighted by its decision (``review`` 1, ``block`` 2 by default), decaying with the profile's half-life.
The ledger is a Redis hash keyed by message id, written by one atomic script (``STRIKE_SCRIPT``) that
records, with the strike, the user's total before and after it and the total after their previous strike:
a message redelivered after a crash finds its strike already there, never counts twice, and reads back the
same totals, hence the same actions, as the first time. Crossing a rung of the ladder yields its action (``warn``, ``hold``, ``timeout``
for N minutes, ``escalate``), in the result's ``actions`` and on ``chat.actions.v1`` keyed by user; while a
user is over a ``hold`` rung, their messages are held for review. A moderator's verdict that overturns a
message (the feedback topic, every toxicity label 0) deletes its strike.

**Floods.** Per user, over the profile's window: the message rate, the same text repeated (by its
content key), and mentions in one message. Sorted sets keyed by message id: exact under redelivery too.

**Raids.** Per channel, the flagged share of the last window against the channel's share over the ten
windows before it; a jump sets off one ``raid`` event per window on ``chat.actions.v1``, keyed by channel.

**Mood.** Per channel and minute, counts of its messages (``pipeline/mood.py``), sent with each batch's
items: a trend, not a ledger.

**Redis down**: decisions fall back to the stateless profile (no strikes, floods or raids), logged once per
outage and counted in ``chatmod_enforcement_degraded_total``; nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.mood import MoodCounter
from pipeline.profiles import CompiledProfile
from pipeline.settings import RedisSettings

log = logging.getLogger("chatmod.enforcement")

FLOOD_FLAG = "flood"
HOLD_REASON = "strikes:hold"
_MENTION = re.compile(r"(?<!\w)@\w+")
BASELINE_WINDOWS = 10  # a raid is judged against the channel's share over this many windows before


def _h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Outcome:
    """What a user's ledger and a channel's windows add to one message's verdict."""

    flags: tuple[str, ...] = ()
    hold: bool = False
    actions: tuple[dict, ...] = ()
    reasons: tuple[str, ...] = ()

    def apply(self, decision: str, flags: list[str], reasons: list[str]) -> tuple[str, list[str], list[str], list[dict]]:
        if (self.flags or self.hold) and decision == "allow":
            decision = "review"
        return decision, [*flags, *self.flags], [*reasons, *self.reasons], list(self.actions)


@dataclass
class Item:
    """One message, as enforcement sees it."""

    message_id: str
    channel: str | None
    user: str | None
    ts: float  # seconds: the input record's Kafka timestamp
    profile: CompiledProfile
    decision: str
    content_key: str
    text: str
    sentiment: str | None = None  # the message's sentiment class, for the channel's mood
    toxicity: dict[str, float] | None = None  # its toxicity scores, for the channel's health


@dataclass
class Result:
    outcomes: list[Outcome]
    events: list[tuple[str, bytes]] = field(default_factory=list)  # (key, value) for chat.actions.v1
    degraded: bool = False


# Add one strike, atomically: unless the message already has one, the ledger's total before it (every strike
# decayed to this message's time), after it, and the total after the previous strike (``_last``) are written
# with it. Returns the entry: "weight:ts:before:after:peak". A redelivery returns the entry written first.
STRIKE_SCRIPT = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
local w, ts, hl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local before = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= '_last' then
    local ew, ets = string.match(all[i + 1], '^([^:]+):([^:]+)')
    local dt = ts - tonumber(ets)
    if dt < 0 then dt = 0 end
    before = before + tonumber(ew) * math.pow(0.5, dt / hl)
  end
end
local peak = tonumber(redis.call('HGET', KEYS[1], '_last') or '0')
local after = before + w
v = string.format('%s:%s:%.6f:%.6f:%.6f', ARGV[2], ARGV[3], before, after, peak)
redis.call('HSET', KEYS[1], ARGV[1], v, '_last', string.format('%.6f', after))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], KEYS[1], 'EX', ARGV[5])
return v
"""
# A message in a user's flood windows, in one command: added to the rate and repeat windows by id (a
# redelivery adds nothing), old entries trimmed. FLOOD_COUNT, once the batch is in, reads both counts.
FLOOD_ADD = """
local ts, window = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], ts, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ts - 10 * window)
  redis.call('EXPIRE', KEYS[i], 10 * window)
end
return 1
"""
FLOOD_COUNT = """
local ts, window = tonumber(ARGV[1]), tonumber(ARGV[2])
return {redis.call('ZCOUNT', KEYS[1], ts - window, ts), redis.call('ZCOUNT', KEYS[2], ts - window, ts)}
"""
LAST = "_last"  # the ledger field holding the total right after the latest strike


def parse_strike(entry: bytes | str) -> tuple[float, float, float]:
    """``(before, after, peak)`` of a ledger entry written by ``STRIKE_SCRIPT``."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    _, _, before, after, peak = text.split(":")
    return float(before), float(after), float(peak)


def ledger_key(prefix: str, channel: str | None, user: str) -> str:
    """A user's strike ledger in a channel (a Redis hash: message id -> strike, and the running total)."""
    return f"{prefix}:v1:strikes:{_h(channel or '')}:{_h(user)}"


def ledger_total(ledger: dict, ts: float, half_life: float) -> float:
    """The total of a ledger (``HGETALL``) at ``ts``: each strike decayed by its age."""
    total = 0.0
    for name, entry in ledger.items():
        if (name.decode() if isinstance(name, bytes) else name) == LAST:
            continue
        weight, at = (entry.decode() if isinstance(entry, bytes) else entry).split(":")[:2]
        total += float(weight) * 0.5 ** (max(0.0, ts - float(at)) / half_life)
    return total


def rungs_reached(profile: CompiledProfile, before: float, after: float, peak: float) -> list:
    """The rungs whose actions this strike takes: those it lifts the ledger to, unless the previous strike
    had already reached them and the ledger has not decayed below half the rung since (no repeat warnings
    for a user who is still there)."""
    return [r for r in profile.profile.strikes.ladder
            if after >= r.strikes > before and (peak < r.strikes or before < r.strikes / 2)]


@dataclass
class _Queued:
    """Where a batch's pipeline will hold its answers, and what it must read back."""

    strikes_at: dict[int, int] = field(default_factory=dict)  # item -> the answer holding its strike entry
    flood_at: dict[int, int] = field(default_factory=dict)  # item -> the answer holding its (rate, repeat)
    ledgers: set[str] = field(default_factory=set)  # read whole: to hold a user over a hold rung
    channels: dict[str, tuple[Item, float]] = field(default_factory=dict)  # channel -> (an item, latest ts)


class Enforcement:
    """Applies ledgers and windows to a batch (async Redis, one pipeline per batch)."""

    def __init__(self, redis: RedisSettings, client=None):
        from redis import asyncio as aioredis

        self.prefix = redis.key_prefix
        self.client = client or aioredis.Redis.from_url(
            redis.url, socket_timeout=redis.socket_timeout_s, socket_connect_timeout=redis.socket_timeout_s,
            max_connections=redis.max_connections, **redis.credential_kwargs())
        self.degraded_batches = 0
        self._down = False
        self._strike = self.client.register_script(STRIKE_SCRIPT)
        self._flood_add = self.client.register_script(FLOOD_ADD)
        self._flood_count = self.client.register_script(FLOOD_COUNT)
        self.mood = MoodCounter(self.client, self.prefix)

    def ledger_key(self, channel: str | None, user: str) -> str:
        return ledger_key(self.prefix, channel, user)

    def _flood_keys(self, it: Item) -> list[str]:
        """The user's rate window and their window for this text."""
        rate = f"{self.prefix}:v1:rate:{_h(it.channel or '')}:{_h(it.user)}"
        return [rate, f"{rate}:{_h(it.content_key)}"]

    def strike_of_key(self, message_id: str) -> str:
        return f"{self.prefix}:v1:strike-of:{_h(message_id)}"

    async def apply(self, items: Sequence[Item]) -> Result:
        """Outcomes for ``items``, in order; stateless ones (all empty) when Redis cannot be reached."""
        from redis.exceptions import RedisError

        active = [i for i, it in enumerate(items) if self._needs_state(it)]
        outcomes = [Outcome()] * len(items)
        mood = [it for it in items if it.channel is not None]
        if not active and not mood:
            return Result(outcomes)
        try:
            if mood:
                self.mood.count(mood)
            await self.flush_mood(only_if_due=True)
            if not active:
                self._down = False
                return Result(outcomes)
            result = await self._apply([items[i] for i in active])
        except (RedisError, OSError) as exc:
            self.degraded_batches += 1
            if not self._down:
                log.warning("enforcement state unavailable: stateless decisions until Redis is back",
                            extra={"error": str(exc)})
            self._down = True
            return Result(outcomes, degraded=True)
        if self._down:
            log.info("enforcement state available again")
        self._down = False
        for i, outcome in zip(active, result.outcomes, strict=True):
            outcomes[i] = outcome
        return Result(outcomes, result.events)

    @staticmethod
    def _needs_state(item: Item) -> bool:
        p = item.profile.profile
        return bool(item.user is not None and (p.strikes.ladder or p.flood)) or bool(p.raid and item.channel)

    async def _apply(self, items: list[Item]) -> Result:
        """One pipeline for the batch: every write first, then the reads that answer for the whole batch."""
        pipe = self.client.pipeline(transaction=False)
        queued = await self._queue_writes(pipe, items)
        writes = len(pipe)  # the answers after these are the reads
        reads: list[tuple[str, str]] = []  # what each read answers, in order
        for ledger in queued.ledgers:
            pipe.hgetall(ledger)
            reads.append(("ledger", ledger))
        for channel, (it, ts) in queued.channels.items():
            base, w = f"{self.prefix}:v1:chan:{_h(channel)}", it.profile.profile.raid.window_s
            for key in (f"{base}:all", f"{base}:flagged"):
                pipe.zcount(key, f"({ts - w}", ts)
                pipe.zcount(key, f"({ts - w * (BASELINE_WINDOWS + 1)}", ts - w)
            reads.append(("raid", channel))
        executed = await pipe.execute()
        entries = {k: executed[i] for k, i in queued.strikes_at.items()}
        rates = {}
        for k, i in queued.flood_at.items():
            rates[("rate", k)], rates[("repeat", k)] = (int(n) for n in executed[i])
        answers = iter(executed[writes:])
        strikes: dict[str, dict] = {}
        raids: dict[str, tuple[int, ...]] = {}
        for kind, what in reads:
            if kind == "raid":  # all now, all before, flagged now, flagged before
                raids[what] = tuple(int(next(answers)) for _ in range(4))
            else:
                strikes[what] = next(answers)
        outcomes = [self._outcome(k, it, entries.get(k), strikes, rates) for k, it in enumerate(items)]
        events = await self._raid_events(queued.channels, raids)
        return Result(outcomes, events)

    async def _queue_writes(self, pipe, items: list[Item]) -> _Queued:
        """Strikes, flood windows and raid windows for every item, then each item's flood counts (after every
        write: a message's counts include its whole batch)."""
        queued = _Queued()
        for k, it in enumerate(items):
            p = it.profile.profile
            if it.user is not None and p.strikes.ladder:
                ledger = self.ledger_key(it.channel, it.user)
                ttl = int(p.strikes.half_life_s * 10) + 1
                weight = p.strikes.weights.get(it.decision) if p.mode == "enforce" else None
                if weight:
                    await self._strike(keys=[ledger, self.strike_of_key(it.message_id)],
                                       args=[it.message_id, weight, repr(it.ts), p.strikes.half_life_s, ttl],
                                       client=pipe)
                    queued.strikes_at[k] = len(pipe) - 1
                elif any(r.action == "hold" for r in p.strikes.ladder):
                    queued.ledgers.add(ledger)
            if it.user is not None and p.flood:
                await self._flood_add(keys=self._flood_keys(it),
                                      args=[it.message_id, repr(it.ts), p.flood.window_s], client=pipe)
            if p.raid and it.channel is not None:
                self._queue_raid_window(pipe, it)
                seen = queued.channels.get(it.channel)
                if seen is None or it.ts > seen[1]:
                    queued.channels[it.channel] = (it, it.ts)
        for k, it in enumerate(items):
            p = it.profile.profile
            if it.user is not None and p.flood:
                await self._flood_count(keys=self._flood_keys(it),
                                        args=[repr(it.ts), p.flood.window_s], client=pipe)
                queued.flood_at[k] = len(pipe) - 1
        return queued

    def _queue_raid_window(self, pipe, it: Item) -> None:
        base = f"{self.prefix}:v1:chan:{_h(it.channel)}"
        horizon = it.profile.profile.raid.window_s * (BASELINE_WINDOWS + 1)
        pipe.zadd(f"{base}:all", {it.message_id: it.ts})
        if it.decision != "allow":
            pipe.zadd(f"{base}:flagged", {it.message_id: it.ts})
        for key in (f"{base}:all", f"{base}:flagged"):
            pipe.zremrangebyscore(key, "-inf", it.ts - horizon)
            pipe.expire(key, horizon)

    def _outcome(self, k: int, it: Item, entry: bytes | None, strikes: dict, rates: dict) -> Outcome:
        p = it.profile.profile
        flags: list[str] = []
        reasons: list[str] = []
        actions: list[dict] = []
        hold = False
        if it.user is not None and p.strikes.ladder:
            if entry is not None:  # this message's strike: the totals recorded when it was first counted
                before, after, peak = parse_strike(entry)
                actions = [{"action": r.action, "minutes": r.minutes, "strikes": round(after, 4)}
                           for r in rungs_reached(it.profile, before, after, peak)]
            else:
                ledger = strikes.get(self.ledger_key(it.channel, it.user), {})
                before = ledger_total(ledger, it.ts, p.strikes.half_life_s)
            hold = any(r.action == "hold" and before >= r.strikes for r in p.strikes.ladder)
            if hold:
                reasons.append(HOLD_REASON)
            reasons += [f"action:{a['action']}" for a in actions]
        if it.user is not None and p.flood:
            rate, repeat = rates.get(("rate", k), 0), rates.get(("repeat", k), 0)
            mentions = len(_MENTION.findall(it.text))
            kinds = [name for name, over in (("rate", rate > p.flood.max_messages),
                                             ("repeat", repeat > p.flood.max_repeats),
                                             ("mentions", mentions > p.flood.max_mentions)) if over]
            if kinds:
                flags.append(FLOOD_FLAG)
                reasons += [f"flood:{kind}" for kind in kinds]
        return Outcome(tuple(flags), hold, tuple(actions), tuple(reasons))

    async def _raid_events(self, channels: dict, raids: dict) -> list[tuple[str, bytes]]:
        events = []
        for channel, (it, ts) in channels.items():
            raid = it.profile.profile.raid
            n_now, n_before, f_now, f_before = raids[channel]
            share = f_now / n_now if n_now else 0.0
            baseline = f_before / n_before if n_before else None
            if n_now < raid.min_messages or share < raid.flagged_share:
                continue
            if baseline is not None and share < raid.over_baseline * baseline:
                continue
            # one event per channel per window, whichever worker sees it first
            if await self.client.set(f"{self.prefix}:v1:raid:{_h(channel)}", "1", nx=True, ex=raid.window_s):
                events.append((channel, json.dumps(
                    {"event": "raid", "channel": channel, "flagged_share": round(share, 4),
                     "baseline_share": round(baseline, 4) if baseline is not None else None, "messages": n_now,
                     "window_s": raid.window_s, "profile": it.profile.ref, "at": ts},
                    separators=(",", ":")).encode()))
                log.warning("raid detected", extra={"channel_hash": _h(channel), "flagged_share": round(share, 3),
                                                    "messages": n_now})
        return events

    async def flush_mood(self, only_if_due: bool = False) -> None:
        """Send the mood counts held in memory; with ``only_if_due``, only once ``MOOD_FLUSH_S`` has passed
        since the last flush (the worker's timer: the last batch of a quiet stream is not held back)."""
        if not only_if_due or self.mood.due():
            await self.mood.flush()

    async def overturn(self, message_ids: Sequence[str]) -> int:
        """Delete the strikes of ``message_ids`` (verdicts that overturned them); how many were removed."""
        if not message_ids:
            return 0
        keys = await self.client.mget([self.strike_of_key(m) for m in message_ids])
        pipe = self.client.pipeline(transaction=False)
        for mid, ledger in zip(message_ids, keys, strict=True):
            if ledger is not None:
                pipe.hdel(ledger.decode(), mid)
        removed = await pipe.execute() if len(pipe) else []
        return int(sum(removed))

    async def close(self) -> None:
        """Send the mood counts still in memory, then close the client."""
        try:
            await self.mood.flush()
        except Exception as exc:
            log.info("mood counts not flushed at shutdown", extra={"error": str(exc)})
        await self.client.aclose()


def action_records(result_json: dict) -> list[tuple[str, bytes]]:
    """``chat.actions.v1`` records (key = user) for a result's ``actions``: identical for every copy of the
    result, so a consumer deduplicates them by ``message_id``."""
    out = []
    for action in result_json.get("actions") or []:
        record = {"user": result_json.get("user"), "channel": result_json.get("channel"),
                  "message_id": result_json["id"], "profile": result_json.get("profile"), **action}
        out.append((result_json.get("user") or "", json.dumps(record, separators=(",", ":"), sort_keys=True).encode()))
    return out
