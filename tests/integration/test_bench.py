"""``chatmod bench`` end to end on a tiny model: every message measured, repeats served from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.devstack.bench import E2EPlan, run_bench
from pipeline.devstack.bench_load import LoadPoint
from pipeline.devstack.bench_report import latency_plot, render
from pipeline.devstack.bench_workload import policy_profile_file

pytestmark = pytest.mark.integration


def test_end_to_end_bench_measures_every_message(tiny_store: Path, tmp_path: Path) -> None:
    from rich.console import Console

    profile = policy_profile_file(tmp_path, 500, state=False)
    plan = E2EPlan(messages=400, threads=1, max_batch=32, seed=5,
                   worker_env={"CHATMOD_KAFKA_FETCH_MAX_WAIT_MS": "50"},
                   compare=["CHATMOD_MODELS_EXPLAIN=off", f"CHATMOD_POLICY_DEFAULT_PROFILE={profile}"],
                   capacity_start=100.0, capacity_seconds=2.0, capacity_points=3, curve_shares=(0.5,), raid_distinct=20, peer_messages=60, console_tabs=2,
                   console_rate=150.0, console_seconds=1.0)
    report = run_bench({"e2e"}, tiny_store, plan, n_model=0, batch_size=32, say=lambda _: None, progress=None)
    e2e = report["end_to_end"]
    assert e2e["worker_settings"] == {"CHATMOD_KAFKA_FETCH_MAX_WAIT_MS": "50"}
    runs = {r["workload"]: r for r in e2e["runs"]}
    assert set(runs) == {"unique", "50% repeats", "raid: 20 texts", "unique, models_explain=off",
                         "unique, profile: 500 terms", "unique at 150/s", "unique at 150/s, console + 2 tabs",
                         "reference: Faust, no model",
                         "peer: kafka-python + pipeline"}
    assert e2e["console_tabs"]["errors"] == [] and e2e["console_tabs"]["events"] > 0  # the pages were live
    off = runs["unique, models_explain=off"]  # the same texts on a worker without explanations, side by side
    assert off["messages"] == runs["unique"]["messages"] and off["cache_hit_rate"] == 0.0
    assert all(r["lost"] == 0 and r["results"] == r["messages"] for r in runs.values())
    assert runs["unique"]["cache_hit_rate"] == 0.0  # each workload starts from an empty cache
    # the first 100 are fresh, and repeats within one batch are deduped rather than served from the cache
    assert 0.25 < runs["50% repeats"]["cache_hit_rate"] <= 0.4
    # a raid of 20 texts (and their shouted and spaced copies): from memory, but for the first batch or two
    # (copies inside the batch that first meets a text share its one model call, uncached)
    assert runs["raid: 20 texts"]["cache_hit_rate"] >= 0.75
    assert runs["peer: kafka-python + pipeline"]["messages"] == 60
    capacity = e2e["capacity"]  # three loads from 100 msgs/s, up by 1.5x while p99 stays within 150 ms
    offered = [round(p["offered_msgs_per_s"]) for p in capacity["points"]]
    assert len(offered) == 4 and offered[:2] == [50, 100]  # a light load for the curve, then the search
    within = [p["offered_msgs_per_s"] for p in capacity["points"]
              if LoadPoint(p["offered_msgs_per_s"], p["sustained_msgs_per_s"], p["latency_p50_ms"],
                           p["latency_p99_ms"], p["lost"]).within(150.0)]
    found = capacity["capacity_msgs_per_s"]  # the highest load of the search within the bound (50 is the curve's)
    assert (found == 0 or found in [round(w, 1) for w in within]) and all(w <= found for w in within if w != 50.0)
    for r in [*runs.values(), *capacity["points"]]:
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
        cpu = r["extra"]["cpu_ms_per_msg"]  # where the machine's time went, per process
        assert set(cpu) == {"worker", "broker", "redis", "load generator"} | ({"console"} if "console" in r["workload"] else set())
        assert cpu["worker"] > 0 and all(v >= 0 for v in cpu.values())
    for r in [runs["unique"], *capacity["points"]]:  # the worker's share: produced -> result built
        assert 0 < r["extra"]["worker_latency_p50_ms"] <= r["latency_p50_ms"]
    assert e2e["worker_memory"]["peak_rss_mb"] > 50
    targets = {t["target"]: t for t in report["targets"]}
    assert set(targets) >= {"nothing lost", "worker peak RSS <= 600 MB", "capacity at p99 <= 150 ms: >= 600 msgs/s",
                            "raid: >= 90% of the stack's own limit (Faust, no model)",
                            "raid: worker CPU per cached message <= 0.2 ms",
                            "end-to-end unique over the peer design (reported)",
                            "explanations on: >= 90% of the unique throughput with them off",
                            "profile: 500 terms: >= 95% of the unique throughput without",
                            "unique at 150/s, console + 2 tabs: the worker keeps >= 95% of its throughput",
                            "unique at 150/s, console + 2 tabs: worker CPU per message <= 1.05x without the console"}
    assert targets["nothing lost"]["met"]
    assert targets["capacity at p99 <= 150 ms: >= 600 msgs/s"]["measured"] == capacity["capacity_msgs_per_s"]
    console = Console(file=open(tmp_path / "out.txt", "w"), width=200)  # noqa: SIM115
    render(json.loads(json.dumps(report)), console)  # what the CLI prints, from what it writes
    console.file.close()
    printed = (tmp_path / "out.txt").read_text()
    assert "load 150/s" in printed and "machine time per message" in printed and "capacity at p99" in printed
    svg = latency_plot(report)
    assert svg.startswith("<svg") and svg.count("<circle") == 8 and "p99 bound 150 ms" in svg
