"""The recipe's stages one at a time: data, teacher, distill, label, distill-labels, evaluate, compare,
spans, export, promote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.artifact import dump_json
from models.labels import Task
from models.registry import ModelRegistry
from pipeline.settings import Settings
from training.cli.common import (
    Bars,
    CapOpt,
    DataOpt,
    RepeatOpt,
    TasksOpt,
    TransferOpt,
    console,
    stage_config,
    tasks_of,
    with_caps,
)
from training.data import SOURCES, default_data_root, load_splits
from training.recipe import StageConfig, evaluate_folder, export_folder, run_distill, run_teacher

app = typer.Typer()


@app.command()
def data(data_root: DataOpt = None) -> None:
    """The label mapping of every data set, and how many examples each contributes."""
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
    cfg = stage_config(task, data_root, epochs, batch_size, lr, max_length, seed, threads, max_steps, precision=precision)
    bars = Bars()
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
    cfg = stage_config(task, data_root, epochs, batch_size, lr, max_length, seed, threads, max_steps,
               temperature=temperature, alpha_soft=alpha_soft, alpha_hard=alpha_hard, alpha_cos=alpha_cos)
    bars = Bars()
    with bars.progress:
        record = run_distill(cfg, teacher_dir, family, out, n_layers=layers, embedding_size=embedding_size,
                             repetitions=repetitions, on_step=bars(family))
    console.print(f"{family} student ({record['parameters']:,} parameters) saved to {out}")


@app.command()
def label(teacher: Annotated[str, typer.Option("--teacher", help="A trained teacher's folder, or a shipped model "
                                                                  "(NAME@VERSION or an artifact folder) as a "
                                                                  "teacher assistant for a smaller student.")],
          out: Annotated[Path, typer.Option(help="The .npz to write (a .json description goes beside it).")],
          store: Annotated[Path, typer.Option(help="Model store (for NAME@VERSION).")] = Path("model-store"),
          task: TasksOpt = ["all"], data_root: DataOpt = None, max_length: int = 96, seed: int = 13,
          threads: int | None = None,
          scale: Annotated[float, typer.Option(help="Share of every set's cap to label (1.0: the recipe's).")] = 1.0,
          cap: CapOpt = None, transfer: TransferOpt = None,
          transfer_only: Annotated[bool, typer.Option("--transfer-only", help="Label the transfer sets' texts "
                                                      "alone (to read after a file covering the labeled sets).")] = False,
          precision: Annotated[str, typer.Option(help="fp32, bf16, or auto (bf16 where native).")] = "auto") -> None:
    """Run a teacher once over the recipe's training texts and store its soft labels (small: commit them)."""
    import torch

    from training.recipe import scaled
    from training.soft_labels import label_recipe

    if threads:
        torch.set_num_threads(threads)
    cfg = with_caps(scaled(stage_config(task, data_root, 1.0, 32, 1e-4, max_length, seed, threads), scale), cap,
                    transfer=transfer)
    if transfer_only and not cfg.transfer:
        raise typer.BadParameter("--transfer-only needs --transfer NAME=N")
    teacher_dir = Path(teacher)
    if not teacher_dir.is_dir():
        teacher_dir = ModelRegistry(store).get(teacher)[1]
    bars = Bars()
    with bars.progress:
        step = bars("label")
        label_recipe(teacher_dir, cfg, out, precision, progress=lambda done, total: step(done, total, {}),
                     transfer_only=transfer_only)
    console.print(f"soft labels written to {out}")


@app.command("distill-labels")
def distill_labels(labels: Annotated[list[Path], typer.Option("--labels", help="Soft labels from `chatmod train "
                                                                     "label` (repeatable: a text's come from the "
                                                                     "first file that holds it).")],
                   init: Annotated[str, typer.Option("--init", help="NAME@VERSION, an artifact or a model folder "
                                                                     "to start the student from.")],
                   out: Annotated[Path, typer.Option(help="Folder for the student.")],
                   store: Annotated[Path, typer.Option(help="Model store (for NAME@VERSION).")] = Path("model-store"),
                   task: TasksOpt = ["all"], data_root: DataOpt = None, epochs: float = 1.0, batch_size: int = 32,
                   lr: float = 5e-5, max_length: int = 96, seed: int = 13, threads: int | None = None,
                   scale: Annotated[float, typer.Option(help="Share of every set's cap (as labeled).")] = 1.0,
                   temperature: float = 2.0, alpha_soft: float = 1.0, alpha_hard: float = 1.0,
                   cap: CapOpt = None, repeat: RepeatOpt = None, transfer: TransferOpt = None,
                   precision: Annotated[str, typer.Option(help="fp32, bf16, or auto.")] = "auto") -> None:
    """Distil a student from stored soft labels (plus hard labels), starting from an existing model."""
    import tempfile

    from training.recipe import run_distill_from_labels, scaled
    from training.requantize import model_folder

    cfg = scaled(stage_config(task, data_root, epochs, batch_size, lr, max_length, seed, threads, precision=precision,
                      temperature=temperature, alpha_soft=alpha_soft, alpha_hard=alpha_hard, alpha_cos=0.0), scale)
    cfg = with_caps(cfg, cap, repeat, transfer)
    with tempfile.TemporaryDirectory(prefix="chatmod-distill-") as tmp:
        path, family = model_folder(init, store, Path(tmp))
        bars = Bars()
        with bars.progress:
            record = run_distill_from_labels(cfg, labels, path, out, family=family, on_step=bars(family or "student"))
    console.print(f"student distilled from {record['soft_labels']} ({record['soft_label_coverage']:.0%} of examples "
                  f"labeled), saved to {out}")


@app.command()
def evaluate(folder: Annotated[Path, typer.Argument(help="A trained model folder or an artifact folder.")],
             task: TasksOpt = ["all"], data_root: DataOpt = None, seed: int = 13) -> None:
    """Validation metrics (headline, per label), thresholds calibrated on validation."""
    cfg = StageConfig(tasks=tasks_of(task), data_root=str(data_root) if data_root else None, seed=seed)
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
def compare(a: Annotated[str, typer.Argument(help="The model shipped now: NAME@VERSION in the store, or an artifact "
                                                  "folder.")],
            b: Annotated[str, typer.Argument(help="The candidate, likewise.")],
            store: Annotated[Path, typer.Option(help="Model store.")] = Path("model-store"),
            data_root: DataOpt = None, seed: int = 13,
            resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
            out: Annotated[Path | None, typer.Option(help="Write the comparison here (JSON).")] = None,
            threads: int | None = None) -> None:
    """Two served models on the same validation rows: each headline metric, B - A, and its paired bootstrap
    90% interval, so a round's change can be told from the splits' noise; the functional suite likewise,
    case by case."""
    from models.runtime import TextClassifier
    from training.compare import compare_models, compare_suite
    from training.functional import DEFAULT_SUITE, case_passes
    from training.recipe import training_examples, validation_config

    root = Path(data_root) if data_root else default_data_root()
    if not root.is_dir():
        raise typer.BadParameter(f"{root} is missing: the comparison scores the validation sets made from it")
    registry = ModelRegistry(store)
    folders = [Path(ref) if Path(ref).is_dir() else registry.get(ref)[1] for ref in (a, b)]
    a_clf, b_clf = (TextClassifier(folder, backend="onnx", threads=threads) for folder in folders)
    tasks = sorted({str(h.task) for clf in (a_clf, b_clf) for h in clf.heads})
    cfg = StageConfig(tasks=tasks, data_root=str(root), seed=seed)
    _, validation, _ = training_examples(validation_config(cfg))
    report = compare_models(a_clf.predict_logits, a_clf.heads, b_clf.predict_logits, b_clf.heads, validation,
                            resamples=resamples, seed=seed, default_threshold=Settings().policy.default_threshold,
                            progress=lambda line: console.print(line))
    if DEFAULT_SUITE.is_file() and all(Task.TOXICITY in {h.task for h in clf.heads} for clf in (a_clf, b_clf)):
        console.print("the functional suite on both, decided as the worker decides")
        passes = [case_passes(folder, threads=threads) for folder in folders]
        report["functional_suite"] = compare_suite(*passes, resamples=resamples, seed=seed)
    console.print(f"A: {a}\nB: {b}")
    metrics = ", ".join(f"{source} {row['metric']}" for source, row in report.items())
    table = Table("set", "A", "B", "B - A", "90% interval", "B ahead", "verdict",
                  caption=f"as served; B - A in points, paired over the same rows ({metrics})")
    for source, row in report.items():
        lo, hi = (100 * x for x in row["delta_interval"])
        table.add_row(source, f"{row['a']:.4f}", f"{row['b']:.4f}", f"{100 * row['delta']:+.2f}",
                      f"{lo:+.2f} to {hi:+.2f}", f"{row['b_better_share']:.0%}", row["verdict"])
    Console().print(table)
    if out is not None:
        dump_json(out, {"a": a, "b": b, "resamples": resamples, "seed": seed, "sets": report})


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
    from training.spans import conda_validation, evaluate_spans

    settings = Settings() if store is None else Settings(models={"store": store})
    serving = load_serving(settings)
    utterances = conda_validation(data_root)
    console.print(f"{len(utterances)} CONDA validation utterances, {sum(sum(u.toxic) for u in utterances)} toxic "
                  f"words; models {serving.refs}")
    bars = Bars()
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
    registry = ModelRegistry(store)
    manifest = registry.add(artifact)
    registry.promote(manifest.ref, tasks=task or None)
    typer.echo(f"{manifest.ref} is current for {task or [str(t) for t in manifest.tasks]} in {store}")
