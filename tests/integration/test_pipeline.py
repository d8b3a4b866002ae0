"""The pipeline end to end on a real tansu broker, a real Redis and a real (tiny) model."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.devstack.embedded import create_topics
from pipeline.schemas import ModerationResult
from tests.harness import WorkerProcess, message, produce, read_topic, results_by_id, worker_env

pytestmark = pytest.mark.integration

TEXTS = ["you are a wonderful person", "shut up you idiot", "gg wp everyone", "I will find you",
         "what a lovely day", "this is garbage", "lol", "nobody likes you loser"]


def _start(broker, redis_url, tiny_store, topic_prefix, tmp_path, **extra):
    env = worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix, **extra)
    create_topics(broker.bootstrap, {env["CHATMOD_TOPICS_MESSAGES"]: 3})
    return env, WorkerProcess(env, tmp_path / "worker.log")


def test_every_message_gets_exactly_one_result_and_repeats_hit_the_cache(broker, redis_url, tiny_store,
                                                                        topic_prefix, tmp_path):
    env, worker = _start(broker, redis_url, tiny_store, topic_prefix, tmp_path)
    first = [message(i, f"{TEXTS[i % len(TEXTS)]} #{i % 60}") for i in range(300)]
    with worker:
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], first)
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= 300, 90, worker)
        by_id = results_by_id(out)
        assert sorted(by_id, key=int) == [str(i) for i in range(300)], worker.log_tail()  # 300 in, 300 out, 0 lost
        # Texts of messages 0..99 again under new ids: served from the cache.
        repeats = [message(1000 + i, f"{TEXTS[i % len(TEXTS)]} #{i % 60}") for i in range(100)]
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], repeats)
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= 400, 60, worker)
    by_id = results_by_id(out)
    assert len(by_id) == 400
    for values in by_id.values():
        assert all(v == values[0] for v in values), "duplicates must carry identical content"
        ModerationResult.model_validate(values[0])
    second = [by_id[str(1000 + i)][0] for i in range(100)]
    assert all(r["cached"] for r in second), "repeated texts must be served from the cache"
    for i, r in enumerate(second):  # message 1000+i repeats the text of message i
        original = by_id[str(i)][0]
        assert r["toxicity"] == original["toxicity"] and r["sentiment"] == original["sentiment"]
    assert set(second[0]["models"]) == {"toxicity", "sentiment"}
    flagged = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_FLAGGED"], lambda rs: False, 3)
    expected = {k for k, v in by_id.items() if v[0]["decision"] != "allow"}
    assert {json.loads(r.value)["id"] for r in flagged} == expected
    texts = {m["id"]: m["text"] for m in map(json.loads, first + repeats)}
    for record in flagged:  # the moderated result plus the message's text, for moderators
        value = json.loads(record.value)
        assert value.pop("text") == texts[value["id"]] and value == by_id[value["id"]][0]


def test_malformed_input_goes_to_the_dlq_and_good_messages_around_it_are_moderated(
        broker, redis_url, tiny_store, topic_prefix, tmp_path):
    env, worker = _start(broker, redis_url, tiny_store, topic_prefix, tmp_path,
                         CHATMOD_BATCHING_MAX_MESSAGE_BYTES="4096")
    bad = {
        b"{not json": "not_json",
        json.dumps({"text": "no id"}).encode(): "schema",
        json.dumps({"id": 7, "text": "int id"}).encode(): "schema",
        json.dumps({"id": "x", "text": ["not", "a", "string"]}).encode(): "schema",
        b'{"id": "u", "text": "\xff\xfe broken"}': "not_utf8",
        json.dumps({"id": "big", "text": "a" * 10_000}).encode(): "too_large",
        b"[1, 2, 3]": "not_object",
    }
    values, good_ids = [], []
    for n, raw in enumerate(bad):
        values.append(message(f"good-{n}", TEXTS[n % len(TEXTS)]))
        good_ids.append(f"good-{n}")
        values.append(raw)
    long_text = "very long but fine " * 100  # under the byte limit, over the model's length: truncated
    values.append(message("long", long_text))
    good_ids.append("long")
    with worker:
        # one partition so that source offsets are predictable
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], values, keys=[b"k"] * len(values))
        dlq = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_DLQ"], lambda rs: len(rs) >= len(bad), 60, worker)
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= len(good_ids), 30, worker)
    assert sorted(results_by_id(out)) == sorted(good_ids)
    assert len(dlq) == len(bad)
    for record in dlq:
        headers = {k: v.decode() for k, v in record.headers}
        assert record.value in bad, "the raw value travels verbatim"
        assert headers["chatmod.error.kind"] == bad[record.value]
        assert headers["chatmod.error.reason"]
        assert headers["chatmod.source.topic"] == env["CHATMOD_TOPICS_MESSAGES"]
        assert int(headers["chatmod.source.offset"]) >= 0


def test_worker_killed_mid_stream_and_restarted_loses_nothing(broker, redis_url, tiny_store, topic_prefix,
                                                             tmp_path):
    env, worker = _start(broker, redis_url, tiny_store, topic_prefix, tmp_path)
    total = 3000
    produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"],
            [message(i, f"message number {i} {TEXTS[i % len(TEXTS)]}") for i in range(total)])
    worker.start()
    read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: len(rs) >= 300, 90, worker)
    worker.kill()  # no chance to commit or flush anything
    time.sleep(1)
    restarted = WorkerProcess(env, tmp_path / "worker2.log")
    with restarted:
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= total, 150, restarted)
    by_id = results_by_id(out)
    missing = set(map(str, range(total))) - set(by_id)
    assert not missing, f"{len(missing)} lost; log:\n{restarted.log_tail()}"
    for values in by_id.values():
        differ = {k: [v.get(k) for v in values] for k in values[0] if any(v.get(k) != values[0][k] for v in values)}
        assert not differ, f"a redelivered message must get the identical result; differing: {differ}"


def test_redis_down_keeps_moderating_uncached_then_reuses_the_cache(broker, tiny_store, topic_prefix, tmp_path):
    from pipeline.devstack.embedded import EmbeddedRedis

    with EmbeddedRedis() as redis_server:
        env, worker = _start(broker, redis_server.url, tiny_store, topic_prefix, tmp_path,
                             CHATMOD_REDIS_RETRY_INTERVAL_S="0.5")
        topic_in, topic_out = env["CHATMOD_TOPICS_MESSAGES"], env["CHATMOD_TOPICS_MODERATED"]
        with worker:
            produce(broker.bootstrap, topic_in, [message(i, f"before {i % 20}") for i in range(100)])
            read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 100, 90, worker)
            redis_server.stop()
            # texts the worker has not seen: with Redis down every one needs the model (recently scored
            # texts would still come from the worker's own memory)
            produce(broker.bootstrap, topic_in, [message(100 + i, f"during the outage {i}") for i in range(100)])
            out = read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 200, 60, worker)
            down = [results_by_id(out)[str(100 + i)][0] for i in range(100)]
            assert not any(r["cached"] for r in down), "with Redis down nothing can come from the cache"
            redis_server.start()  # same port, empty: the worker reconnects and fills it again
            time.sleep(1.0)
            produce(broker.bootstrap, topic_in, [message(200 + i, f"after {i % 10}") for i in range(50)])
            read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 250, 60, worker)
            produce(broker.bootstrap, topic_in, [message(300 + i, f"after {i % 10}") for i in range(50)])
            out = read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 300, 60, worker)
            import redis as redis_lib

            # a batch's cache write follows its publish: the last batch's keys may land just after its results
            client, deadline = redis_lib.Redis.from_url(redis_server.url), time.monotonic() + 10
            while len(keys := client.keys(f"{env['CHATMOD_REDIS_KEY_PREFIX']}*")) < 100 and time.monotonic() < deadline:
                time.sleep(0.2)
        by_id = results_by_id(out)
        assert len(by_id) == 300, worker.log_tail()
        assert all(by_id[str(300 + i)][0]["cached"] for i in range(50)), "repeats are served without the model"
        assert len(keys) >= 100, "scores and results are written to Redis again once it is back"
        log = worker.log_path.read_text()
        assert "unavailable" in log.lower() or "down" in log.lower(), "the outage must be logged"


def test_status_reports_topics_offsets_models_and_cache(broker, redis_url, tiny_store, topic_prefix, tmp_path):
    import os
    import subprocess
    import sys

    env, worker = _start(broker, redis_url, tiny_store, topic_prefix, tmp_path)
    with worker:
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [message(i, f"status {i}") for i in range(40)])
        read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: len(results_by_id(rs)) >= 40, 60,
                   worker)
        time.sleep(2.5)  # Faust commits acked offsets every second
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--json"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["topics"][env["CHATMOD_TOPICS_MESSAGES"]] == 3
    assert sum(p["committed"] or 0 for p in st["partitions"]) == 40, "every consumed offset is committed"
    assert st["broker"] == "tansu" and st["total_lag"] is None, "tansu's end offsets are not trusted"
    assert st["models"]["toxicity"] == st["models"]["sentiment"] and "@" in st["models"]["toxicity"]
    assert st["cache_keys"] >= 80, "a content entry and a per-message entry for each of 40 texts"


def test_results_point_at_the_toxic_word_as_written_even_when_served_from_the_cache(
        broker, redis_url, tiny_store, topic_prefix, tmp_path):
    env, worker = _start(broker, redis_url, tiny_store, topic_prefix, tmp_path)
    # one text to the model, three ways of writing it: the second and third are served from the cache
    written = ["shut up you 1d10t", "shut   up you １ｄ１０ｔ", "shut up\u200b you 1d10t"]
    with worker:
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [message(0, written[0])])
        read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: len(rs) >= 1, 60, worker)
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [message(i, t) for i, t in enumerate(written[1:], 1)])
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= 3, 60, worker)
    by_id = {k: v[0] for k, v in results_by_id(out).items()}
    assert [by_id[str(i)]["cached"] for i in range(3)] == [False, True, True]
    for i, text in enumerate(written):
        spans = by_id[str(i)]["spans"]
        assert [text[s["start"]:s["end"]] for s in spans] == [text.split()[-1]], (text, spans)
        assert spans[0]["label"] in by_id[str(i)]["toxicity"]
