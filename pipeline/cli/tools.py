"""Developer tools on the embedded stack: ``chatmod demo``, ``bench`` and ``chaos``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import load_settings, progress_bars

app = typer.Typer()


@app.command()
def demo(
    messages: Annotated[int, typer.Option(min=1, help="How many chat lines to replay (repeats included).")] = 600,
    live: Annotated[bool, typer.Option(help="Show the live view (plain lines when not a terminal).")] = True,
    rate: Annotated[float, typer.Option(min=0.1, help="Messages per second.")] = 60.0,
    with_console: Annotated[bool, typer.Option("--console/--no-console",
                                               help="Serve the moderator console beside it (a demo login is printed).")] = True,
) -> None:
    """Replay a sample chat through a worker on the embedded stack and summarise what happened.

    Serves the bundled default models; CHATMOD_MODELS_STORE, when set, names a store to serve instead.
    """
    from pipeline.devstack.demo import run_demo

    settings = load_settings()
    store = settings.models.store if "store" in settings.models.model_fields_set else None
    raise typer.Exit(run_demo(n_messages=messages, live=live, store=store, rate=rate, with_console=with_console))


@app.command()
def bench(
    part: Annotated[list[str] | None, typer.Option("--only", help="model and/or e2e (default: both).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report (the latency plot goes beside it, "
                                           ".svg).")] = Path("bench.json"),
    store: Annotated[Path | None, typer.Option(help="Model store (default: the bundled defaults).")] = None,
    texts: Annotated[int, typer.Option(help="Texts per model-only row.")] = 2000,
    messages: Annotated[int, typer.Option(help="Messages per flat-out end-to-end workload.")] = 20000,
    threads: Annotated[int, typer.Option(help="Model threads (ONNX Runtime and torch alike).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Model-only batch size.")] = 64,
    max_batch: Annotated[int, typer.Option(help="The worker's micro-batch size (CHATMOD_BATCHING_MAX_BATCH).")] = 128,
    bound_ms: Annotated[float, typer.Option(help="The p99 bound of the capacity search, ms.")] = 150.0,
    capacity_start: Annotated[float | None, typer.Option(help="First offered load of the capacity search "
                                                              "(default: a third of the unique throughput).")] = None,
    capacity_seconds: Annotated[float, typer.Option(help="Seconds per load of the capacity search.")] = 8.0,
    peer_messages: Annotated[int, typer.Option(help="Messages through the peer design (0: not run).")] = 1000,
    console_tabs: Annotated[int, typer.Option(help="Also: unique texts at --console-rate, without and then with "
                                                   "a console serving this many open queue pages (0: not run).")] = 0,
    console_rate: Annotated[float, typer.Option(help="Offered msgs/s of the console comparison.")] = 1000.0,
    seed: Annotated[int, typer.Option()] = 13,
    worker_setting: Annotated[list[str] | None, typer.Option(
        "--worker-setting", help="A worker setting for the end-to-end runs, as its environment variable: "
                                 "CHATMOD_KAFKA_FETCH_MAX_WAIT_MS=20 (repeatable).")] = None,
    compare: Annotated[list[str] | None, typer.Option(
        "--compare", help="After the end-to-end runs, the unique workload again on a worker with this one "
                          "setting changed, side by side: CHATMOD_MODELS_EXPLAIN=off (repeatable).")] = None,
    profile_terms: Annotated[int, typer.Option(
        help="Also run the unique workload with a default profile of this many block terms, then with a strike "
             "ladder and flood limits as well, side by side (0: not run).")] = 0,
) -> None:
    """Benchmarks: model-only beside the transformers pipeline; end to end on the embedded stack (unique,
    repeats, a raid), the capacity at a p99 bound with its latency-by-load plot, the stack's own limit and
    the peer design. Prints tables and writes a JSON report and an SVG."""
    from rich.console import Console

    from pipeline.devstack.bench import E2EPlan, run_bench
    from pipeline.devstack.bench_report import latency_plot, render

    parts = set(part or ("model", "e2e"))
    if parts - {"model", "e2e"}:
        raise typer.BadParameter(f"--only takes model or e2e, got {sorted(parts - {'model', 'e2e'})}")
    plan = E2EPlan(messages=messages, threads=threads, max_batch=max_batch, seed=seed,
                   worker_env=dict(_settings_given(worker_setting or [])),
                   compare=[f"{k}={v}" for k, v in _settings_given(compare or [])] + _profile_runs(profile_terms),
                   bound_ms=bound_ms, capacity_start=capacity_start, capacity_seconds=capacity_seconds,
                   peer_messages=peer_messages, console_tabs=console_tabs,
                   console_rate=console_rate)
    bars, progress = progress_bars()
    with bars:
        report = run_bench(parts, store, plan, texts, batch_size, say=bars.console.print, progress=progress)
    out.write_text(json.dumps(report, indent=2))
    render(report, Console())
    typer.echo(f"report written to {out}")
    plot = latency_plot(report)
    if plot is not None:
        out.with_suffix(".svg").write_text(plot)
        typer.echo(f"latency by load drawn in {out.with_suffix('.svg')}")


def _settings_given(items: list[str]) -> list[tuple[str, str]]:
    """``--worker-setting`` and ``--compare`` values as (CHATMOD_<GROUP>_<NAME>, value) pairs."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("CHATMOD_"):
            raise typer.BadParameter(f"--worker-setting and --compare take CHATMOD_<GROUP>_<NAME>=value, got {item!r}")
        pairs.append((key, value))
    return pairs


def _profile_runs(n_terms: int) -> list[str]:
    """``--profile-terms N``: the unique workload with a profile of N block terms, then with state as well."""
    if not n_terms:
        return []
    from pipeline.devstack.bench_workload import policy_profile_file

    folder = Path(tempfile.mkdtemp(prefix="chatmod-bench-profile-"))
    return [f"CHATMOD_POLICY_DEFAULT_PROFILE={policy_profile_file(folder, n_terms, state=False)}",
            f"CHATMOD_POLICY_DEFAULT_PROFILE={policy_profile_file(folder, n_terms)}"]


@app.command()
def chaos(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of steady load; the faults fall inside.")] = 180.0,
    rate: Annotated[float, typer.Option(min=1, help="Messages per second.")] = 300.0,
    kill_every: Annotated[float, typer.Option(min=1, help="SIGKILL a worker (and restart it) this often, s.")] = 30.0,
    redis_restarts: Annotated[int, typer.Option(min=0, help="Restarts of Redis (no persistence) in the run.")] = 2,
    store: Annotated[Path | None, typer.Option(help="Model store (default: the bundled defaults).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("chaos.json"),
) -> None:
    """Two workers under steady load, SIGKILLed in turn, Redis restarted empty: checks that every id comes
    out and that copies of a result differ only in latency_ms and cached. Exits 1 when the contract broke."""
    from rich.console import Console

    from pipeline.devstack.chaos import ChaosConfig, run_chaos

    cfg = ChaosConfig(duration_s=duration, rate=rate, kill_every_s=kill_every, redis_restarts=redis_restarts,
                      store=store)
    bars, progress = progress_bars()
    with bars:
        report = run_chaos(cfg, say=bars.console.print, progress=progress)
    out.write_text(json.dumps(report.to_dict(), indent=2))
    console = Console()
    console.print(f"produced {report.produced:,}, results {report.results:,} ({report.unique_ids:,} ids), "
                  f"lost {report.lost}, duplicates {report.duplicates} "
                  f"({report.duplicates_byte_identical} byte-identical, {report.duplicates_differing} differing "
                  f"outside latency_ms/cached, {report.decisions_differing} with another decision), "
                  f"{report.kills} kills, {report.redis_restarts} Redis restarts, {report.seconds:.0f} s")
    console.print(("[green]contract held" if report.ok else "[red]contract broken") + f"; report in {out}")
    raise typer.Exit(0 if report.ok else 1)
