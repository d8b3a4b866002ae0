"""`chatmod replay` re-scores a stored input range and confirms the decisions published for it, and
names (by id, partition and offset) a published result that the model would not give."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.devstack.embedded import create_topics
from tests.harness import ROOT, WorkerProcess, message, produce, read_topic, results_by_id, worker_env

pytestmark = pytest.mark.integration

TEXTS = ["you are a wonderful person", "shut up you idiot", "gg wp everyone", "I will find you",
         "what a lovely day", "this is garbage", "lol", "nobody likes you loser"]


def _replay(env: dict, tmp_path, *args: str) -> tuple[int, dict]:
    report = tmp_path / "replay.json"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "replay", *args, "--out", str(report)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert report.is_file(), done.stdout + done.stderr
    return done.returncode, json.loads(report.read_text())


def test_replay_confirms_every_published_decision_and_names_a_forged_one(broker, redis_url, tiny_store,
                                                                         topic_prefix, tmp_path):
    env = worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix)
    topic_in, topic_out = env["CHATMOD_TOPICS_MESSAGES"], env["CHATMOD_TOPICS_MODERATED"]
    create_topics(broker.bootstrap, {topic_in: 2, topic_out: 3})
    # A forged result published after the input and before the worker's own result: the first copy of m7
    # that an audit will find.
    forged = {"id": "m7", "channel": "test", "user": "um7", "decision": "block",
              "toxicity": {k: 0.99 for k in ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")},
              "sentiment": {"negative": 1.0, "neutral": 0.0, "positive": 0.0}, "flags": [],
              "models": {"toxicity": "tiny-distilbert@1", "sentiment": "tiny-distilbert@1"},
              "cached": False, "latency_ms": 1.0}
    values = [message(f"m{i}", f"{TEXTS[i % len(TEXTS)]} {i}") for i in range(120)] + [b"{not json"]
    produce(broker.bootstrap, topic_in, values, [f"k{i % 10}".encode() for i in range(len(values))])
    produce(broker.bootstrap, topic_out, [json.dumps(forged).encode()], [b"m7"])  # same key: same partition
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 120, 90, worker)

    code, report = _replay(env, tmp_path, "--from-offset", "0")
    assert report["inputs"] == 121 and report["dead_letters"] == 1 and report["missing_results"] == 0
    assert report["compared"] == 120 and report["identical"] == 119, report["differences"]
    assert report["byte_identical"] == 119, "with the delivery fields carried over, a result is the same bytes"
    assert code == 1 and not report["ok"]
    (diff,) = report["differences"]
    assert diff["id"] == "m7" and "toxicity" in diff["fields"] and diff["decision"][0] == "block"
    assert isinstance(diff["partition"], int) and isinstance(diff["offset"], int)

    # A range: one partition, from an offset on, holds only the worker's own results.
    partition, offset = diff["partition"], diff["offset"] + 1
    code, report = _replay(env, tmp_path, "--from-offset", str(offset), "--partition", str(partition))
    assert code == 0 and report["ok"] and report["partitions"] == [partition]
    assert 0 < report["compared"] < 120 and report["differing"] == 0
