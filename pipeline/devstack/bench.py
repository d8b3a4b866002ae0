"""``chatmod bench``: model-only and end-to-end benchmarks, in one run, on one box.

1. model-only (:mod:`models.bench`): each model in the store, our runtime beside the transformers
   ``pipeline`` default on the same model, texts and threads; ratios against the pipeline.
2. end-to-end: the embedded broker and Redis, a real ``chatmod worker`` process serving the current
   models; workloads produced flat out and read back from the moderated topic: unique texts, 50% repeats,
   and a raid (every message one of 50 texts). Sustained msgs/s (results over the time from first sent to
   last result), produce-to-result latency, cache hits, CPU per message of every process.
3. capacity: the highest offered load of unique texts at which p99 produce-to-result latency stays within
   the bound (150 ms), by a step-and-bisect search over fixed loads 
   (:mod:`pipeline.devstack.bench_load`), drawn as latency by load.
4. references on the same box, in the same run: the stack's own limit (Faust consuming and producing with
   no model, :mod:`pipeline.devstack.bench_reference`) for the raid, and the peer design (kafka-python and the
   transformers pipeline one message at a time, :mod:`pipeline.devstack.bench_peer`) for the unique workload.
   The workloads and the worker: :mod:`pipeline.devstack.bench_workload`; the targets and tables:
   :mod:`pipeline.devstack.bench_report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.labels import Task
from models.registry import ModelRegistry, bundled_store
from pipeline.devstack.bench_load import LoadPoint, capacity_search, raid_texts
from pipeline.devstack.bench_report import check_targets
from pipeline.devstack.bench_workload import (
    E2E_PARTITIONS,
    E2EResult,
    Progress,
    Say,
    bench_worker,
    fresh_texts,
    rss_mb,
    run_workload,
    unique_texts,
    workload,
)

WARMUP_MESSAGES = 300


@dataclass
class E2EPlan:
    """What the end-to-end part runs."""

    messages: int = 20_000  # per flat-out workload
    threads: int = 2
    max_batch: int = 128
    seed: int = 13
    worker_env: dict[str, str] = field(default_factory=dict)
    compare: list[str] = field(default_factory=list)  # CHATMOD_X=value: the unique workload again with it
    bound_ms: float = 150.0  # the p99 bound of the capacity search
    capacity_start: float | None = None  # msgs/s; None: a third of the unique throughput
    capacity_seconds: float = 8.0  # per load point
    capacity_points: int = 9
    curve_shares: tuple[float, ...] = (0.25, 0.5)  # light loads measured first, as shares of the start
    raid_distinct: int = 50
    peer_messages: int = 1_000  # 0: the peer design is not run
    console_tabs: int = 0  # > 0: unique texts at console_rate, without and then with a console and N pages open
    console_rate: float = 1000.0  # msgs/s offered in the console comparison (the console issue's load)
    console_seconds: float = 10.0


def end_to_end(store: Path | None, plan: E2EPlan, say: Say, progress: Progress | None) -> dict:
    """The workloads on one worker, the capacity search, then side by side: ``plan.compare`` settings, the
    stack's own limit, and the peer design."""
    import redis

    out: dict = {"partitions": E2E_PARTITIONS, "max_batch": plan.max_batch, "threads": plan.threads,
                 "worker_settings": dict(plan.worker_env), "runs": []}
    with bench_worker(store, plan.threads, plan.max_batch, say, extra_env=plan.worker_env) as (stack, topics, worker):
        flush = redis.Redis.from_url(stack.redis_url).flushdb  # each workload starts with an empty Redis
        processes = {label: pid for label, pid in (("worker", worker.pid), ("broker", stack.broker.pid),
                                                   ("redis", stack.redis.pid), ("load generator", os.getpid()))
                     if pid is not None}

        def run(texts: list[str], name: str, rate: float | None = None) -> E2EResult:
            flush()
            processes["worker"] = worker.pid
            result = run_workload(stack.bootstrap, topics, texts, name, rate, progress, processes)
            if not worker.alive:
                raise RuntimeError(worker.exit_message())
            return result

        n, seed = plan.messages, plan.seed
        run([f"warming up {text}" for text in unique_texts(WARMUP_MESSAGES, seed + 99)], "warm-up")  # none reused
        unique = workload(n, 0.0, seed)
        repeats = workload(n, 0.5, seed + 7, exclude=set(unique))
        used = set(unique) | set(repeats)  # the worker remembers recent scores: later workloads avoid these
        raid_pool = fresh_texts(plan.raid_distinct, seed + 11, used)
        used |= set(raid_pool)
        raid = raid_texts(n, raid_pool, seed)
        results = []
        for name, texts in (("unique", unique), ("50% repeats", repeats), (f"raid: {plan.raid_distinct} texts", raid)):
            say(f"end-to-end, {name}: {n} messages as fast as they can be produced")
            results.append(run(texts, name))
        out["capacity"] = _capacity(plan, results[0].sustained_msgs_per_s, used, run, say)
        out["worker_memory"] = rss_mb(worker.pid) if worker.pid else {}
        for setting in plan.compare:  # the unique workload again, side by side, on a worker with one change
            key, _, value = setting.partition("=")
            name = _compare_name(key, value)
            say(f"end-to-end, {name}: a worker with {setting}, the same {n} unique texts")
            worker.restart_with({key: value})
            results.append(run(unique, name))
        if plan.console_tabs:
            results += _with_console(plan, worker, used, run, processes, say, out)
        say("the stack's own limit: Faust consuming and producing with no model, the raid's messages")
        worker.restart_with({}, argv=("-m", "pipeline.devstack.bench_reference"))
        results.append(run(raid, "reference: Faust, no model"))
        peer = _peer_folder(worker.env) if plan.peer_messages else None
        if peer is not None:
            say(f"the peer design: kafka-python and the transformers pipeline, one message at a time "
                f"({plan.peer_messages} unique texts)")
            worker.restart_with({}, argv=("-m", "pipeline.devstack.bench_peer", stack.bootstrap, topics.messages,
                                          topics.moderated, str(peer), str(plan.threads)), faust=False)
            results.append(run(unique[: plan.peer_messages], "peer: kafka-python + pipeline"))
        out["runs"] = [r.__dict__ for r in results]
    return out


def _capacity(plan: E2EPlan, unique_rate: float, used: set[str], run: Callable, say: Say) -> dict:
    """Step-and-bisect over fixed loads of fresh unique texts (see ``bench_load.capacity_search``)."""
    points: list[dict] = []

    def run_at(rate: float) -> LoadPoint:
        texts = fresh_texts(max(50, int(rate * plan.capacity_seconds)), plan.seed + 13 + len(points), used)
        used.update(texts)
        result = run(texts, f"load {rate:,.0f}/s", rate)
        points.append(result.__dict__)
        return LoadPoint(rate, result.sustained_msgs_per_s, result.latency_p50_ms, result.latency_p99_ms, result.lost)

    start = plan.capacity_start or max(10.0, unique_rate / 3)
    say(f"capacity at p99 <= {plan.bound_ms:.0f} ms: fixed loads of unique texts from {start:,.0f} msgs/s, "
        f"{plan.capacity_seconds:.0f} s each")
    for share in plan.curve_shares:  # light loads too, for the shape of the curve
        point = run_at(start * share)
        say(f"  {start * share:,.0f} msgs/s offered: p99 {point.latency_p99_ms:,.0f} ms (the curve)")
    capacity, _ = capacity_search(run_at, start, plan.bound_ms, plan.capacity_points, say=say)
    return {"bound_ms": plan.bound_ms, "capacity_msgs_per_s": round(capacity, 1), "seconds_per_point": plan.capacity_seconds,
            "points": sorted(points, key=lambda p: p["offered_msgs_per_s"])}


def _with_console(plan: E2EPlan, worker, used: set[str], run: Callable, processes: dict, say: Say,
                  out: dict) -> list[E2EResult]:
    """Unique texts offered at ``plan.console_rate``, then as many others while a console serves
    ``plan.console_tabs`` open queue pages: the console's cost to the worker at that load, as its throughput
    and its CPU per message, side by side."""
    from pipeline.devstack.bench_console import ConsoleTabs

    rate, n = plan.console_rate, max(50, int(plan.console_rate * plan.console_seconds))
    texts = fresh_texts(2 * n, plan.seed + 17, used)
    used.update(texts)
    plain_texts, watched_texts = texts[:n], texts[n:]  # both halves new to the worker: no restart between
    say(f"end-to-end, {n} unique texts at {rate:,.0f} msgs/s, without and then with a console and "
        f"{plan.console_tabs} open queue pages")
    if plan.compare:
        worker.restart_with({})  # the last side-by-side run changed a setting
    plain = run(plain_texts, f"unique at {rate:,.0f}/s", rate)
    with ConsoleTabs(worker.env, worker.tmp, plan.console_tabs) as tabs:
        processes["console"] = tabs.pid
        try:
            watched = run(watched_texts, f"unique at {rate:,.0f}/s, console + {plan.console_tabs} tabs", rate)
        finally:
            del processes["console"]
        tabs.settle()  # after the run: the pages get the run's last events before they are counted
        out["console_tabs"] = tabs.summary()
    return [plain, watched]


def _compare_name(key: str, value: str) -> str:
    if key == "CHATMOD_POLICY_DEFAULT_PROFILE":
        used = json.loads(Path(value).read_text())
        return f"unique, profile: {len(used['block_terms']):,} terms" + (" + strikes" if "strikes" in used else "")
    return f"unique, {key.removeprefix('CHATMOD_').lower()}={value}"


def _peer_folder(env: dict[str, str]) -> Path | None:
    """The served toxicity model's artifact folder, for the peer; None without torch (the ``train`` extra)."""
    from importlib.util import find_spec

    if find_spec("torch") is None or find_spec("transformers") is None:
        return None

    registry = ModelRegistry(Path(env["CHATMOD_MODELS_STORE"]))
    return registry.get(registry.current(Task.TOXICITY))[1]


# the whole run ---------------------------------------------------------------------------------------------


def machine() -> dict:
    import onnxruntime

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def model_only(store: Path | None, n: int, threads: int, batch_size: int, seed: int, say: Say,
               progress: Progress | None) -> dict:
    from models.bench import bench_artifact

    with tempfile.TemporaryDirectory(prefix="chatmod-bench-") as tmp:
        registry = ModelRegistry(store) if store is not None else ModelRegistry(Path(tmp) / "store", seed=bundled_store())
        texts = unique_texts(n, seed)
        rows, checks = [], {}
        for manifest in registry.manifests():
            say(f"model-only: {manifest.ref}, {n} texts, batches of {batch_size}, {threads} threads")
            _, folder = registry.get(manifest.ref)
            artifact_rows, check = bench_artifact(folder, texts, threads, batch_size, progress=progress)
            rows += [r.as_dict() for r in artifact_rows]
            checks[manifest.ref] = check
    return {"texts": n, "threads": threads, "batch_size": batch_size, "rows": rows, "torch_rebuild_check": checks}


def run_bench(parts: set[str], store: Path | None, plan: E2EPlan, n_model: int, batch_size: int, say: Say,
              progress: Progress | None) -> dict:
    """The benchmarks named in ``parts`` (``model``, ``e2e``), one after the other, as one report."""
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "seed": plan.seed}
    if "model" in parts:
        report["model_only"] = model_only(store, n_model, plan.threads, batch_size, plan.seed, say, progress)
    if "e2e" in parts:
        report["end_to_end"] = end_to_end(store, plan, say, progress)
    report["targets"] = check_targets(report)
    return report
