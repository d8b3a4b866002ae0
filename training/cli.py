"""``chatmod train ...``: the training recipe's stages, and ``all`` for the whole recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from models.artifact import dump_json
from models.labels import Task
from training.distill import TrainConfig
from training.recipe import StageConfig, evaluate_folder, export_folder, run_distill, run_teacher

app = typer.Typer(help="Train, evaluate, export and register chatmod models.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
console = Console(stderr=True)

TasksOpt = Annotated[list[str], typer.Option("--task", help="toxicity, sentiment, or all (one encoder, two heads).")]
DataOpt = Annotated[Path | None, typer.Option(help="Labeled data folder (default ../shared/data).")]


def _tasks(values: list[str]) -> list[str]:
    if not values or values == ["all"]:
        return [Task.TOXICITY.value, Task.SENTIMENT.value]
    return [Task(v).value for v in values]


def _cfg(tasks: list[str], data_root: Path | None, epochs: float, batch_size: int, lr: float, max_length: int,
         seed: int, threads: int | None, max_steps: int | None = None, **loss: float) -> StageConfig:
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed,
                        max_steps=max_steps, **loss)
    return StageConfig(tasks=_tasks(tasks), data_root=str(data_root) if data_root else None, seed=seed,
                       threads=threads, train=train)


class _Bars:
    """Rich progress bars fed by the training loop's step callback."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console)
        self.ids: dict[str, int] = {}

    def __call__(self, name: str):
        def on_step(step: int, total: int, losses: dict) -> None:
            if name not in self.ids:
                self.ids[name] = self.progress.add_task(name, total=total, loss="")
            text = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
            self.progress.update(self.ids[name], completed=step, loss=text)
        return on_step


@app.command()
def data(data_root: DataOpt = None) -> None:
    """The label mapping of every data set, and how many examples each contributes."""
    from training.data import SOURCES, load_splits

    table = Table("set", "task", "train", "validation", "mapping")
    for name, src in SOURCES.items():
        splits = load_splits(data_root, [name])
        table.add_row(name, src.task.value, str(len(splits.train)), str(len(splits.validation[name])), src.mapping)
    Console().print(table)


@app.command()
def teacher(out: Annotated[Path, typer.Option(help="Folder for the fine-tuned teacher.")],
            base: Annotated[str, typer.Option(help="HF model id or folder; 'minilm' = offline all-MiniLM-L6-v2.")] = "minilm",
            task: TasksOpt = ["all"], data_root: DataOpt = None, epochs: float = 1.0, batch_size: int = 32,
            lr: float = 6e-5, max_length: int = 96, seed: int = 13, threads: int | None = None,
            max_steps: int | None = None) -> None:
    """Fine-tune a pretrained encoder as the teacher (one head per task)."""
    cfg = _cfg(task, data_root, epochs, batch_size, lr, max_length, seed, threads, max_steps)
    bars = _Bars()
    with bars.progress:
        record = run_teacher(cfg, base, out, on_step=bars("teacher"))
    console.print(f"teacher saved to {out}: {record['result']['final_losses']}")


@app.command()
def distill(teacher_dir: Annotated[Path, typer.Option("--teacher", help="Folder of a trained teacher.")],
            out: Annotated[Path, typer.Option(help="Folder for the student.")],
            family: Annotated[str, typer.Option(help="distilbert or albert")] = "distilbert",
            task: TasksOpt = ["all"], data_root: DataOpt = None, epochs: float = 1.0, batch_size: int = 32,
            lr: float = 1e-4, max_length: int = 96, seed: int = 13, threads: int | None = None,
            layers: Annotated[int, typer.Option(help="DistilBERT: number of layers (every other teacher layer).")] = 3,
            embedding_size: Annotated[int, typer.Option(help="ALBERT: factorised embedding size.")] = 64,
            repetitions: Annotated[int, typer.Option(help="ALBERT: times the shared layer is applied.")] = 3,
            temperature: float = 2.0, alpha_soft: float = 1.0, alpha_hard: float = 1.0, alpha_cos: float = 1.0,
            max_steps: int | None = None) -> None:
    """Distil a DistilBERT or ALBERT student from a teacher (soft KL at T + hard labels + hidden cosine)."""
    cfg = _cfg(task, data_root, epochs, batch_size, lr, max_length, seed, threads, max_steps,
               temperature=temperature, alpha_soft=alpha_soft, alpha_hard=alpha_hard, alpha_cos=alpha_cos)
    bars = _Bars()
    with bars.progress:
        record = run_distill(cfg, teacher_dir, family, out, n_layers=layers, embedding_size=embedding_size,
                             repetitions=repetitions, on_step=bars(family))
    console.print(f"{family} student ({record['parameters']:,} parameters) saved to {out}")


@app.command()
def evaluate(folder: Annotated[Path, typer.Argument(help="A trained model folder or an artifact folder.")],
             task: TasksOpt = ["all"], data_root: DataOpt = None, seed: int = 13) -> None:
    """Validation metrics (headline, per label), thresholds calibrated on validation."""
    cfg = StageConfig(tasks=_tasks(task), data_root=str(data_root) if data_root else None, seed=seed)
    report = evaluate_folder(folder, cfg)
    dump_json(folder / "eval_report.json", report)
    typer.echo(json.dumps(report["headline"], indent=2))


@app.command()
def export(folder: Annotated[Path, typer.Argument(help="A trained model folder (with eval_report.json).")],
           out: Annotated[Path, typer.Option(help="Artifact folder to create.")],
           name: str, version: str,
           formats: Annotated[list[str], typer.Option("--format")] = ["safetensors", "onnx_int8"]) -> None:
    """Export a verified artifact: safetensors and/or ONNX (fp32, int8), thresholds from evaluation."""
    report_path = folder / "eval_report.json"
    if not report_path.is_file():
        raise typer.BadParameter(f"{report_path} is missing: run `chatmod train evaluate {folder}` first")
    export_folder(folder, out, name, version, json.loads(report_path.read_text()), formats=formats)
    typer.echo(f"artifact written to {out}")


@app.command()
def promote(artifact: Annotated[Path, typer.Argument(help="Artifact folder to register and make current.")],
            store: Annotated[Path, typer.Option(help="Model store.")] = Path("model-store"),
            task: Annotated[list[str] | None, typer.Option(help="Tasks (default: all its heads).")] = None) -> None:
    """Register an artifact in a store and make it current."""
    from models.registry import ModelRegistry

    registry = ModelRegistry(store)
    manifest = registry.add(artifact)
    registry.promote(manifest.ref, tasks=task or None)
    typer.echo(f"{manifest.ref} is current for {task or [str(t) for t in manifest.tasks]} in {store}")


@app.command("all")
def all_(out: Annotated[Path, typer.Option(help="Run folder (resumable).")] = Path("runs/latest"),
         store: Annotated[Path | None, typer.Option(help="Model store to register into.")] = Path("model-store"),
         task: TasksOpt = ["all"], data_root: DataOpt = None, base: str = "minilm",
         teacher_epochs: float = 1.0, student_epochs: float = 1.0, seed: int = 13, threads: int | None = None) -> None:
    """The whole recipe: teacher, both students, evaluation, export, registration, default choice."""
    from training.train_all import run_all

    cfg = _cfg(task, data_root, student_epochs, 32, 1e-4, 96, seed, threads)
    teacher_cfg = _cfg(task, data_root, teacher_epochs, 32, 6e-5, 96, seed, threads)
    bars = _Bars()
    with bars.progress:
        summary = run_all(cfg, out, store, base=base, teacher_cfg=teacher_cfg, progress=bars, say=console.print)
    table = Table("model", "params", "MB", "ms/msg", *summary["teacher"].keys(), title="validation (served int8)")
    table.add_row("teacher", "", "", "", *(f"{v:.4f}" for v in summary["teacher"].values()))
    for name, card in summary["models"].items():
        table.add_row(name, f"{card['parameters']:,}", f"{card['size_bytes'] / 1e6:.1f}", f"{card['latency_ms_per_msg']:.2f}",
                      *(f"{card['headline'].get(k, float('nan')):.4f}" for k in summary["teacher"]))
    Console().print(table)
    Console().print(f"served defaults: {summary['defaults']}")
