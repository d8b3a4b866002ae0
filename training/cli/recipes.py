"""Whole recipes (``strong``, ``all``) and new versions of a stored model without retraining (``requantize``,
``recalibrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.labels import Task
from training.cli.common import (
    Bars,
    CapOpt,
    DataOpt,
    PromoteOpt,
    RefArg,
    RepeatOpt,
    TransferOpt,
    StoreOpt,
    TasksOpt,
    console,
    derived_from,
    promote_like_source,
    stage_config,
    with_caps,
)
from training.export_check import DEFAULT_VERIFY_TEXTS
from training.recipe import StageConfig, evaluate_folder

app = typer.Typer()


@app.command()
def requantize(ref: RefArg, version: Annotated[str, typer.Option(help="Version of the re-exported artifact.")],
               store: StoreOpt = Path("model-store"), promote_: PromoteOpt = False, data_root: DataOpt = None,
               seed: int = 13,
               card: Annotated[Path | None, typer.Option(help="Folder for the model card, written when the data is "
                                                         "there (default: runs/NAME@VERSION).")] = None,
               threads: int | None = None) -> None:
    """Re-export a model with the current int8 export (per-token scales: batch-independent scores; 7-bit
    weights: the same scores on every CPU), evaluate it on validation when the data is there, and register it."""
    import tempfile

    from training.requantize import requantize_artifact

    registry, source, cfg, root = derived_from(ref, store, data_root, seed)

    reports: list[dict] = []

    def evaluate_served(folder: Path, manifest) -> dict:
        tox = next((h for h in manifest.heads if h.task == Task.TOXICITY), None)
        fixed = (tox.thresholds, tox.block_thresholds) if tox else ({}, {})  # the source's rules, as they stand
        task_cfg = StageConfig(tasks=[str(t) for t in manifest.tasks], data_root=cfg.data_root, seed=seed)
        reports.append(evaluate_folder(folder, task_cfg, fixed))
        return reports[-1]

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
    if reports:
        from training.evaluate import write_model_card
        from training.requantize import recalibration_card

        console.print("judging it as served for its model card (latency, the functional suite)")
        card_dir = card or Path("runs") / stored.ref
        write_model_card(card_dir, recalibration_card(registry.get(stored.ref)[1], reports[-1], verify, threads))
        console.print(f"model card: {card_dir / 'MODEL_CARD.md'}")
    if promote_:
        promote_like_source(registry, stored)


@app.command()
def recalibrate(ref: RefArg, version: Annotated[str, typer.Option(help="Version of the recalibrated artifact.")],
                store: StoreOpt = Path("model-store"),
                thresholds: Annotated[bool, typer.Option("--thresholds/--keep-thresholds",
                                                         help="Fit the toxicity thresholds again too.")] = False,
                promote_: PromoteOpt = False, data_root: DataOpt = None, seed: int = 13,
                card: Annotated[Path | None, typer.Option(help="Folder for the model card "
                                                          "(default: runs/NAME@VERSION).")] = None,
                threads: int | None = None) -> None:
    """Fit a model's decision rules again on validation, as served (int8): the sentiment head's logit
    offsets (balanced recall), and with --thresholds the toxicity thresholds. Same weights, new version,
    and a model card judging it as served (validation and the functional suite)."""
    import tempfile

    from training.evaluate import write_model_card
    from training.recipe import check_texts, training_examples, validation_config
    from training.requantize import recalibrate_artifact, recalibration_card

    registry, source, cfg, root = derived_from(ref, store, data_root, seed)
    if not root.is_dir():
        raise typer.BadParameter(f"{root} is missing: recalibration fits on the validation sets made from it")
    _, validation, _ = training_examples(validation_config(cfg))
    with tempfile.TemporaryDirectory(prefix="chatmod-recalibrate-") as tmp:
        manifest, served = recalibrate_artifact(source, Path(tmp) / "artifact", version, validation,
                                                thresholds=thresholds)
        stored = registry.add(Path(tmp) / "artifact", version=str(version))
    sentiment = next((h for h in manifest.heads if h.task == Task.SENTIMENT), None)
    console.print(f"registered {stored.ref}; sentiment offsets {sentiment.logit_bias if sentiment else '-'}; "
                  f"validation {manifest.metrics['validation']} (was {manifest.metrics['validation_source']})")
    console.print("judging it as served for its model card (latency, the functional suite)")
    card_dir = card or Path("runs") / stored.ref
    write_model_card(card_dir, recalibration_card(registry.get(stored.ref)[1], served, check_texts(validation),
                                                  threads))
    console.print(f"model card: {card_dir / 'MODEL_CARD.md'}")
    if promote_:
        promote_like_source(registry, stored)


@app.command()
def strong(out: Annotated[Path, typer.Option(help="Run folder (resumable).")] = Path("runs/strong"),
           store: Annotated[Path, typer.Option(help="Model store: students start from its models, results go there.")] = Path("model-store"),
           base: Annotated[str, typer.Option(help="The teacher's encoder: mpnet, minilm, or any HF id or folder.")] = "mpnet",
           labels: Annotated[list[Path] | None, typer.Option(help="Stored soft labels to distil from (skips teacher and "
                                                              "labeling; repeatable: a text's come from the first "
                                                              "file that holds it).")] = None,
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
           cap: CapOpt = None, repeat: RepeatOpt = None, transfer: TransferOpt = None,
           albert_repetitions: Annotated[int | None, typer.Option(help="Passes through the ALBERT student's shared "
                                                                      "layer (default: as the model it starts from).")] = None,
           albert_vocab: Annotated[int | None, typer.Option(help="Prune the ALBERT student's WordPiece vocabulary to "
                                                                "the N pieces its training texts use most.")] = None,
           albert_groups: Annotated[int | None, typer.Option(help="Layer groups of the ALBERT student, each starting "
                                                                 "as a copy of its shared layer.")] = None,
           albert_ffn: Annotated[int | None, typer.Option(help="Feed-forward units of the ALBERT student's shared "
                                                               "layer, widened from its own (the new ones start "
                                                               "as copies of old ones).")] = None,
           warm_start: Annotated[list[str] | None, typer.Option(help="NAME@VERSION a student starts from, one per "
                                                                     "family (default: the serving one, else the "
                                                                     "newest).")] = None,
           layer_teacher: Annotated[str | None, typer.Option(help="NAME@VERSION of a stored model of the students' "
                                                                  "width, heads and vocabulary whose hidden states "
                                                                  "and attention they learn to follow, layer by "
                                                                  "layer.")] = None,
           alpha_hidden: Annotated[float, typer.Option(help="Weight of the layer-wise hidden-state cosine "
                                                            "(with --layer-teacher).")] = 1.0,
           alpha_attn: Annotated[float, typer.Option(help="Weight of the layer-wise attention KL "
                                                          "(with --layer-teacher).")] = 1.0,
           layer_map: Annotated[str, typer.Option(help="Which student layers follow the layer teacher: depth "
                                                       "(each the teacher layer at its depth) or last (the "
                                                       "last alone).")] = "depth") -> None:
    """The strong-teacher recipe: teacher, soft labels, both students distilled from them, evaluated,
    exported and registered; resumable, and the same on a lent GPU."""
    from training.recipe import scaled
    from training.strong import run_strong

    teacher_cfg = stage_config(task, data_root, teacher_epochs, 32, teacher_lr, max_length, seed, threads, precision=precision)
    student_cfg = with_caps(scaled(stage_config(task, data_root, student_epochs, 32, student_lr, max_length, seed,
                                                threads, precision=precision, alpha_cos=0.0,
                                                **({"alpha_hidden": alpha_hidden, "alpha_attn": alpha_attn,
                                                    "layer_map": layer_map} if layer_teacher else {})), scale),
                             cap, repeat, transfer)
    bars = Bars()
    with bars.progress:
        summary = run_strong(out, store, teacher_cfg, student_cfg, base=base, labels=labels, version=version,
                             promote=promote_, soft_tasks=[Task(t).value for t in soft_task] if soft_task else None,
                             families=tuple(family or ("distilbert", "albert")), albert_repetitions=albert_repetitions,
                             albert_vocab=albert_vocab, albert_groups=albert_groups, albert_ffn=albert_ffn,
                             warm_start=warm_start or (),
                             layer_teacher=layer_teacher,
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


@app.command()
def soup(members: Annotated[list[str], typer.Argument(help="Two or more models of one shape: NAME@VERSION in the "
                                                           "store, artifact folders or trained model folders.")],
         version: Annotated[str, typer.Option(help="Version of the soup's artifact.")],
         out: Annotated[Path, typer.Option(help="Run folder: the averaged model, its card and artifact.")] = Path("runs/soup"),
         store: StoreOpt = Path("model-store"),
         weight: Annotated[list[float] | None, typer.Option(help="One weight per member, in order (default: "
                                                                 "uniform).")] = None,
         promote_: PromoteOpt = False, data_root: DataOpt = None, seed: int = 13, threads: int | None = None) -> None:
    """Average the weights of models of one shape (a model soup: rounds warm-started from one model), then
    evaluate, export and register the average like any student, with its card and functional suite."""
    import tempfile

    from models.artifact import read_manifest
    from models.registry import ModelRegistry
    from training.recipe import check_texts, training_examples, validation_config
    from training.requantize import model_folder
    from training.soup import heads_of_artifact, make_soup
    from training.strong import finish_student

    registry = ModelRegistry(store)
    stored = [registry.get(m)[1] if not Path(m).is_dir() else Path(m) for m in members]
    artifacts = [p for p in stored if (p / "manifest.json").is_file()]
    if not artifacts:
        raise typer.BadParameter("name at least one stored model or artifact: the soup takes its name from it")
    manifest = read_manifest(artifacts[0])
    cfg = StageConfig(tasks=[str(t) for t in manifest.tasks], data_root=str(data_root) if data_root else None,
                      seed=seed, threads=threads)
    _, validation, _ = training_examples(validation_config(cfg))
    if not validation:
        raise typer.BadParameter("no validation data: a soup's thresholds are fitted on it (--data-root)")
    with tempfile.TemporaryDirectory(prefix="chatmod-soup-") as tmp:
        folders = [model_folder(p, registry.store, Path(tmp) / str(i))[0] for i, p in enumerate(stored)]
        console.print(f"averaging {len(members)} models: {', '.join(members)}")
        make_soup(folders, members, out / "soup", weight, heads=heads_of_artifact(artifacts[0]),
                  family=manifest.family)
    console.print("evaluating, exporting and judging the soup as served (int8)")
    card, artifact = finish_student(out / "soup", out / "artifacts", manifest.name, version, cfg,
                                    check_texts(validation), soup_of=members)
    added = registry.add(artifact, version=version)
    functional = card.get("functional") or {"overall": float("nan"), "worst": {"name": "-", "pass_rate": float("nan")}}
    console.print(f"registered {added.ref}: validation {card['headline']}; functional suite "
                  f"{functional['overall']:.1%} (worst {functional['worst']['name']} "
                  f"{functional['worst']['pass_rate']:.0%})")
    if promote_:
        promote_like_source(registry, added)


@app.command("all")
def all_(out: Annotated[Path, typer.Option(help="Run folder (resumable).")] = Path("runs/latest"),
         store: Annotated[Path | None, typer.Option(help="Model store to register into.")] = Path("model-store"),
         task: TasksOpt = ["all"], data_root: DataOpt = None, base: str = "minilm",
         teacher_epochs: float = 2.0, student_epochs: float = 1.0, teacher_lr: float = 1e-4, student_lr: float = 1e-4,
         seed: int = 13, threads: int | None = None) -> None:
    """The whole recipe: teacher, both students, evaluation, export, registration, default choice."""
    from training.train_all import run_all

    cfg = stage_config(task, data_root, student_epochs, 32, student_lr, 96, seed, threads)
    teacher_cfg = stage_config(task, data_root, teacher_epochs, 32, teacher_lr, 96, seed, threads)
    bars = Bars()
    with bars.progress:
        summary = run_all(cfg, out, store, base=base, teacher_cfg=teacher_cfg, progress=bars, say=console.print)
    table = Table("model", "params", "MB", "ms/msg", *summary["teacher"].keys(), title="validation (served int8)")
    table.add_row("teacher", "", "", "", *(f"{v:.4f}" for v in summary["teacher"].values()))
    for name, card in summary["models"].items():
        table.add_row(name, f"{card['parameters']:,}", f"{card['size_bytes'] / 1e6:.1f}", f"{card['latency_ms_per_msg']:.2f}",
                      *(f"{card['headline'].get(k, float('nan')):.4f}" for k in summary["teacher"]))
    Console().print(table)
    Console().print(f"served defaults: {summary['defaults']}")
