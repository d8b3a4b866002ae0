"""``chatmod bench`` end to end on a tiny model: every message measured, repeats served from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bench import policy_profile_file, render, run_bench

pytestmark = pytest.mark.integration


def test_end_to_end_bench_measures_every_message(tiny_store: Path, tmp_path: Path) -> None:
    from rich.console import Console

    profile, terms_only = policy_profile_file(tmp_path, 500), policy_profile_file(tmp_path, 500, state=False)
    report = run_bench({"e2e"}, tiny_store, n_model=0, n_e2e=400, threads=1, batch_size=32, max_batch=32,
                       latency_rate=100.0, seed=5, say=lambda _: None, progress=None, latency_seconds=3.0,
                       worker_env={"CHATMOD_KAFKA_FETCH_MAX_WAIT_MS": "50"},
                       compare=["CHATMOD_MODELS_EXPLAIN=off", f"CHATMOD_POLICY_DEFAULT_PROFILE={terms_only}",
                                f"CHATMOD_POLICY_DEFAULT_PROFILE={profile}"])
    assert report["end_to_end"]["worker_settings"] == {"CHATMOD_KAFKA_FETCH_MAX_WAIT_MS": "50"}
    runs = {r["workload"]: r for r in report["end_to_end"]["runs"]}
    assert set(runs) == {"unique", "50% repeats", "fixed load", "unique, models_explain=off",
                         "unique, profile: 500 terms", "unique, profile: 500 terms + strikes"}
    off = runs["unique, models_explain=off"]  # the same texts on a worker without explanations, side by side
    assert off["messages"] == runs["unique"]["messages"] and off["cache_hit_rate"] == 0.0
    assert all(r["lost"] == 0 and r["results"] == r["messages"] for r in runs.values())
    assert runs["unique"]["cache_hit_rate"] == 0.0  # each workload starts from an empty cache
    # the first 100 are fresh, and repeats within one batch are deduped rather than served from the cache
    assert 0.25 < runs["50% repeats"]["cache_hit_rate"] <= 0.4
    assert runs["fixed load"]["messages"] == 300 and runs["fixed load"]["offered_msgs_per_s"] == 100.0
    assert 0 < runs["fixed load"]["latency_p50_ms"] <= runs["fixed load"]["latency_p99_ms"]
    for r in runs.values():  # the worker's share of the latency: produced -> result built, before publishing
        assert 0 < r["extra"]["worker_latency_p50_ms"] <= r["latency_p50_ms"]
        cpu = r["extra"]["cpu_ms_per_msg"]  # where the machine's time went, per process
        assert set(cpu) == {"worker", "broker", "redis", "load generator"}
        assert cpu["worker"] > 0 and all(v >= 0 for v in cpu.values())
    assert report["end_to_end"]["worker_memory"]["peak_rss_mb"] > 50
    assert {t["target"] for t in report["targets"]} >= {"nothing lost", "worker peak RSS <= 600 MB",
                                                          "explanations on: >= 90% of the unique throughput with them off",
                                                          "profile: 500 terms: >= 95% of the unique throughput without",
                                                          "profile: 500 terms + strikes: share of the unique throughput "
                                                          "without (reported)"}
    console = Console(file=open(tmp_path / "out.txt", "w"), width=160)  # noqa: SIM115
    render(json.loads(json.dumps(report)), console)  # what the CLI prints, from what it writes
    console.file.close()
    printed = (tmp_path / "out.txt").read_text()
    assert "fixed load" in printed and "machine time per message" in printed
