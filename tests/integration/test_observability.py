"""A real worker's /health, /ready and /metrics, checked against what was actually sent through it."""

from __future__ import annotations

import json
import time

import pytest

from models.registry import ModelRegistry
from pipeline.devstack.childproc import free_port
from pipeline.devstack.embedded import create_topics
from tests.harness import (
    WorkerProcess,
    http_get,
    message,
    metric_samples,
    produce,
    read_topic,
    results_by_id,
    wait_http_status,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MALFORMED = {b"{not json": "not_json", b'{"text": "no id"}': "schema", b"[1, 2, 3]": "not_object"}


def test_metrics_count_what_was_sent_and_health_and_ready_answer(broker, redis_url, tiny_store, topic_prefix,
                                                                 tmp_path):
    port = free_port()
    env = worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix, CHATMOD_WORKER_WEB_ENABLED="true",
                     CHATMOD_WORKER_WEB_PORT=str(port), CHATMOD_WORKER_WEB_HOST="127.0.0.1")
    create_topics(broker.bootstrap, {env["CHATMOD_TOPICS_MESSAGES"]: 3})
    base = f"http://127.0.0.1:{port}"
    good = [message(i, f"observable message {i % 40}") for i in range(50)]  # 10 repeated texts
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        wait_http_status(f"{base}/health", 200, 30, worker)
        ready = json.loads(wait_http_status(f"{base}/ready", 200, 30, worker))
        assert ready["ready"] and ready["models_loaded"] and ready["consuming"]

        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], good[:25] + list(MALFORMED) + good[25:])
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= 50, 30, worker)
        assert len(results_by_id(out)) == 50, worker.log_tail()
        deadline = time.monotonic() + 10  # the counters move right after the batch's outputs are confirmed
        while True:
            status, body = http_get(f"{base}/metrics")
            metrics = metric_samples(body.decode())
            if metrics.get(("chatmod_messages_in_total", frozenset())) == 53 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert http_get(f"{base}/health")[0] == 200
        assert http_get(f"{base}/ready")[0] == 200

    assert status == 200

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, frozenset(labels.items())), 0.0)

    assert value("chatmod_messages_in_total") == 53
    assert value("chatmod_results_out_total") == 50
    assert {kind: value("chatmod_dead_letters_total", kind=kind) for kind in MALFORMED.values()} == {
        "not_json": 1, "schema": 1, "not_object": 1}
    assert value("chatmod_cache_hits_total") + value("chatmod_cache_misses_total") == 50
    assert sum(value("chatmod_decisions_total", decision=d) for d in ("allow", "review", "block")) == 50
    flagged = {r["id"] for rs in results_by_id(out).values() for r in rs if r["decision"] != "allow"}
    assert value("chatmod_flagged_total") == len(flagged)
    assert value("chatmod_end_to_end_latency_seconds_count") == 50
    assert value("chatmod_batch_size_sum") == 53
    assert value("chatmod_model_latency_seconds_count") >= 1
    registry = ModelRegistry(tiny_store)
    for task in ("toxicity", "sentiment"):
        assert value("chatmod_model_info", task=task, ref=registry.current(task)) == 1
    assert value("chatmod_worker_ready") == 1
    assert value("chatmod_redis_available") == 1
