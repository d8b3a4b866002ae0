"""Retraining from moderator feedback: once (``retrain``) or on a schedule (``schedule``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.labels import Task
from models.registry import open_store
from pipeline.control import announce_current_models
from pipeline.settings import Settings
from training.cli.common import Bars, DataOpt, console

_EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

app = typer.Typer()


def parse_every(value: str) -> float:
    """``"30m"``, ``"6h"``, ``"1d"`` -> seconds."""
    value = value.strip().lower()
    try:
        seconds = float(value[:-1]) * _EVERY_UNITS[value[-1]]
    except (KeyError, ValueError, IndexError):
        raise typer.BadParameter(f"expected a number and a unit (s, m, h, d), e.g. 1d or 6h; got {value!r}") from None
    if seconds <= 0:
        raise typer.BadParameter(f"the interval must be positive, got {value!r}")
    return seconds


def _retrain_once(cfg, out: Path | None, base_data: Path | None, data_root: Path | None, promote_if_better: bool,
                  threads: int | None):  # cfg: training.retrain.RetrainConfig
    from training.retrain import retrain

    settings = Settings()
    registry = open_store(settings.models.store)  # the workers' store, seeded from the bundled defaults if new
    task = cfg.task.value
    out = out or Path("runs") / f"retrain-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    bars = Bars()
    with bars.progress:
        result = retrain(cfg, registry.store, settings.feedback.store, out, base=base_data, data_root=data_root,
                         promote=promote_if_better, threads=threads, say=console.print, on_step=bars("candidate"))
    cand, cur = result.comparison["candidate"], result.comparison["current"]
    table = Table("metric", cur["ref"], cand["ref"], "change", title=f"retrain {task}: current vs candidate (served int8)")
    rows = [(m, v, cand["fixed"].get(m)) for m, v in sorted(cur["fixed"].items())]
    rows.append(("feedback slice accuracy", cur["feedback_slice_accuracy"], cand["feedback_slice_accuracy"]))
    if "functional" in cur and "functional" in cand:
        rows.append(("functional suite (mean pass rate)", cur["functional"]["overall"], cand["functional"]["overall"]))
    for metric, before, after in rows:
        table.add_row(metric, f"{before:.4f}", "-" if after is None else f"{after:.4f}",
                      "-" if after is None else f"{after - before:+.4f}")
    Console().print(table)
    if result.promoted:
        Console().print(f"[green]gate passed[/]: {result.candidate} is now current for {task}")
        heard = announce_current_models(settings.redis, registry, f"retrain promoted {result.candidate}")
        Console().print("Redis unreachable: running workers switch at their next registry poll" if heard is None
                        else f"{heard} running worker(s) notified")
    else:
        why = "; ".join(result.reasons) or "promotion not asked for (--no-promote)"
        Console().print(f"[yellow]{result.candidate} stays a candidate[/]: {why}")
    Console().print(f"report: {result.report_path}")
    return result


@app.command("retrain")
def retrain_cmd(
    task: Annotated[str, typer.Option(help="toxicity or sentiment.")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/retrain-<task>-<time>).")] = None,
    base_data: Annotated[Path | None, typer.Option(help="JSON lines of {text, labels} instead of the recipe's "
                                                        "labeled sets.")] = None,
    data_root: DataOpt = None,
    epochs: float = 1.0, lr: float = 3e-5,
    feedback_weight: Annotated[int, typer.Option(help="Times each feedback verdict is trained on.")] = 3,
    holdout: Annotated[float, typer.Option(help="Newest share of feedback held out as the judging slice.")] = 0.25,
    tolerance: Annotated[float, typer.Option(help="Largest drop allowed on any fixed-set metric.")] = 0.01,
    promote_if_better: Annotated[bool, typer.Option("--promote/--no-promote",
                                                    help="Promote when the gate passes.")] = True,
    threads: int | None = None, seed: int = 13,
    functional_gate: Annotated[bool, typer.Option("--functional-gate/--no-functional-gate",
                                                  help="Refuse a toxicity candidate that regresses a behaviour of "
                                                       "the functional suite by more than 5 points.")] = True,
) -> None:
    """Retrain from moderator feedback: candidate, judged against the current model, promoted via the gate.

    Uses CHATMOD_MODELS_STORE and CHATMOD_FEEDBACK_STORE; running workers are told to reload on promotion."""
    from training.retrain import RetrainConfig, RetrainError

    try:
        cfg = RetrainConfig(task=Task(task), feedback_weight=feedback_weight, holdout_fraction=holdout,
                            tolerance=tolerance, epochs=epochs, lr=lr, seed=seed,
                            functional_tolerance=0.05 if functional_gate else None)
        _retrain_once(cfg, out, base_data, data_root, promote_if_better, threads)
    except RetrainError as exc:
        console.print(f"[red]cannot retrain[/]: {exc}")
        raise typer.Exit(1) from exc


@app.command()
def schedule(
    task: Annotated[str, typer.Option(help="toxicity or sentiment.")],
    every: Annotated[str, typer.Option(help="Interval: 30m, 6h, 1d, ...")] = "1d",
    base_data: Annotated[Path | None, typer.Option(help="As for retrain.")] = None,
    data_root: DataOpt = None,
    epochs: float = 1.0, lr: float = 3e-5, feedback_weight: int = 3, holdout: float = 0.25,
    tolerance: float = 0.01, threads: int | None = None, seed: int = 13,
) -> None:
    """Retrain and gate every interval, for as long as it runs (Ctrl-C or SIGTERM ends it).

    A run that cannot start (too little feedback yet) or fails is reported and the next one still happens;
    the Kubernetes CronJob in deploy/ is the alternative to a long-running schedule."""
    from training.retrain import RetrainConfig, RetrainError

    interval = parse_every(every)
    cfg = RetrainConfig(task=Task(task), feedback_weight=feedback_weight, holdout_fraction=holdout,
                        tolerance=tolerance, epochs=epochs, lr=lr, seed=seed)
    while True:
        started = time.monotonic()
        try:
            _retrain_once(cfg, None, base_data, data_root, True, threads)
        except RetrainError as exc:
            console.print(f"[yellow]skipped this run[/]: {exc}")
        except Exception as exc:  # noqa: BLE001 - one failed run must not end the schedule
            console.print(f"[red]retrain failed[/]: {exc!r}")
        pause = max(0.0, interval - (time.monotonic() - started))
        console.print(f"next retrain in {pause / 3600:.1f} h")
        time.sleep(pause)
