"""Policy profiles, term lists and the enforcement ledger, on a real Redis."""

from __future__ import annotations

import json

import pytest
import redis as redis_lib
from redis import asyncio as aioredis

from models.labels import DECIDING_LABELS
from pipeline.enforcement import (
    Enforcement,
    Item,
    Outcome,
    action_records,
    ledger_total,
    parse_strike,
    rungs_reached,
)
from pipeline.policy import Policy
from pipeline.profiles import CompiledProfile, Profile, Profiles, ProfilesHolder, ProfileStore
from pipeline.settings import RedisSettings
from pipeline.terms import TermList, term_id

pytestmark = pytest.mark.unit

BASE = Policy(labels=DECIDING_LABELS, review=dict.fromkeys(DECIDING_LABELS, 0.5), block=dict.fromkeys(DECIDING_LABELS, 0.9))
CLEAN = dict.fromkeys((*DECIDING_LABELS, "targeted"), 0.01)


def tox(**scores: float) -> dict[str, float]:
    return {**CLEAN, **scores}


def verdict(profile: Profile, text: str, scores: dict[str, float]):
    compiled = CompiledProfile(profile, BASE)
    decision, flags = compiled.policy.decide(scores)
    return compiled.decide(decision, flags, scores, text)


# ---------------------------------------------------------------- term lists


def test_terms_match_whole_words_and_their_evasive_spellings() -> None:
    terms = TermList(["badword", "ass", "cunt", "kys"])
    def hits(text: str) -> list[str]:
        return [text[h.start:h.end] for h in terms.find(text)]

    assert hits("you badword") == ["badword"]
    for evasive in ("b a d w o r d", "b.a.d.w.o.r.d!", "b4dw0rd", "bаdwоrd", "BADWORD", "baaadword"):
        assert hits(f"ok {evasive} ok") == [evasive.rstrip("!")], evasive
    for ordinary in ("Scunthorpe", "assessment", "Sky sources", "class", "passion"):
        assert hits(ordinary) == [], ordinary
    assert hits("a$$ lol") == ["a$$"] and hits("k y s") == ["k y s"]


def test_wildcards_phrases_and_stable_ids() -> None:
    terms = TermList(["noob*", "*tard", "*rekt*", "go die"])
    got = [(t, [h.term_id for h in terms.find(t)]) for t in ("noobs", "fucktard", "getrektlol", "go die now", "go now")]
    assert got == [("noobs", [term_id("noob*")]), ("fucktard", [term_id("*tard")]),
                   ("getrektlol", [term_id("*rekt*")]), ("go die now", [term_id("go die")]), ("go now", [])]
    assert term_id(" Go  Die ") == term_id("go die") != term_id("go dies")  # ids are of the normalised term
    for bad in ("no*ob", "*", "two words*", "semi;colon"):
        with pytest.raises(ValueError, match="term"):
            TermList([bad])


def test_a_list_of_thousands_of_terms_is_a_lookup_per_word() -> None:
    terms = TermList([f"term{i}" for i in range(5000)] + [f"pre{i}x*" for i in range(200)])
    assert len(terms) == 5200
    assert [h.term_id for h in terms.find("x term4999 y pre17xzzz")] == [term_id("term4999"), term_id("pre17x*")]


# ---------------------------------------------------------------- profiles


def test_profiles_are_validated_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown labels"):
        Profile(name="p", thresholds={"targeted": {"review": 0.5}})
    with pytest.raises(ValueError, match="below its review"):
        Profile(name="p", thresholds={"insult": {"review": 0.7, "block": 0.6}})
    with pytest.raises(ValueError, match="strictly increasing"):
        Profile(name="p", strikes={"ladder": [{"strikes": 3, "action": "warn"}, {"strikes": 2, "action": "hold"}]})
    with pytest.raises(ValueError, match="timeout rung needs minutes"):
        Profile(name="p", strikes={"ladder": [{"strikes": 3, "action": "timeout"}]})
    with pytest.raises(ValueError, match="Extra inputs"):
        Profile(name="p", blocked_terms=["x"])


def test_profile_rules_in_order() -> None:
    swearing = Profile(name="s", allow_profanity=True, allow_terms=["hell"], block_terms=["badword"])
    # profanity alone, untargeted: allowed; aimed at someone: still caught
    assert verdict(swearing, "fuck this lag", tox(toxic=0.95, obscene=0.8)).decision == "allow"
    assert verdict(swearing, "fuck you", tox(toxic=0.95, obscene=0.8, targeted=0.9)).decision == "block"
    assert verdict(swearing, "you idiot", tox(toxic=0.8, insult=0.7)).decision == "review"
    strict = Profile(name="t", allow_terms=["hell"])
    assert verdict(strict, "what the hell", tox(toxic=0.7)).reasons == ["rule:allow-term"]
    assert verdict(strict, "go to hell you idiot", tox(toxic=0.7, insult=0.6)).decision == "review"  # never excused
    hit = verdict(swearing, "such a b4dw0rd", tox())
    assert (hit.decision, hit.flags, hit.reasons) == ("block", ["term"], [f"term:block:{term_id('badword')}"])
    suggest = Profile(name="u", mode="suggest", block_terms=["badword"])
    advice = verdict(suggest, "badword", tox(toxic=0.99))
    assert advice.decision == "review" and advice.reasons[-2:] == ["mode:suggest", "suggested:block"]
    stricter = Profile(name="v", thresholds={"insult": {"review": 0.2, "block": 0.4}})
    assert verdict(stricter, "meh", tox(insult=0.45)).decision == "block"  # the profile's thresholds decide


def test_store_versions_profiles_and_a_bad_stored_one_never_takes_effect(redis_url: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    store = ProfileStore(client, "t")
    assert store.put(Profile(name="gaming", allow_profanity=True)).version == 1
    assert store.put(Profile(name="gaming", allow_profanity=False)).version == 2
    store.assign("lobby", "gaming")
    with pytest.raises(ValueError, match="no profile"):
        store.assign("lobby", "missing")
    holder = ProfilesHolder(store)
    assert holder.refresh(BASE) == "loaded" and holder.refresh(BASE) == "unchanged"
    assert holder.get(BASE).for_channel("lobby").ref == "gaming@2"
    assert holder.get(BASE).for_channel("elsewhere").ref == "default@0"
    client.hset(store.profiles_key, "gaming", json.dumps({"name": "gaming", "version": 3, "mode": "chaos"}))
    client.incr(store.generation_key)
    assert holder.refresh(BASE) == "loaded"
    assert holder.get(BASE).for_channel("lobby").ref == "gaming@2", "the refused version never serves"
    with pytest.raises(ValueError, match="assigned to channels"):
        store.remove("gaming")


# ---------------------------------------------------------------- enforcement


LADDER = Profile(name="ladder", strikes={"half_life_s": 100, "weights": {"review": 1, "block": 2},
                                         "ladder": [{"strikes": 2, "action": "warn"},
                                                    {"strikes": 4, "action": "timeout", "minutes": 10},
                                                    {"strikes": 4.5, "action": "hold"}]},
                 flood={"window_s": 10, "max_messages": 3, "max_repeats": 2, "max_mentions": 2},
                 raid={"window_s": 60, "min_messages": 4, "flagged_share": 0.5, "over_baseline": 2})


def item(i: int, ts: float, decision: str = "block", user: str = "u1", text: str = "x", channel: str = "c") -> Item:
    return Item(f"m{i}", channel, user, ts, CompiledProfile(LADDER, BASE), decision, f"ck{text}", text)


def test_strikes_decay_with_the_half_life() -> None:
    ledger = {b"a": b"2:0.0:0:2:0", b"b": b"2:100.0:1:3:2", b"_last": b"3"}
    assert ledger_total(ledger, 100.0, half_life=100.0) == 3.0  # a's 2 strikes halved in one half-life
    assert parse_strike(ledger[b"b"]) == (1.0, 3.0, 2.0)
    profile = CompiledProfile(LADDER, BASE)
    assert [r.action for r in rungs_reached(profile, 1.99, 2.99, 2.0)] == []  # still there: no second warning
    assert [r.action for r in rungs_reached(profile, 0.5, 2.5, 2.0)] == ["warn"]  # decayed well below: again


async def test_strikes_climb_the_ladder_exactly_once_under_redelivery(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    enforcement = Enforcement(RedisSettings(url=redis_url, key_prefix="e1"), client)
    first = await enforcement.apply([item(1, 1000.0), item(2, 1001.0, "review"), item(3, 1002.0)])
    actions = [[a["action"] for a in o.actions] for o in first.outcomes]
    assert actions == [["warn"], [], ["timeout", "hold"]]  # 2 -> 3 -> 5 (less decay): warn, then timeout and hold
    assert first.outcomes[2].actions[0]["minutes"] == 10
    again = await enforcement.apply([item(2, 1001.0, "review"), item(3, 1002.0)])  # redelivered after a crash
    assert again.outcomes == first.outcomes[1:], "a redelivered message never counts twice"
    held = await enforcement.apply([item(4, 1003.0, "allow")])
    assert held.outcomes[0].hold and held.outcomes[0].reasons[0] == "strikes:hold"
    assert await enforcement.overturn(["m3", "m1", "never-struck"]) == 2
    after = await enforcement.apply([item(5, 1004.0, "allow")])
    assert not after.outcomes[0].hold, "overturned strikes no longer count"
    await client.aclose()


async def test_floods_and_raids(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    enforcement = Enforcement(RedisSettings(url=redis_url, key_prefix="e2"), client)
    burst = [item(i, 2000.0 + i * 0.1, "allow", text=f"hello {i}") for i in range(5)]
    flags = [o.reasons for o in (await enforcement.apply(burst)).outcomes]
    assert flags[:3] == [(), (), ()] and flags[3] == ("flood:rate",)
    repeated = [item(10 + i, 3000.0 + i, "allow", user="u2", text="same") for i in range(3)]
    assert [o.reasons for o in (await enforcement.apply(repeated)).outcomes][-1] == ("flood:repeat",)
    mentions = item(20, 4000.0, "allow", user="u3", text="@a @b @c look")
    assert (await enforcement.apply([mentions])).outcomes[0].flags == ("flood",)
    # a raid: half of a minute's messages flagged, in a channel where nothing was flagged before
    calm = [item(100 + i, 5000.0 + i, "allow", user=f"c{i}", channel="r") for i in range(20)]
    await enforcement.apply(calm)
    raid = [item(200 + i, 5100.0 + i, "block", user=f"r{i}", channel="r") for i in range(6)]
    events = (await enforcement.apply(raid)).events
    assert len(events) == 1 and json.loads(events[0][1])["event"] == "raid" and events[0][0] == "r"
    assert (await enforcement.apply([item(300, 5107.0, "block", user="r9", channel="r")])).events == [], \
        "one event per window"
    await client.aclose()


async def test_redis_down_degrades_to_stateless_decisions() -> None:
    enforcement = Enforcement(RedisSettings(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2))
    result = await enforcement.apply([item(1, 1.0)])
    assert result.degraded and result.outcomes == [result.outcomes[0].__class__()]
    await enforcement.close()


def test_action_records_are_keyed_by_user_and_identical_for_every_copy() -> None:
    result = {"id": "m1", "user": "u1", "channel": "c", "profile": "p@1",
              "actions": [{"action": "timeout", "minutes": 10, "strikes": 4.2}]}
    (key, value), = action_records(result)
    assert key == "u1" and json.loads(value) == {"action": "timeout", "channel": "c", "message_id": "m1",
                                                 "minutes": 10, "profile": "p@1", "strikes": 4.2, "user": "u1"}
    assert action_records(result) == [(key, value)] and action_records({"id": "m2"}) == []
    assert Profiles({}, {}, BASE).for_channel(None).ref == "default@0"


def test_a_profile_file_stands_in_for_default_until_one_is_stored(redis_url: str, tmp_path) -> None:
    from pipeline.profiles import load_profile_file

    path = tmp_path / "base.yaml"
    path.write_text("name: baseline\nblock_terms: [frobnik]\nmode: suggest\n")
    fallback = load_profile_file(path)
    store = ProfileStore(redis_lib.Redis.from_url(redis_url), "fb")
    holder = ProfilesHolder(store, fallback)
    holder.refresh(BASE)
    default = holder.get(BASE).for_channel("anywhere")
    assert default.profile.name == "default" and default.profile.mode == "suggest" and len(default.block_terms) == 1
    store.put(Profile(name="default"))
    holder.refresh(BASE)
    assert holder.get(BASE).for_channel("anywhere").ref == "default@1"  # a stored default wins
    (tmp_path / "bad.yaml").write_text("name: x\nmode: sometimes\n")
    with pytest.raises(ValueError, match="mode"):
        load_profile_file(tmp_path / "bad.yaml")


async def test_channel_mood_is_counted_per_minute_and_read_over_a_window(redis_url: str) -> None:
    from pipeline.mood import channel_mood

    client = aioredis.Redis.from_url(redis_url)
    enforcement = Enforcement(RedisSettings(url=redis_url, key_prefix="mood"), client)
    plain = Profile(name="default")

    def said(i: int, channel: str, sentiment: str, ts: float) -> Item:
        return Item(f"m{i}", channel, "u", ts, CompiledProfile(plain, BASE), "allow", "ck", "x", sentiment)

    now = 10_000.0
    batch = [said(i, "calm", "positive" if i % 4 else "negative", now - 200 + i) for i in range(8)]
    batch += [said(100 + i, "angry", "negative", now - 30) for i in range(3)]
    batch += [said(200, "old", "positive", now - 3000)]  # outside the window
    assert (await enforcement.apply(batch)).outcomes == [Outcome()] * len(batch)  # mood decides nothing
    mood = channel_mood(redis_lib.Redis.from_url(redis_url), "mood", now, window_s=300)
    assert list(mood) == ["angry", "calm"]  # the most recently active first; "old" is not
    assert mood["calm"] == {"messages": 8, "negative": 0.25, "neutral": 0.0, "positive": 0.75}
    assert mood["angry"]["negative"] == 1.0
    # within a second of that flush, counts wait in memory; a flush sends them
    await enforcement.apply([said(300 + i, "calm", "positive", now - 100) for i in range(4)])
    assert channel_mood(redis_lib.Redis.from_url(redis_url), "mood", now, window_s=300)["calm"]["messages"] == 8
    await enforcement.flush_mood(only_if_due=True)  # the worker's timer: not yet due
    assert channel_mood(redis_lib.Redis.from_url(redis_url), "mood", now, window_s=300)["calm"]["messages"] == 8
    await enforcement.flush_mood()
    assert channel_mood(redis_lib.Redis.from_url(redis_url), "mood", now, window_s=300)["calm"]["messages"] == 12
    await client.aclose()
