"""Retraining from moderator feedback, end to end: feedback over Kafka into the store, `chatmod train
retrain`, the gate, promotion, and a running worker whose results change; a bad candidate is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from pipeline.devstack.embedded import create_topics
from pipeline.feedback import FeedbackStore
from tests.harness import (
    ROOT,
    WorkerProcess,
    message,
    produce,
    read_topic,
    results_by_id,
    wait_for_log,
    worker_env,
)
from tests.tiny_models import contract_heads, save_tiny_hf_model

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

INSULTS = ["idiot", "moron", "loser", "clown", "fool", "jerk", "dork", "creep"]
PRAISE = ["legend", "star", "hero", "champ", "genius", "gem", "pro", "sweetheart"]
TEMPLATES = ["you are a {}", "what a {} you are", "such a {} lol", "{} over here"]  # the word decides, not the frame
KIND = ["have a great day", "gg well played", "nice stream today", "thanks for the help"]
NEW_SLUR = "zorgle"  # a word the first model learned as harmless: the systematic error feedback corrects


def _labels(toxic: int) -> dict[str, int]:
    """All six labels, so that none is left untrained: only toxic and insult are ever 1 here."""
    return {"toxic": toxic, "severe_toxic": 0, "obscene": 0, "threat": 0, "insult": toxic, "identity_hate": 0}


def _base_examples() -> list[dict]:
    rows = []
    for i in range(320):
        frame = TEMPLATES[(i // 3) % len(TEMPLATES)]
        if i % 3 == 0:
            rows.append({"text": frame.format(INSULTS[i % len(INSULTS)]), "labels": _labels(1)})
        elif i % 3 == 1:
            rows.append({"text": frame.format(PRAISE[i % len(PRAISE)]), "labels": _labels(0)})
        else:
            rows.append({"text": f"{KIND[i % len(KIND)]} {i}", "labels": _labels(0)})
    return rows


def _first_artifact(root: Path, base: list[dict]) -> Path:
    """A tiny model trained on the base data plus '<slur>' texts labeled harmless, as an artifact."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.distill import TrainConfig, train
    from training.export import build_artifact
    from training.retrain import example_from_labels

    hf = save_tiny_hf_model(root / "hf", seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    mistaken = [{"text": TEMPLATES[i % len(TEMPLATES)].format(NEW_SLUR), "labels": _labels(0)} for i in range(60)]
    examples = [example_from_labels(r["text"], r["labels"], "base") for r in base + mistaken]
    heads = contract_heads(["toxicity", "sentiment"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers whatever ran before in this process (retrain runs with 1 too)
    try:
        train(model, heads, examples, tokenizer, TrainConfig(epochs=25, lr=3e-3, batch_size=16, seed=1,
                                                             log_every=1000))
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(root / "trained")
    tokenizer.save_pretrained(root / "trained")
    build_artifact(root / "trained", root / "artifact", name="tiny-chat", version="1", heads=heads,
                   max_length=32, formats=("onnx",))  # fp32: int8 rounding is coarse at a width of 32
    return root / "artifact"


@pytest.fixture(scope="module")
def first_artifact(tmp_path_factory) -> Path:
    """Trained once for the module: every test registers it in a store of its own."""
    return _first_artifact(tmp_path_factory.mktemp("first-model"), _base_examples())


@pytest.fixture
def setup(broker, redis_url, topic_prefix, tmp_path, first_artifact):
    base = _base_examples()
    (tmp_path / "base.jsonl").write_text("\n".join(json.dumps(r) for r in base) + "\n")
    registry = ModelRegistry(tmp_path / "store")
    registry.add(first_artifact, version="1")
    registry.promote("tiny-chat@1")
    env = worker_env(broker.bootstrap, redis_url, registry.store, topic_prefix, CHATMOD_MODELS_RELOAD_POLL_S="0",
                     CHATMOD_FEEDBACK_STORE=str(tmp_path / "feedback"))
    create_topics(broker.bootstrap, {env["CHATMOD_TOPICS_MESSAGES"]: 3, env["CHATMOD_TOPICS_FEEDBACK"]: 3})
    return env, registry, tmp_path


def _retrain(env: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATMOD_")} | env | {"COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "retrain", "--task", "toxicity",
                           # a tiny random model cannot be read by a moderator: no functional gate for it
                           "--base-data", str(tmp_path / "base.jsonl"), "--out", str(tmp_path / "run"),
                           "--threads", "1", "--no-functional-gate", *extra], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=240)


def _feedback(n: int) -> list[bytes]:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        ts = (start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")
        text = f"{TEMPLATES[i % len(TEMPLATES)].format(NEW_SLUR)} #{i}"
        out.append(json.dumps({"id": f"fb-{i}", "text": text, "labels": {"toxic": 1, "insult": 1},
                               "moderator": "mod-1", "ts": ts}).encode())
    return out


def _moderate(env: dict, worker: WorkerProcess, ids_texts: list[tuple[str, str]], seen: int) -> dict[str, dict]:
    produce(env["CHATMOD_KAFKA_BOOTSTRAP"], env["CHATMOD_TOPICS_MESSAGES"], [message(i, t) for i, t in ids_texts])
    out = read_topic(env["CHATMOD_KAFKA_BOOTSTRAP"], env["CHATMOD_TOPICS_MODERATED"],
                     lambda rs: len(results_by_id(rs)) >= seen + len(ids_texts), 60, worker)
    return {k: v[0] for k, v in results_by_id(out).items()}


def test_feedback_fixes_a_systematic_error_passes_the_gate_and_a_running_worker_switches(setup):
    env, registry, tmp_path = setup
    probes = [f"you are a {NEW_SLUR}", f"such a {NEW_SLUR} lol", "what a idiot you are", "you are a legend"]
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        before = _moderate(env, worker, [(f"before-{i}", t) for i, t in enumerate(probes)], 0)
        assert before["before-0"]["decision"] == "allow", "the first model must make the error the test fixes"
        assert before["before-2"]["decision"] != "allow"

        bad_records = [b"{not json", json.dumps({"id": "fb-x", "text": "t", "labels": {"rude": 1},
                                                 "ts": "2026-12-01T00:00:00Z"}).encode()]
        produce(env["CHATMOD_KAFKA_BOOTSTRAP"], env["CHATMOD_TOPICS_FEEDBACK"], _feedback(40) + bad_records)
        store = FeedbackStore(Path(env["CHATMOD_FEEDBACK_STORE"]))
        deadline = time.monotonic() + 60
        while len(store.read()) < 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(store.read()) == 40, worker.log_tail()
        dead = read_topic(env["CHATMOD_KAFKA_BOOTSTRAP"], env["CHATMOD_TOPICS_DLQ"], lambda rs: len(rs) >= 2, 30)
        assert {r.value for r in dead} == set(bad_records), "malformed feedback goes to the DLQ"

        done = _retrain(env, tmp_path, "--epochs", "20", "--lr", "5e-4", "--feedback-weight", "6")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "gate passed" in done.stdout and "1 running worker(s) notified" in done.stdout, done.stdout
        report = json.loads((tmp_path / "run" / "retrain_report.json").read_text())
        comparison = report["comparison"]
        assert comparison["candidate"]["feedback_slice_accuracy"] > comparison["current"]["feedback_slice_accuracy"]
        assert registry.current("toxicity") == report["candidate"] == "tiny-chat@2"
        assert registry.current("sentiment") == "tiny-chat@1", "only the retrained task is promoted"

        wait_for_log(worker, '"outcome": "swapped"')
        after = _moderate(env, worker, [(f"after-{i}", t) for i, t in enumerate(probes)], len(probes))
    assert after["after-0"]["models"]["toxicity"] == "tiny-chat@2"
    assert after["after-0"]["decision"] != "allow" and after["after-1"]["decision"] != "allow", "the error is fixed"
    assert after["after-2"]["decision"] != "allow" and after["after-3"]["decision"] == "allow", "and nothing else broke"
    assert len(after) == 2 * len(probes), "every message got exactly one result"


def test_a_bad_candidate_is_refused_and_stays_a_candidate(setup):
    env, registry, tmp_path = setup
    feedback = FeedbackStore(Path(env["CHATMOD_FEEDBACK_STORE"]))
    from pipeline.schemas import decode_feedback

    feedback.append([decode_feedback(raw, 65536) for raw in _feedback(40)])
    done = _retrain(env, tmp_path, "--epochs", "3", "--lr", "3.0")  # a learning rate that wrecks the model
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stays a candidate" in done.stdout, done.stdout
    report = json.loads((tmp_path / "run" / "retrain_report.json").read_text())
    assert not report["gate"]["passed"] and report["gate"]["reasons"] and not report["promoted"]
    assert registry.current("toxicity") == "tiny-chat@1", "the current model is untouched"
    assert report["candidate"] in registry.candidates()
    card = (registry.get(report["candidate"])[1] / "MODEL_CARD.md").read_text()
    assert "refused" in card and "feedback slice accuracy" in card
