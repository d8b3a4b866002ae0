"""Shadow mode: a candidate runs beside the serving model on live traffic and only shows up in metrics."""

from __future__ import annotations

import pytest

from pipeline.devstack.childproc import free_port
from pipeline.devstack.embedded import create_topics
from tests.harness import (
    WorkerProcess,
    message,
    metric_samples,
    produce,
    read_topic,
    results_by_id,
    wait_http_status,
    worker_env,
)
from tests.integration.test_hot_reload import _store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_shadow_candidate_is_compared_on_live_traffic_and_never_decides(broker, redis_url, topic_prefix, tmp_path):
    registry = _store(tmp_path)  # tiny-distilbert@1 current, @2 and @3 stored
    port = free_port()
    env = worker_env(broker.bootstrap, redis_url, registry.store, topic_prefix, CHATMOD_WORKER_WEB_ENABLED="true",
                     CHATMOD_WORKER_WEB_PORT=str(port), CHATMOD_MODELS_SHADOW="tiny-distilbert@2")
    create_topics(broker.bootstrap, {env["CHATMOD_TOPICS_MESSAGES"]: 3})
    n = 120
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        wait_http_status(f"http://127.0.0.1:{port}/ready", 200, 60, worker)
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [message(i, f"shadow text {i}") for i in range(n)])
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: len(results_by_id(rs)) >= n,
                         60, worker)
        samples = metric_samples(wait_http_status(f"http://127.0.0.1:{port}/metrics", 200, 10, worker).decode())
    results = [v[0] for v in results_by_id(out).values()]
    assert len(results) == n and {r["models"]["toxicity"] for r in results} == {"tiny-distilbert@1"}
    assert samples[("chatmod_shadow_compared_total", frozenset())] == n
    for task in ("toxicity", "sentiment"):
        agreements = samples[("chatmod_shadow_agreements_total", frozenset({"task": task}.items()))]
        assert 0 <= agreements <= n
        assert samples[("chatmod_shadow_score_drift_count", frozenset({"task": task}.items()))] == n
        assert samples[("chatmod_shadow_model_info", frozenset({"task": task, "ref": "tiny-distilbert@2"}.items()))] == 1
    # two different random models: their scores differ, so the drift is measured, not zero
    assert samples[("chatmod_shadow_score_drift_sum", frozenset({"task": "toxicity"}.items()))] > 0
