"""``chatmod train strong``: the strong-teacher recipe, resumable stage by stage, CPU or a lent GPU alike.

1. teacher: ``--base`` (default all-mpnet-base-v2) fine-tuned on the recipe's data (bf16 where native);
2. label: its soft labels over the students' training texts, stored once (commit them);
3. students: each current student (DistilBERT, ALBERT) warm-started from its artifact and distilled from
   the stored labels plus the hard labels;
4. evaluate (validation and the functional suite, served int8), export, model cards, register; the served
   default per task chosen as ``chatmod train all`` chooses it, and promoted when asked.

A stage whose output exists is not run again, so a session that ran out of time resumes where it stopped,
and soft labels committed by one session let the next one skip stages 1 and 2.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from models.artifact import dump_json, read_manifest
from models.labels import Task
from models.registry import ModelRegistry
from training.evaluate import write_model_card
from training.export_check import ExportTolerance
from training.recipe import (
    StageConfig,
    check_texts,
    evaluate_folder,
    export_folder,
    run_distill_from_labels,
    run_teacher,
    training_examples,
    validation_config,
)
from training.soft_labels import label_recipe

Progress = Callable[[str], Callable[[int, int, dict], None]]
WARM_START_INT8 = ExportTolerance(max_abs_logit_diff=1.0, min_agreement=0.98)


def run_strong(out: Path, store: Path, teacher_cfg: StageConfig, student_cfg: StageConfig, *,
               base: str = "mpnet", labels: Path | Sequence[Path] | None = None, version: str | None = None,
               families: Sequence[str] = ("distilbert", "albert"), promote: bool = False,
               soft_tasks: Sequence[str] | None = None, int8_tolerance: ExportTolerance = WARM_START_INT8,
               albert_repetitions: int | None = None, albert_vocab: int | None = None,
               albert_groups: int | None = None, albert_ffn: int | None = None, warm_start: Sequence[str] = (),
               layer_teacher: str | None = None,
               progress: Progress | None = None, say: Callable[[str], None] = print) -> dict:
    """Run the stages that are not done yet; returns the summary (also written to ``out/summary.json``).

    Each student starts from the stored model of its family named in ``warm_start`` (NAME@VERSION), else
    from the one serving a task, else from the newest. ``layer_teacher`` (NAME@VERSION): a stored model of the
    students' width, heads and vocabulary whose layers they learn to follow (``run_distill_from_labels``)."""
    from training.train_all import choose_defaults

    student_cfg.train.validate()  # before any teacher or labeling work
    if layer_teacher is not None and not student_cfg.train.layerwise:
        raise ValueError("a layer teacher needs the student config's alpha_hidden or alpha_attn above 0")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(Path(store))
    labels = [Path(labels)] if isinstance(labels, str | Path) else [Path(p) for p in labels or ()]
    if not labels:  # the teacher's, made here (unless an earlier run made them)
        labels = [out / "soft_labels.npz"]
        if not labels[0].is_file():
            _teacher_labels(out / "teacher", labels[0], base, teacher_cfg, student_cfg, progress, say)
    _, validation, _ = training_examples(validation_config(student_cfg))
    verify = check_texts(validation)
    cards: dict[str, dict] = {}
    artifacts: dict[str, Path] = {}
    chosen_init = _warm_starts(registry, warm_start, families)
    for family in families:
        card, artifact = _student(out, registry, family, labels, student_cfg, verify, version, soft_tasks,
                                  int8_tolerance, progress, say, current=chosen_init.get(family),
                                  layer_teacher=layer_teacher,
                                  reshape=({"repetitions": albert_repetitions, "vocab_size": albert_vocab,
                                            "groups": albert_groups, "ffn": albert_ffn}
                                           if family == "albert" else {}))
        cards[card["name"]] = card
        artifacts[card["name"]] = artifact
    tasks = [Task(t) for t in student_cfg.tasks]
    chosen = choose_defaults(cards, tasks)
    stored = {ref: registry.add(path, version=ref.split("@")[1]).ref if not _stored(registry, ref) else ref
              for ref, path in artifacts.items()}
    summary = {"labels": str(labels[0]) if len(labels) == 1 else [str(p) for p in labels], "models": cards, "registered": stored,
               "defaults": {str(t): stored[ref] for t, ref in chosen.items()}, "promoted": False}
    if promote:
        for task, ref in summary["defaults"].items():
            registry.promote(ref, tasks=[task])
        summary["promoted"] = True
    dump_json(out / "summary.json", summary)
    return summary


def _teacher_labels(teacher_dir: Path, labels: Path, base: str, teacher_cfg: StageConfig,
                    student_cfg: StageConfig, progress: Progress | None, say: Callable[[str], None]) -> None:
    """Steps 1 and 2: the teacher (unless one is there already), then its soft labels on the students' texts."""
    if not (teacher_dir / "chatmod_run.json").is_file():  # a teacher trained elsewhere may be put here
        say(f"[1/4] fine-tuning the teacher ({base})")
        run_teacher(teacher_cfg, base, teacher_dir, on_step=progress("teacher") if progress else None)
    say(f"[2/4] labeling the students' training texts with {teacher_dir}")
    step = progress("label") if progress else None
    label_recipe(teacher_dir, student_cfg, labels, teacher_cfg.train.precision,
                 progress=(lambda done, total: step(done, total, {})) if step else None)


def _student(out: Path, registry: ModelRegistry, family: str, labels: Sequence[Path], student_cfg: StageConfig,
             verify: list[str], version: str | None, soft_tasks: Sequence[str] | None,
             int8_tolerance: ExportTolerance, progress: Progress | None,
             say: Callable[[str], None], current: str | None = None,
             reshape: dict | None = None, layer_teacher: str | None = None) -> tuple[dict, Path]:
    """Steps 3 and 4 for one family: distil (unless done), evaluate, export (unless done); (card, artifact)."""
    from training.requantize import model_folder

    current = current or _current_of(registry, family)
    student_dir = out / family
    if not (student_dir / "chatmod_run.json").is_file():
        say(f"[3/4] distilling the {family} student from {', '.join(map(str, labels))}, warm-started from {current}")
        with tempfile.TemporaryDirectory(prefix="chatmod-strong-") as tmp:
            init, _ = model_folder(current, registry.store, Path(tmp) / "init")
            guide = model_folder(layer_teacher, registry.store, Path(tmp) / "layers")[0] if layer_teacher else None
            run_distill_from_labels(student_cfg, labels, init, student_dir, family=family, soft_tasks=soft_tasks,
                                    init_heads=read_manifest(registry.get(current)[1]).heads,
                                    **(reshape or {}), layer_teacher=guide,
                                    on_step=progress(family) if progress else None)
    say(f"[4/4] evaluating and exporting the {family} student")
    record = json.loads((student_dir / "chatmod_run.json").read_text())
    name = read_manifest(registry.get(current)[1]).name
    return finish_student(student_dir, out / "artifacts", name, version or time.strftime("%Y%m%d"), student_cfg,
                          verify, int8_tolerance, warm_start=current, soft_labels=record.get("soft_labels"),
                          soft_label_coverage=record.get("soft_label_coverage"),
                          **({"layer_teacher": layer_teacher} if layer_teacher else {}))


def finish_student(model_dir: Path, artifacts: Path, name: str, tag: str, cfg: StageConfig, verify: list[str],
                   int8_tolerance: ExportTolerance = WARM_START_INT8, **extra: object) -> tuple[dict, Path]:
    """A trained model folder evaluated (torch, for its thresholds), exported to ``artifacts/NAME@TAG`` (unless
    there already) and judged as served in its model card; (card, artifact)."""
    from training.train_all import student_card

    record = json.loads((model_dir / "chatmod_run.json").read_text())
    torch_report = evaluate_folder(model_dir, cfg)
    artifact = Path(artifacts) / f"{name}@{tag}"
    if not (artifact / "manifest.json").is_file():
        # A student warm-started from an int8 artifact and fine-tuned again drifts a little further from
        # int8 (measured: 0.58 at most over 400 validation texts, 99.9% of decisions agreeing, with every
        # feed-forward output in fp32); the served model is what is judged below, on validation and
        # the functional suite, so decisions must agree (98%) and logits may move up to 1.0.
        export_folder(model_dir, artifact, name, tag, torch_report, verify_texts=verify,
                      int8_tolerance=int8_tolerance)
    card = student_card(f"{name}@{tag}", record, artifact, cfg, torch_report, verify, **extra)
    write_model_card(model_dir, card)
    return card, artifact


def _warm_starts(registry: ModelRegistry, refs: Sequence[str], families: Sequence[str]) -> dict[str, str]:
    """``{family: ref}`` for the stored models named to start from (their family read from their manifests)."""
    chosen: dict[str, str] = {}
    for ref in refs:
        family = read_manifest(registry.get(ref)[1]).family
        if family not in families:
            raise ValueError(f"--warm-start {ref} is a {family} model; the run makes {list(families)}")
        if family in chosen:
            raise ValueError(f"--warm-start names two {family} models: {chosen[family]} and {ref}")
        chosen[family] = ref
    return chosen


def _current_of(registry: ModelRegistry, family: str) -> str:
    """The newest stored model of ``family`` (the current one where it serves a task)."""
    current = {registry.current(t) for t in Task} - {None}
    refs = [m for m in registry.manifests() if m.family == family and not m.name.startswith(".")]
    serving = [m.ref for m in refs if m.ref in current]
    if serving:
        return serving[0]
    if not refs:
        raise ValueError(f"the store {registry.store} holds no {family} model to warm-start from")
    return refs[-1].ref


def _stored(registry: ModelRegistry, ref: str) -> bool:
    try:
        registry.get(ref)
        return True
    except Exception:  # noqa: BLE001 - RegistryError or a missing folder: not stored
        return False
