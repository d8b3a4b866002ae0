"""Worker metrics and the /ready contract, in process (the integration test checks them on a real worker)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.registry import ModelRegistry
from pipeline.metrics import Metrics
from pipeline.moderation import BatchStats
from pipeline.serving import ServingHolder
from pipeline.settings import Settings

pytestmark = pytest.mark.unit


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples}


def test_a_batch_is_counted_once_per_message_result_and_dead_letter():
    metrics = Metrics()
    stats = BatchStats(received=10, results=8, dead_letters=2, cache_hits=3, replayed=1, classified=4,
                       flagged=2,
                       decisions={"allow": 6, "review": 1, "block": 1}, model_seconds=0.02,
                       dead_letter_kinds={"not_json": 1, "schema": 1}, latencies_ms=[12.0] * 8)
    metrics.observe_batch(stats, stats.latencies_ms)
    metrics.observe_batch(BatchStats(received=1, results=1, latencies_ms=[5.0],
                                     decisions={"allow": 1, "review": 0, "block": 0}))
    got = _samples(metrics)
    assert got[("chatmod_messages_in_total", frozenset())] == 11
    assert got[("chatmod_results_out_total", frozenset())] == 9
    assert got[("chatmod_dead_letters_total", frozenset({("kind", "not_json")}))] == 1
    assert got[("chatmod_dead_letters_total", frozenset({("kind", "schema")}))] == 1
    assert got[("chatmod_cache_hits_total", frozenset())] == 4  # 3 from cached scores + 1 replayed result
    assert got[("chatmod_cache_misses_total", frozenset())] == 5
    assert got[("chatmod_decisions_total", frozenset({("decision", "allow")}))] == 7
    assert got[("chatmod_flagged_total", frozenset())] == 2
    assert got[("chatmod_end_to_end_latency_seconds_count", frozenset())] == 9
    assert got[("chatmod_end_to_end_latency_seconds_sum", frozenset())] == pytest.approx(0.101)
    assert got[("chatmod_model_latency_seconds_count", frozenset())] == 1  # the second batch ran no model
    assert got[("chatmod_batch_size_sum", frozenset())] == 11


def test_metrics_live_in_their_own_registry():
    first, second = Metrics(), Metrics()  # no "Duplicated timeseries" error: not the global registry
    first.messages_in.inc(3)
    assert _samples(second)[("chatmod_messages_in_total", frozenset())] == 0


def test_model_info_follows_a_hot_reload(tiny_store: Path, tmp_path: Path):
    store = Path(shutil.copytree(tiny_store, tmp_path / "store"))
    settings = Settings(models={"store": store, "threads": 1})
    holder = ServingHolder(settings)
    metrics = Metrics()
    metrics.set_models(holder.current.refs)
    holder.on_reload(metrics.set_models)
    registry = ModelRegistry(store)
    old = registry.current("toxicity")
    _, old_path = registry.get(old)
    new = registry.add(old_path).ref  # the same weights as the next version
    registry.promote(new)

    assert holder.reload() == "swapped"
    info = {dict(labels)["task"]: dict(labels)["ref"] for (name, labels), value in _samples(metrics).items()
            if name == "chatmod_model_info" and value == 1}
    assert info == {"toxicity": new, "sentiment": new} and new != old
    assert not [k for k in _samples(metrics) if k[0] == "chatmod_model_info" and ("ref", old) in k[1]]


async def test_ready_answers_503_until_models_are_loaded_and_partitions_assigned():
    from pipeline.app import create_app

    app = create_app(Settings())
    state = app.chatmod_state
    ready_view = app.web.views["/ready"]

    async def status() -> tuple[int, dict]:
        response = await ready_view.get(None)
        return response.status, json.loads(response.body)

    assert (await status())[0] == 503
    state.models_loaded = True
    assert (await status())[0] == 503  # loaded, but the consumer group has not assigned partitions yet
    state.consuming = True
    code, body = await status()
    assert code == 200 and body["ready"]
