"""``chatmod train all``: teacher -> DistilBERT and ALBERT students -> evaluate -> export -> register.

Resumable: a stage whose output folder is complete is not run again. The served default per task is
chosen by the measured trade-off (see ``choose_defaults``) and promoted in the store.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from models.artifact import dump_json
from models.labels import Task
from models.registry import ModelRegistry
from training.evaluate import HEADLINE, retention, write_model_card
from training.recipe import (
    StageConfig,
    evaluate_folder,
    export_folder,
    run_distill,
    run_teacher,
    served_facts,
    training_examples,
    validation_config,
)

TASK_METRICS = {Task.TOXICITY: ("olid_macro_f1", "jigsaw_balanced_mean_roc_auc"),
                Task.SENTIMENT: ("semeval_macro_recall", "sst2_accuracy")}


def _done(folder: Path) -> bool:
    return (folder / "chatmod_run.json").is_file() and (folder / "model.safetensors").is_file()


def student_card(name: str, record: dict, artifact: Path, cfg: StageConfig, torch_report: dict,
                 latency_texts: list[str], **extra: object) -> dict:
    """A student's model card: the served artifact judged on validation (with the thresholds calibrated on
    the torch model) and the functional suite, its size, latency and training record; ``extra`` adds to it."""
    served = evaluate_folder(artifact, cfg, (torch_report["thresholds"], torch_report["block_thresholds"]))
    return {
        "name": name, "family": record.get("family"), "parameters": record["parameters"],
        "teacher": record.get("teacher"), "teacher_parameters": record.get("teacher_parameters"),
        **served_facts(artifact, latency_texts, cfg.tasks, cfg.threads),
        "headline": served["headline"], "headline_fp32": torch_report["headline"],
        "thresholds": torch_report["thresholds"], "block_thresholds": torch_report["block_thresholds"],
        "logit_bias": torch_report.get("logit_bias", {}),
        "sets": served["sets"], "init": record.get("init", {}), "data": record["data"],
        "train_seconds": record["result"]["seconds"], "versions": record["versions"], **extra,
    }


def task_score(headline: dict[str, float], task: Task) -> float:
    values = [headline[m] for m in TASK_METRICS[task] if m in headline]
    return sum(values) / len(values) if values else 0.0


def choose_defaults(cards: dict[str, dict], tasks: Sequence[Task], margin: float = 0.01) -> dict[Task, str]:
    """A model per task, chosen by the measured trade-off between quality and serving cost.

    Every assignment of models to tasks is scored by its mean headline score and its latency per
    message (one forward pass per distinct model: a model serving both tasks is paid for once). The
    cheapest assignment within ``margin`` of the best score wins: on two cores, latency is what a
    moderation fleet pays for every message.
    """
    options = []
    for combo in itertools.product(sorted(cards), repeat=len(tasks)):
        quality = sum(task_score(cards[name]["headline"], task) for name, task in zip(combo, tasks)) / len(tasks)
        cost = sum(cards[name]["latency_ms_per_msg"] for name in set(combo))
        options.append((quality, cost, combo))
    best = max(q for q, _, _ in options)
    _, _, combo = min((o for o in options if best - o[0] <= margin), key=lambda o: (o[1], -o[0]))
    return dict(zip(tasks, combo))


def run_all(cfg: StageConfig, out: Path, store: Path | None, base: str = "minilm",
            families: Sequence[str] = ("distilbert", "albert"), teacher_cfg=None,
            progress: Callable[[str], Callable[[int, int, dict], None]] | None = None,
            say: Callable[[str], None] = print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [Task(t) for t in cfg.tasks]
    tag = "mt" if len(tasks) > 1 else tasks[0].value
    teacher_dir = out / "teacher"
    if not _done(teacher_dir):
        say(f"[1/4] fine-tuning the teacher ({base}) on {', '.join(cfg.tasks)}")
        run_teacher(teacher_cfg or cfg, base, teacher_dir, on_step=progress("teacher") if progress else None)
    teacher_report = evaluate_folder(teacher_dir, cfg)
    dump_json(teacher_dir / "eval_report.json", teacher_report)
    say(f"teacher validation: {teacher_report['headline']}")
    _, validation, fingerprints = training_examples(validation_config(cfg))
    texts = [ex.text for exs in validation.values() for ex in exs[:150]]
    cards: dict[str, dict] = {}
    artifacts: dict[str, Path] = {}
    for i, family in enumerate(families):
        student_dir = out / family
        if not _done(student_dir):
            say(f"[{2 + i}/4] distilling the {family} student")
            run_distill(cfg, teacher_dir, family, student_dir, on_step=progress(family) if progress else None)
        record = json.loads((student_dir / "chatmod_run.json").read_text())
        torch_report = evaluate_folder(student_dir, cfg)
        name = f"chatmod-{family}-{tag}"
        version = time.strftime("%Y%m%d") + f".{cfg.seed}"
        artifact = out / "artifacts" / f"{name}@{version}"
        if not (artifact / "manifest.json").is_file():
            export_folder(student_dir, artifact, name, version, torch_report, verify_texts=texts[:400])
        card = student_card(f"{name}@{version}", record, artifact, cfg, torch_report, texts,
                            teacher_headline=teacher_report["headline"])
        card["retention"] = retention(card["headline"], teacher_report["headline"])
        write_model_card(student_dir, card)
        cards[card["name"]] = card
        artifacts[card["name"]] = artifact
    chosen = choose_defaults(cards, tasks)
    summary = {"teacher": teacher_report["headline"], "models": cards, "defaults": {str(k): v for k, v in chosen.items()},
               "headline_metrics": HEADLINE}
    dump_json(out / "summary.json", summary)
    if store is not None:  # the registry numbers versions; cards and defaults name the stored refs
        registry = ModelRegistry(Path(store))
        stored = {ref: registry.add(artifact).ref for ref, artifact in artifacts.items()}
        summary["defaults"] = {task: stored[ref] for task, ref in summary["defaults"].items()}
        summary["registered"] = stored
        for task, ref in summary["defaults"].items():
            registry.promote(ref, tasks=[task])
        dump_json(out / "summary.json", summary)
        say(f"registered in {store}; current: {summary['defaults']}")
    return summary
