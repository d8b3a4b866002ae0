"""What the training commands share: option types, the stage config from options, progress bars, and the
steps of commands that make a new version of a stored model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from models.labels import Task
from models.registry import ModelRegistry
from training.data import SOURCES, default_data_root
from training.distill import TrainConfig
from training.recipe import StageConfig

console = Console(stderr=True)

TasksOpt = Annotated[list[str], typer.Option("--task", help="toxicity, sentiment, or all (one encoder, two heads).")]
DataOpt = Annotated[Path | None, typer.Option(help="Labeled data folder (default ../shared/data).")]
RefArg = Annotated[str, typer.Argument(help="NAME@VERSION in the store, or an artifact folder.")]
StoreOpt = Annotated[Path, typer.Option(help="Model store.")]
PromoteOpt = Annotated[bool, typer.Option("--promote/--no-promote", help="Make it current for the tasks its source serves.")]
CapOpt = Annotated[list[str] | None, typer.Option(help="SOURCE=N: a set's cap, after --scale (repeatable), "
                                                       "e.g. semeval=30000.")]
RepeatOpt = Annotated[list[str] | None, typer.Option(help="SOURCE=N: times a set's training split is seen per epoch "
                                                          "(repeatable; OLID's default is 2), e.g. jigsaw=3.")]

TransferOpt = Annotated[list[str] | None, typer.Option(help="NAME=N: N unlabeled texts of a transfer set that the "
                                                           "students learn from through the teacher's soft labels "
                                                           "alone (repeatable), e.g. chitchat=60000.")]


def tasks_of(values: list[str]) -> list[str]:
    if not values or values == ["all"]:
        return [Task.TOXICITY.value, Task.SENTIMENT.value]
    return [Task(v).value for v in values]


def stage_config(tasks: list[str], data_root: Path | None, epochs: float, batch_size: int, lr: float, max_length: int,
         seed: int, threads: int | None, max_steps: int | None = None, precision: str = "fp32",
         **options: float | str) -> StageConfig:
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed,
                        max_steps=max_steps, precision=precision, **options)
    return StageConfig(tasks=tasks_of(tasks), data_root=str(data_root) if data_root else None, seed=seed,
                       threads=threads, train=train)


def with_caps(cfg: StageConfig, items: list[str] | None, repeats: list[str] | None = None,
              transfer: list[str] | None = None) -> StageConfig:
    """``cfg`` with the ``SOURCE=N`` caps of ``--cap``, repeats of ``--repeat`` and transfer sets of
    ``--transfer`` over its own."""
    from training.transfer import TRANSFER_SETS

    return replace(cfg, caps=_per_source(cfg.caps, items, "--cap"), repeats=_per_source(cfg.repeats, repeats, "--repeat"),
                   transfer=_per_source(cfg.transfer, transfer, "--transfer", TRANSFER_SETS, "NAME"))


def _per_source(base: dict[str, int], items: list[str] | None, option: str, known: Mapping = SOURCES,
                word: str = "SOURCE") -> dict[str, int]:
    out = dict(base)
    for item in items or []:
        source, sep, n = item.partition("=")
        if not sep or source not in known or not n.isdigit() or int(n) < 1:
            raise typer.BadParameter(f"{option} takes {word}=N with a {word.lower()} of {sorted(known)}, got {item!r}")
        out[source] = int(n)
    return out


class Bars:
    """Rich progress bars fed by the training loop's step callback. Where stderr is not a terminal (a log
    file, CI) the bars cannot redraw, so each task prints a line every ``every_s`` seconds and at its end."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console)
        self.ids: dict[str, int] = {}
        self.every_s = every_s
        self._started: dict[str, float] = {}  # per task: its first step, and its last printed line
        self._printed: dict[str, float] = {}
        self._losses: dict[str, str] = {}

    def __call__(self, name: str):
        def on_step(step: int, total: int, losses: dict) -> None:
            if name not in self.ids:
                self.ids[name] = self.progress.add_task(name, total=total, loss="")
            if losses:  # they come every log_every steps; the bar keeps the last
                self._losses[name] = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
            text = self._losses.get(name, "")
            self.progress.update(self.ids[name], completed=step, loss=text)
            if not console.is_terminal:
                self._line(name, step, total, text)
        return on_step

    def _line(self, name: str, step: int, total: int, losses: str) -> None:
        now = time.monotonic()
        started = self._started.setdefault(name, now)
        if now - self._printed.get(name, started) < self.every_s and step < total:
            return
        self._printed[name] = now
        elapsed = now - started
        left = f", about {elapsed / step * (total - step):.0f}s left" if step else ""
        console.print(f"{name}: {step}/{total} ({step / max(total, 1):.0%}) {losses} elapsed {elapsed:.0f}s{left}",
                      highlight=False, soft_wrap=True)


def derived_from(ref: str, store: Path, data_root: Path | None, seed: int):
    """For a command that makes a new version of a model: (registry, the source's folder, the recipe's
    config for both tasks, the data folder)."""
    registry = ModelRegistry(store)
    source = Path(ref) if Path(ref).is_dir() else registry.get(ref)[1]
    cfg = StageConfig(tasks=tasks_of(["all"]), data_root=str(data_root) if data_root else None, seed=seed)
    return registry, source, cfg, Path(cfg.data_root) if cfg.data_root else default_data_root()


def promote_like_source(registry, stored) -> None:
    """Make ``stored`` current for the tasks its name serves now (all its tasks where it serves none)."""
    serving = [task for task in stored.tasks if (registry.current(task) or "").split("@")[0] == stored.name]
    registry.promote(stored.ref, tasks=serving or None)
    console.print(f"{stored.ref} is current for {[str(t) for t in (serving or stored.tasks)]}")
