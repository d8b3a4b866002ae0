"""The console's queue in Redis: flagged items by message id, claims, verdicts, live events, channel health.

Keys under ``<prefix>:v1:console:``:

- ``item:<id>``: the flagged record (result plus text), when it arrived, its state and verdict; kept a week.
  Written only if absent (``SET NX``), so a record read again after a console restart is not queued again;
- ``queue``: a sorted set of pending ids by severity (blocks above reviews, then the highest score);
- ``claim:<id>``: the moderator who holds an item, expiring after ``claim_ttl_s``;
- ``events``: a pub/sub channel of ``{"type": "item"|"claim"|"release"|"decided", "id", ...}``.

Channel health is read from the per-minute buckets the workers keep (``pipeline.mood.channel_health``).

Claims and verdicts are Lua scripts: two moderators never decide one item, and a verdict on an item
another moderator holds is refused with that moderator's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from models.labels import DECIDING_LABELS
from pipeline.enforcement import _h

ITEM_TTL_S = 7 * 86400

ADD_ITEM = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[5])
return 1
"""


def _pending_and_free(gone: str, claim_key: str) -> str:
    """Lua that returns ``gone`` unless ARGV[1] is still pending (in the sorted set KEYS[2]), and the holder's
    name if another moderator (not ARGV[2]) holds its claim ``claim_key``; ``holder`` stays in scope."""
    return f"""
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {gone} end
local holder = redis.call('GET', {claim_key})
if holder and holder ~= ARGV[2] then return holder end
"""


# -> the holder after the call ('' when the item is no longer pending)
CLAIM = _pending_and_free("''", "KEYS[1]") + """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if not holder then redis.call('PUBLISH', KEYS[3], ARGV[4]) end
return ARGV[2]
"""
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""
# -> 'ok', 'gone' (decided already or unknown) or the name of the moderator who holds it
DECIDE = _pending_and_free("'gone'", "KEYS[3]") + """
local item = cjson.decode(redis.call('GET', KEYS[1]))
item['state'] = 'decided'
item['verdict'] = cjson.decode(ARGV[3])
redis.call('SET', KEYS[1], cjson.encode(item), 'KEEPTTL')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', KEYS[4], ARGV[4])
return 'ok'
"""
# undo DECIDE when the verdict could not be published
REOPEN = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local item = cjson.decode(raw)
item['state'] = 'pending'
item['verdict'] = nil
redis.call('SET', KEYS[1], cjson.encode(item), 'KEEPTTL')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


def severity(result: dict) -> float:
    """Blocks first, then the highest deciding score."""
    top = max((v for k, v in result.get("toxicity", {}).items() if k in DECIDING_LABELS), default=0.0)
    return (1.0 if result.get("decision") == "block" else 0.0) + float(top)


class Queue:
    """The items, claims and verdicts (asyncio Redis client)."""

    def __init__(self, client, prefix: str, claim_ttl_s: int = 300):
        self.client, self.base, self.claim_ttl_s = client, f"{prefix}:v1:console", claim_ttl_s
        self.events = f"{self.base}:events"
        self._add = client.register_script(ADD_ITEM)
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)
        self._decide = client.register_script(DECIDE)
        self._reopen = client.register_script(REOPEN)

    def _item(self, item_id: str) -> str:
        return f"{self.base}:item:{_h(item_id)}"

    def _claim_key(self, item_id: str) -> str:
        return f"{self.base}:claim:{_h(item_id)}"

    async def add(self, records: Iterable[dict]) -> int:
        """Queue flagged records not seen before; returns how many were new."""
        records = list(records)
        if not records:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for result in records:
            item = {"result": result, "received": time.time(), "state": "pending"}
            event = json.dumps({"type": "item", "id": result["id"]})
            await self._add(keys=[self._item(result["id"]), f"{self.base}:queue", self.events],
                            args=[json.dumps(item), ITEM_TTL_S, severity(result), result["id"], event], client=pipe)
        return sum(await pipe.execute())

    async def pending(self, limit: int) -> list[dict]:
        """Pending items, the most severe first, each with its holder (or None)."""
        ids = [i.decode() for i in await self.client.zrevrange(f"{self.base}:queue", 0, limit - 1)]
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([self._item(i) for i in ids])
        pipe.mget([self._claim_key(i) for i in ids])
        items, holders = await pipe.execute()
        out = []
        for raw, holder in zip(items, holders, strict=True):
            if raw is not None:
                item = json.loads(raw)
                item["holder"] = holder.decode() if holder else None
                out.append(item)
        return out

    async def get(self, item_id: str) -> dict | None:
        raw = await self.client.get(self._item(item_id))
        return json.loads(raw) if raw else None

    async def claim(self, item_id: str, user: str) -> str:
        """The holder after the attempt: ``user`` when claimed (or already theirs), another name when
        someone else holds it, '' when the item is not pending."""
        event = json.dumps({"type": "claim", "id": item_id, "holder": user})
        holder = await self._claim(keys=[self._claim_key(item_id), f"{self.base}:queue", self.events],
                                   args=[item_id, user, self.claim_ttl_s, event])
        return holder.decode() if isinstance(holder, bytes) else holder

    async def release(self, item_id: str, user: str) -> bool:
        event = json.dumps({"type": "release", "id": item_id})
        return bool(await self._release(keys=[self._claim_key(item_id), self.events], args=[user, event]))

    async def decide(self, item_id: str, user: str, verdict: dict) -> str:
        """'ok', 'gone', or the holder's name when another moderator has the item."""
        event = json.dumps({"type": "decided", "id": item_id, "by": user, "verdict": verdict["action"]})
        answer = await self._decide(keys=[self._item(item_id), f"{self.base}:queue", self._claim_key(item_id),
                                          self.events], args=[item_id, user, json.dumps(verdict), event])
        return answer.decode() if isinstance(answer, bytes) else answer

    async def reopen(self, item_id: str, result: dict) -> None:
        event = json.dumps({"type": "item", "id": item_id})
        await self._reopen(keys=[self._item(item_id), f"{self.base}:queue", self.events],
                           args=[item_id, severity(result), event])

    async def count_verdict(self, task: str) -> None:
        await self.client.hincrby(f"{self.base}:verdicts", task, 1)

    async def verdicts_published(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.client.hgetall(f"{self.base}:verdicts")).items()}
