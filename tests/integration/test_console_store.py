"""The console's Redis side on a real Redis: accounts, login limits, the queue's claims and verdicts under
concurrency, and the feedback labels a verdict becomes."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_lib
from redis import asyncio as aioredis

from pipeline.console.accounts import AccountError, Accounts, csrf_matches
from pipeline.console.queue import Queue, severity
from pipeline.console.views import feedback_labels

pytestmark = pytest.mark.integration


def flagged(i: str, decision: str = "review", score: float = 0.7) -> dict:
    return {"id": i, "decision": decision, "toxicity": {"toxic": score, "insult": score - 0.1},
            "reasons": ["label:toxic"], "text": f"message {i}", "channel": "c", "user": "u"}


def test_accounts_refuse_weak_input_and_store_only_a_hash(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    accounts = Accounts(client, "t")
    with pytest.raises(AccountError, match="at least 10"):
        accounts.add_user("ann", "short", "moderator")
    with pytest.raises(AccountError, match="role"):
        accounts.add_user("ann", "long enough pw", "owner")  # type: ignore[arg-type]
    with pytest.raises(AccountError, match="user name"):
        accounts.add_user("ann smith", "long enough pw", "moderator")
    accounts.add_user("ann", "long enough pw", "admin")
    stored = client.hget("t:v1:console:users", "ann").decode()
    assert "long enough pw" not in stored and "$argon2id$" in stored
    assert accounts.users() == {"ann": "admin"}


async def test_login_sessions_csrf_and_the_failure_budget(redis_url):
    Accounts(redis_lib.Redis.from_url(redis_url), "t").add_user("ann", "long enough pw", "moderator")
    client = aioredis.Redis.from_url(redis_url)
    accounts = Accounts(client, "t", session_ttl_s=60, max_failures=2, window_s=60)
    token, session = await accounts.login("ann", "long enough pw", "10.0.0.1")
    assert (await accounts.session(token)) == session and session.role == "moderator" and not session.admin
    assert csrf_matches(session.csrf, session.csrf) and not csrf_matches(session.csrf, None)
    assert not csrf_matches(session.csrf, "x")
    assert await accounts.login("ann", "wrong", "10.0.0.2") is None
    assert await accounts.login("nobody", "wrong", "10.0.0.2") is None  # unknown users cost a verification too
    assert await accounts.limited("ann", "10.0.0.9") is False  # one failure for ann so far
    assert await accounts.limited("someone", "10.0.0.2") is True  # two from this address
    await accounts.logout(token)
    assert await accounts.session(token) is None
    await accounts.audit("ann", "verdict", "m1", verdict="confirm")
    assert (await accounts.audit_tail(1))[0]["action"] == "verdict"
    await client.aclose()


async def test_one_moderator_decides_an_item_however_many_try_at_once(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    queue = Queue(client, "t", claim_ttl_s=30)
    assert await queue.add([flagged("m1"), flagged("m2", "block", 0.95)]) == 2
    assert await queue.add([flagged("m1")]) == 0  # read again (a restart): not queued twice
    assert [i["result"]["id"] for i in await queue.pending(10)] == ["m2", "m1"]  # blocks first
    answers = await asyncio.gather(*(queue.decide("m1", f"mod{k}", {"action": "confirm"}) for k in range(8)))
    assert sorted(answers).count("ok") == 1 and answers.count("gone") == 7
    assert await queue.add([flagged("m1")]) == 0  # decided stays decided
    assert await queue.claim("m2", "ann") == "ann" and await queue.claim("m2", "bob") == "ann"
    assert await queue.decide("m2", "bob", {"action": "confirm"}) == "ann"  # refused: ann holds it
    assert await queue.release("m2", "bob") is False and await queue.release("m2", "ann") is True
    assert await queue.decide("m2", "bob", {"action": "overturn"}) == "ok"
    assert await queue.claim("m2", "ann") == ""  # no longer pending
    item = await queue.get("m2")
    assert item["state"] == "decided" and item["verdict"]["action"] == "overturn"
    await queue.reopen("m2", item["result"])  # the verdict could not be published
    assert [i["result"]["id"] for i in await queue.pending(10)] == ["m2"]
    await client.aclose()


def test_a_verdict_becomes_feedback_labels():
    result = flagged("m1")
    assert feedback_labels(result, "confirm", None) == {"toxic": 1}
    assert feedback_labels({**result, "reasons": ["term:block:ab12cd34"]}, "confirm", None) == {"toxic": 1, "insult": 1}
    overturned = feedback_labels(result, "overturn", {"insult": 1})
    assert overturned["insult"] == 1 and overturned["toxic"] == 0 and len(overturned) == 7
    for bad in ({"rudeness": 1}, {"toxic": 2}, None):
        with pytest.raises(ValueError):
            feedback_labels(result, "overturn", bad)
    with pytest.raises(ValueError, match="confirm or overturn"):
        feedback_labels(result, "maybe", None)
    assert severity(flagged("b", "block", 0.5)) > severity(flagged("r", "review", 0.99))


async def test_open_pages_share_one_read_of_the_queue_until_something_changes(redis_url, monkeypatch):
    from pipeline.console import app
    from pipeline.console.app import Console
    from pipeline.settings import Settings

    calls = []

    async def counted(console, wanted):
        calls.append(dict(wanted))
        await asyncio.sleep(0.05)
        return {"items": [], "verdicts": {}}

    monkeypatch.setattr(app, "queue_view", counted)
    console = Console(Settings(redis={"url": redis_url}))
    wanted = {"channel": None, "label": None, "decision": None, "profile": None}
    await asyncio.gather(*(console.queue_snapshot(wanted) for _ in range(10)))  # ten pages at once
    assert len(calls) == 1
    await console.queue_snapshot({**wanted, "channel": "lobby"})  # other filters: their own read
    console.changed()  # a claim, a verdict or a new item here
    await console.queue_snapshot(wanted)
    assert len(calls) == 3
    await console.redis.aclose()
