"""The recipe's stages as functions the CLI calls: teacher, distill. Each writes a run folder with the
model (safetensors), the tokenizer, its config, the seed, package versions and the loss log."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from models.artifact import Head, contract_heads
from models.labels import Task
from training.data import DEFAULT_SOURCES, Example, load_splits, stratified_split
from training.distill import TrainConfig, train
from training.export_check import DEFAULT_VERIFY_TEXTS
from training.students import (
    albert_from_teacher,
    count_parameters,
    distilbert_from_teacher,
    fit_heads,
    load_pretrained_classifier,
    resolve_pretrained,
)

# Per-source caps for one training pass: keeps the recipe inside an hour on two CPU cores while every
# set contributes. OLID is kept whole: it is the headline toxicity benchmark.
DEFAULT_CAPS: dict[str, int] = {
    "olid": 20000, "jigsaw": 6000, "davidson": 6000, "conda": 6000, "convabuse": 2000,
    "kaggle_insults": 3000, "hateval": 5000, "semeval": 20000, "sst2": 8000,
}
# Times a source's training split is repeated per epoch. OLID is seen twice: it is the headline
# toxicity set and the one whose notion of "offensive" is closest to chat moderation, while the
# pooled sets (Davidson above all) label far more of their tweets toxic than OLID would.
DEFAULT_REPEATS: dict[str, int] = {"olid": 2}


@dataclass
class StageConfig:
    tasks: list[str] = field(default_factory=lambda: [Task.TOXICITY.value, Task.SENTIMENT.value])
    data_root: str | None = None
    caps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    repeats: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_REPEATS))
    seed: int = 13
    threads: int | None = None
    val_cap: int | None = None  # per validation set, for quick runs; None = the whole split
    augment: bool = True  # templates, counterfactual identity swaps, misspelt abuse (training/augment.py)
    transfer: dict[str, int] = field(default_factory=dict)  # unlabeled texts per transfer set (training/transfer.py)
    train: TrainConfig = field(default_factory=TrainConfig)


def package_versions() -> dict[str, str]:
    names = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "chatmod")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def training_examples(cfg: StageConfig) -> tuple[list[Example], dict[str, list[Example]], dict[str, str]]:
    sources = [s for t in cfg.tasks for s in DEFAULT_SOURCES[Task(t)]]
    train_ex: list[Example] = []
    validation: dict[str, list[Example]] = {}
    fingerprints: dict[str, str] = {}
    for name in sources:
        splits = load_splits(cfg.data_root, [name], seed=cfg.seed, max_train_per_source=cfg.caps.get(name))
        train_ex.extend(splits.train * max(1, cfg.repeats.get(name, 1)))
        for source, val in splits.validation.items():
            if cfg.val_cap is not None and len(val) > cfg.val_cap:
                _, val = stratified_split(val, cfg.val_cap / len(val), cfg.seed)
            validation[source] = val
        fingerprints.update(splits.fingerprints)
    if cfg.augment and Task.TOXICITY.value in cfg.tasks and train_ex:
        from training.augment import augmented

        train_ex.extend(augmented([ex for ex in train_ex if ex.toxicity is not None], cfg.seed))
    if cfg.transfer:
        from training.transfer import transfer_examples

        labeled = frozenset(ex.text for ex in train_ex) | {ex.text for val in validation.values() for ex in val}
        unlabeled, transfer_prints = transfer_examples(cfg.transfer, cfg.seed, exclude=labeled)
        train_ex.extend(unlabeled)
        fingerprints.update(transfer_prints)
    return train_ex, validation, fingerprints


def _save(model: PreTrainedModel, tokenizer, out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "chatmod_run.json").write_text(json.dumps(record, indent=2, default=str))


def _setup(cfg: StageConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)


def run_teacher(cfg: StageConfig, base: str, out: Path,
                on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Fine-tune a pretrained encoder (``base``: HF id or folder, or ``minilm``) with one head per task."""
    if cfg.transfer:
        raise ValueError("a teacher learns from labeled data only: transfer sets are for its students")
    _setup(cfg)
    heads = contract_heads([Task(t) for t in cfg.tasks])
    examples, _, fingerprints = training_examples(cfg)
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(base))
    model = load_pretrained_classifier(base, sum(h.width for h in heads))
    out.mkdir(parents=True, exist_ok=True)
    result = train(model, heads, examples, tokenizer, cfg.train, log_path=out / "train_log.jsonl", on_step=on_step,
                   checkpoint=out / "checkpoint")
    record = {"stage": "teacher", "base": base, "heads": [h.model_dump(mode="json") for h in heads],
              "config": asdict(cfg), "versions": package_versions(), "data": fingerprints,
              "n_train": len(examples), "parameters": count_parameters(model), "result": asdict(result),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _save(model, tokenizer, out, record)
    return record


def load_model(folder: Path) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def run_distill(cfg: StageConfig, teacher_dir: Path, family: str, out: Path, layers: Sequence[int] | None = None,
                n_layers: int = 3, embedding_size: int = 64, repetitions: int = 3, shared_from: int | None = None,
                on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Build a student from the teacher (``family``: distilbert or albert) and distil it."""
    _setup(cfg)
    teacher_record = json.loads((Path(teacher_dir) / "chatmod_run.json").read_text())
    heads = contract_heads([Task(h["task"]) for h in teacher_record["heads"]])
    teacher = load_model(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    init: dict = {}
    if family == "distilbert":
        student = distilbert_from_teacher(teacher, n_layers=n_layers, layers=list(layers) if layers else None)
    elif family == "albert":
        student, err = albert_from_teacher(teacher, embedding_size, repetitions, shared_from)
        init["svd_relative_error"] = err
    else:
        raise ValueError(f"family must be distilbert or albert, got {family!r}")
    init.update(getattr(student.config, "chatmod_init", {}))
    examples, _, fingerprints = training_examples(cfg)
    out.mkdir(parents=True, exist_ok=True)
    result = train(student, heads, examples, tokenizer, cfg.train, teacher=teacher,
                   log_path=out / "train_log.jsonl", on_step=on_step, checkpoint=out / "checkpoint")
    record = {"stage": "distill", "family": family, "teacher": str(teacher_dir), "init": init,
              "heads": [h.model_dump(mode="json") for h in heads], "config": asdict(cfg),
              "versions": package_versions(), "data": fingerprints, "n_train": len(examples),
              "parameters": count_parameters(student), "teacher_parameters": count_parameters(teacher),
              "result": asdict(result), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _save(student, tokenizer, out, record)
    return record


def run_distill_from_labels(cfg: StageConfig, labels_path: Path | Sequence[Path], init_dir: Path, out: Path,
                            family: str | None = None, soft_tasks: Sequence[str] | None = None,
                            init_heads: Sequence | None = None, repetitions: int | None = None,
                            vocab_size: int | None = None, groups: int | None = None, ffn: int | None = None,
                            layer_teacher: Path | None = None,
                            on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Distil a student initialised from ``init_dir`` (e.g. a shipped student, rebuilt) from a stored
    teacher's soft labels (``training/soft_labels.py``) plus the hard labels: a teacher of another size and
    tokenizer, paid for once. ``init_heads``: the heads ``init_dir`` was trained with, where the contract
    has grown since (its output rows are laid out again, see ``training.students.fit_heads``).
    ``repetitions``: an ALBERT student's passes through its shared layer, where they should change (more
    depth at no parameter cost, the ALBERT paper's trade). ``vocab_size``: the student's WordPiece vocabulary
    pruned to the pieces its training texts use most; ``groups``: an ALBERT student's layer groups, each
    starting as a copy of its shared layer; ``ffn``: its shared layers' feed-forward units, the new ones
    copies of old ones (``training/vocab.py``: the budget a pruned table frees).
    ``layer_teacher``: a model folder of the student's width, heads and vocabulary whose hidden states and
    self-attention the student learns to follow, layer by layer (``cfg.train.alpha_hidden``, ``alpha_attn``):
    the stored labels teach what to answer, the layer teacher how to get there."""
    from training.soft_labels import SoftLabels

    _setup(cfg)
    heads = contract_heads([Task(t) for t in cfg.tasks])
    labels = SoftLabels(labels_path)
    soft_heads = [h for h in heads if soft_tasks is None or h.task.value in soft_tasks]
    if not soft_heads:
        raise ValueError(f"soft_tasks {list(soft_tasks or [])} name none of the tasks {cfg.tasks}")
    examples, _, fingerprints = training_examples(cfg)
    targets = labels.for_heads([ex.text for ex in examples], heads, soft_heads)
    covered = sum(t is not None for t in targets) / len(targets)
    unlabeled = sum(1 for ex, t in zip(examples, targets, strict=True) if t is None and ex.source in cfg.transfer)
    if unlabeled:  # no hard label either: such a text would teach nothing
        raise ValueError(f"{unlabeled} transfer texts ({', '.join(cfg.transfer)}) have no soft labels in {labels_path}: "
                         "label them (chatmod train label --transfer ... --transfer-only) and pass both files")
    student = load_model(init_dir)
    added: list[str] = []
    if student.config.num_labels != sum(h.width for h in heads):
        if init_heads is None:
            raise ValueError(f"{init_dir} has {student.config.num_labels} outputs, the tasks need "
                             f"{sum(h.width for h in heads)}; pass the heads it was trained with")
        added = fit_heads(student, init_heads, heads)  # labels appended to the contract since it was trained
    init = {"from": str(init_dir), **({"labels_added": added} if added else {})}
    if repetitions is not None:
        if student.config.model_type != "albert" or repetitions < 1:
            raise ValueError(f"repetitions apply to an ALBERT student (>= 1), not {student.config.model_type} "
                             f"with {repetitions}")
        init["repetitions"] = {"from": student.config.num_hidden_layers, "to": repetitions}
        student.config.num_hidden_layers = repetitions  # one shared layer, applied this many times
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    shape = {"vocab_size": vocab_size, "groups": groups, "ffn": ffn}
    if any(value is not None for value in shape.values()):
        tokenizer, init["reshaped"] = _reshaped(student, init_dir, [ex.text for ex in examples], tokenizer, **shape)
    guide = _layer_teacher(layer_teacher, tokenizer) if layer_teacher is not None else None
    if guide is not None:
        init["layer_teacher"] = str(layer_teacher)
    out.mkdir(parents=True, exist_ok=True)
    result = train(student, heads, examples, tokenizer, cfg.train, log_path=out / "train_log.jsonl",
                   on_step=on_step, soft_targets=targets, soft_heads=soft_heads, checkpoint=out / "checkpoint",
                   layer_teacher=guide)
    record = {"stage": "distill", "family": family or student.config.model_type,
              "teacher": labels.meta.get("teacher", str(labels_path)), "soft_labels": labels.source,
              "soft_label_coverage": round(covered, 4), "soft_tasks": [h.task.value for h in soft_heads],
              "init": init,
              "heads": [h.model_dump(mode="json") for h in heads], "config": asdict(cfg),
              "versions": package_versions(), "data": fingerprints, "n_train": len(examples),
              "parameters": count_parameters(student), "teacher_parameters": labels.meta.get("teacher_parameters"),
              "result": asdict(result), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _save(student, tokenizer, out, record)
    return record


def _layer_teacher(folder: Path, tokenizer) -> PreTrainedModel:
    """The model in ``folder``, checked to read the student's token ids as the student does."""
    theirs = AutoTokenizer.from_pretrained(folder).get_vocab()
    if theirs != tokenizer.get_vocab():
        raise ValueError(f"the layer teacher {folder} has another vocabulary ({len(theirs)} pieces, the student "
                         f"{len(tokenizer.get_vocab())}): its layers cannot read the student's token ids")
    return load_model(folder)


def _reshaped(student: PreTrainedModel, init_dir: Path, texts: Sequence[str], tokenizer, **shape: int | None):
    """``student`` reshaped in place (``training.vocab.reshape_for_chat``'s ``shape`` keywords); (its tokenizer,
    what changed)."""
    import shutil
    import tempfile

    from training.vocab import reshape_for_chat

    changed, pruned = reshape_for_chat(student, init_dir, texts, **shape)
    if pruned is None:
        return tokenizer, changed
    with tempfile.TemporaryDirectory(prefix="chatmod-vocab-") as tmp:
        pruned.save(str(Path(tmp) / "tokenizer.json"))
        if (Path(init_dir) / "tokenizer_config.json").is_file():
            shutil.copy(Path(init_dir) / "tokenizer_config.json", tmp)
        return AutoTokenizer.from_pretrained(tmp), changed


# ---------------------------------------------------------------- evaluate, export, register


def scaled(cfg: StageConfig, scale: float) -> StageConfig:
    """``cfg`` with every set's cap times ``scale`` (a share of the recipe's data)."""
    from dataclasses import replace

    return replace(cfg, caps={k: max(1, int(v * scale)) for k, v in DEFAULT_CAPS.items()})


def check_texts(validation: dict[str, list[Example]], per_set: int = 100, limit: int = 400) -> list[str]:
    """Real texts to check an export on: the first ``per_set`` of every validation set, ``limit`` in all."""
    return [ex.text for exs in validation.values() for ex in exs[:per_set]][:limit]


def validation_config(cfg: StageConfig) -> StageConfig:
    """The same data and seed, but no training examples: only the validation splits are wanted."""
    return StageConfig(tasks=cfg.tasks, data_root=cfg.data_root, caps={k: 1 for k in cfg.caps}, seed=cfg.seed,
                       val_cap=cfg.val_cap, augment=False)


def evaluate_folder(folder: Path, cfg: StageConfig, thresholds: tuple[dict, dict] | None = None) -> dict:
    """Validation report for a saved HF model folder (torch) or an artifact folder (the served runtime)."""
    from training.evaluate import evaluate, torch_predictor

    folder = Path(folder)
    _, validation, _ = training_examples(validation_config(cfg))
    if (folder / "manifest.json").is_file():
        from models.runtime import TextClassifier

        clf = TextClassifier(folder, backend="onnx", threads=cfg.threads)
        heads = clf.heads
        report = evaluate(clf.predict_logits, heads, validation, thresholds)
    else:
        record = json.loads((folder / "chatmod_run.json").read_text())

        heads = [Head.model_validate(h) for h in record["heads"]]
        report = evaluate(torch_predictor(load_model(folder), AutoTokenizer.from_pretrained(folder)), heads,
                          validation, thresholds)
    return report


def served_facts(artifact: Path, latency_texts: list[str], tasks, threads: int | None = None) -> dict:
    """What a model card says of a served artifact besides its validation scores: its size on disk, its
    latency per message, and the functional suite's report (where it serves toxicity and the suite is there)."""
    from training.functional import evaluate_if_available

    artifact = Path(artifact)
    facts = {"size_bytes": sum(p.stat().st_size for p in artifact.iterdir() if p.is_file()),
             "latency_ms_per_msg": round(measure_latency(artifact, latency_texts, threads), 3)}
    functional = evaluate_if_available(artifact, tasks, threads)
    if functional is not None:
        facts["functional"] = functional
    return facts


def measure_latency(artifact: Path, texts: list[str], threads: int | None = None, batch: int = 32) -> float:
    """Milliseconds per message through the served runtime (int8 ONNX), batches of ``batch``."""
    from models.runtime import TextClassifier

    clf = TextClassifier(artifact, backend="onnx", threads=threads, max_batch=batch)
    clf.predict(texts[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        clf.predict(texts[i : i + batch])
    return (time.perf_counter() - started) * 1000.0 / max(1, len(texts))


def export_folder(model_dir: Path, out: Path, name: str, version: str, report: dict,
                  formats: Sequence[str] = ("onnx_int8",), verify_texts: Sequence[str] | None = None,
                  int8_tolerance=None) -> Path:  # training.export.ExportTolerance
    """Build a verified artifact (thresholds and sentiment offsets from the validation report) from a trained
    model folder."""
    from training.export import build_artifact

    record = json.loads((Path(model_dir) / "chatmod_run.json").read_text())
    heads = []
    for h in record["heads"]:
        head = Head.model_validate(h)
        if head.task == Task.TOXICITY:
            head = head.model_copy(update={"thresholds": report["thresholds"],
                                           "block_thresholds": report["block_thresholds"]})
        if head.task == Task.SENTIMENT and "logit_bias" in report:
            head = head.model_copy(update={"logit_bias": report["logit_bias"]})
        heads.append(head.model_copy(update={"metrics": {k: v for k, v in report["headline"].items()}}))
    build_artifact(
        Path(model_dir), Path(out), name=name, version=version, heads=heads,
        family=record.get("family") or None, base_model=record.get("teacher") or record.get("base"),
        training={"stage": record["stage"], "config": record["config"], "versions": record["versions"],
                  "data": record["data"], "init": record.get("init", {}), "n_train": record["n_train"]},
        metrics={"validation": report["headline"]}, formats=formats,
        verify_texts=list(verify_texts or DEFAULT_VERIFY_TEXTS),
        **({"int8_tolerance": int8_tolerance} if int8_tolerance is not None else {}),
    )
    return Path(out)
