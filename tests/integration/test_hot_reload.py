"""Rolling a model out to a running worker: promote switches it, a corrupt artifact is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from pipeline.control import announce_models_changed
from pipeline.devstack.childproc import free_port
from pipeline.devstack.embedded import create_topics
from pipeline.settings import RedisSettings
from tests.harness import (
    ROOT,
    WorkerProcess,
    message,
    metric_samples,
    produce,
    read_topic,
    results_by_id,
    wait_for_log,
    wait_http_status,
    worker_env,
)
from tests.tiny_models import build_tiny_artifact

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TEXTS = ["you are a wonderful person", "shut up you idiot", "gg wp everyone", "I will find you"]


def _store(root: Path) -> ModelRegistry:
    registry = ModelRegistry(root / "store")
    for version, seed in (("1", 0), ("2", 1), ("3", 2)):
        build_tiny_artifact(root / "build" / version, seed=seed, formats=("onnx_int8",), version=version)
        registry.add(root / "build" / version, version=version)
    registry.promote("tiny-distilbert@1")
    return registry


def _moderate(env: dict, worker: WorkerProcess, tag: str, seen: int) -> list[dict]:
    """Send one message per text and return their results (``seen`` results are already on the topic)."""
    produce(env["CHATMOD_KAFKA_BOOTSTRAP"], env["CHATMOD_TOPICS_MESSAGES"],
            [message(f"{tag}-{i}", text) for i, text in enumerate(TEXTS)])
    out = read_topic(env["CHATMOD_KAFKA_BOOTSTRAP"], env["CHATMOD_TOPICS_MODERATED"],
                     lambda rs: len(results_by_id(rs)) >= seen + len(TEXTS), 60, worker)
    by_id = results_by_id(out)
    return [by_id[f"{tag}-{i}"][0] for i in range(len(TEXTS))]


def test_promote_switches_a_running_worker_and_a_corrupt_artifact_is_refused(broker, redis_url, topic_prefix,
                                                                            tmp_path):
    registry = _store(tmp_path)
    port = free_port()
    env = worker_env(broker.bootstrap, redis_url, registry.store, topic_prefix, CHATMOD_WORKER_WEB_ENABLED="true",
                     CHATMOD_WORKER_WEB_PORT=str(port), CHATMOD_MODELS_RELOAD_POLL_S="0")  # notices only
    create_topics(broker.bootstrap, {env["CHATMOD_TOPICS_MESSAGES"]: 3})
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        wait_http_status(f"http://127.0.0.1:{port}/ready", 200, 60, worker)
        wait_for_log(worker, "listening for model changes", 1)
        before = _moderate(env, worker, "before", 0)
        assert {r["models"]["toxicity"] for r in before} == {"tiny-distilbert@1"}

        promoted = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "promote", "tiny-distilbert@2"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert promoted.returncode == 0, promoted.stderr
        assert "1 running worker(s) notified" in promoted.stdout
        wait_for_log(worker, '"outcome": "swapped"', 1)
        after = _moderate(env, worker, "after", len(TEXTS))
        assert {r["models"]["toxicity"] for r in after} == {"tiny-distilbert@2"}
        assert [r["toxicity"] for r in after] != [r["toxicity"] for r in before]  # really another model
        samples = metric_samples(wait_http_status(metrics_url, 200, 10, worker).decode())
        assert samples[("chatmod_model_info", frozenset({"task": "toxicity", "ref": "tiny-distilbert@2"}.items()))] == 1
        assert samples[("chatmod_model_reloads_total", frozenset({"outcome": "swapped"}.items()))] == 1

        # A broken rollout: v3 is promoted, then its weights are damaged before the worker loads them.
        registry.promote("tiny-distilbert@3")
        _, folder = registry.get("tiny-distilbert@3")
        weights = folder / "model.int8.onnx"
        weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)
        redis = RedisSettings(url=redis_url, key_prefix=env["CHATMOD_REDIS_KEY_PREFIX"])
        assert announce_models_changed(redis, {"toxicity": "tiny-distilbert@3"}, "test: broken rollout") == 1
        wait_for_log(worker, '"outcome": "refused"', 1)
        assert "checksum" in worker.log_path.read_text()
        still = _moderate(env, worker, "still", 2 * len(TEXTS))
        assert {r["models"]["toxicity"] for r in still} == {"tiny-distilbert@2"}  # the previous model serves on
        samples = metric_samples(wait_http_status(metrics_url, 200, 10, worker).decode())
        assert samples[("chatmod_model_reloads_total", frozenset({"outcome": "refused"}.items()))] == 1
        assert samples[("chatmod_model_info", frozenset({"task": "toxicity", "ref": "tiny-distilbert@2"}.items()))] == 1
