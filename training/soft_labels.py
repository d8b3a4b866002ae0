"""A teacher's soft labels, stored once and distilled from many times.

The strong teacher (all-mpnet-base-v2, 110M parameters) costs about 20 ms per text forward on two CPU
cores. Running it inside every student's training loop would pay that again for every student and every
epoch; instead ``label`` runs it once over the recipe's training texts and stores its logits. The file is
small enough to commit (texts' SHA-256 prefixes and float16 logits: about 26 bytes a text), so a later
session, or a machine without the teacher, distils students from it: ``train(..., soft_targets=...)``.
It is also the way to distil across tokenizers: the teacher reads each text with its own.

Format: ``<name>.npz`` with ``keys`` (n, 8) uint8 (the first 8 bytes of sha256(text)) and ``logits``
(n, num_logits) float16, and ``<name>.json`` beside it: teacher, heads, data fingerprints, recipe.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from models.artifact import Head

KEY_BYTES = 8


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:KEY_BYTES]


def label_texts(model_dir: Path, texts: Sequence[str], max_length: int = 96, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None, precision: str = "fp32") -> np.ndarray:
    """The teacher's logits ``(len(texts), num_labels)`` (float32), length-sorted batches, input order, on a
    lent GPU where there is one. ``precision="bf16"`` (or "auto" where native) runs the matmuls in bfloat16."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.evaluate import torch_predictor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    predict = torch_predictor(model, AutoTokenizer.from_pretrained(model_dir), max_length, batch_size, precision,
                              progress)
    return predict(list(texts))


def label_recipe(teacher_dir: Path, cfg, out: Path, precision: str = "auto",
                 progress: Callable[[int, int], None] | None = None, transfer_only: bool = False) -> Path:
    """Soft labels of ``teacher_dir`` over the training texts of ``cfg`` (a ``training.recipe.StageConfig``),
    written to ``out`` (.npz + .json, with the teacher's config and validation where known). With
    ``transfer_only``, over its transfer sets' texts alone (``cfg.transfer``): labels to read after another
    file's, which covers the labeled sets.

    ``teacher_dir`` is a trained model folder, or an artifact folder: a shipped student labels the texts for
    a smaller one (a teacher assistant), read from its weights with the heads of its manifest."""
    from training.recipe import package_versions, training_examples

    if transfer_only:  # every text drawn, whatever the labeled sets hold: their draw does not depend on them
        from training.transfer import transfer_examples

        if not cfg.transfer:
            raise ValueError("transfer_only needs transfer sets (--transfer NAME=N)")
        examples, fingerprints = transfer_examples(cfg.transfer, cfg.seed)
    else:
        examples, _, fingerprints = training_examples(cfg)
    texts = list(dict.fromkeys(ex.text for ex in examples))
    with tempfile.TemporaryDirectory(prefix="chatmod-label-") as tmp:
        model_dir, meta = teacher_folder(Path(teacher_dir), Path(tmp))
        logits = label_texts(model_dir, texts, max_length=cfg.train.max_length, precision=precision,
                             progress=progress)
    return save(out, texts, logits, meta | {"caps": {} if transfer_only else cfg.caps, "transfer": cfg.transfer,
                                            "seed": cfg.seed, "max_length": cfg.train.max_length,
                                            "precision": precision, "data": fingerprints,
                                            "versions": package_versions()})


def teacher_folder(teacher_dir: Path, tmp: Path) -> tuple[Path, dict]:
    """``(Hugging Face folder, description)`` of a trained model folder or an artifact folder."""
    if (teacher_dir / "manifest.json").is_file():
        from models.artifact import read_manifest
        from training.requantize import rebuild_hf_folder

        manifest = read_manifest(teacher_dir)
        return rebuild_hf_folder(teacher_dir, tmp / "hf"), {
            "teacher": manifest.ref, "base": manifest.family, "teacher_config": manifest.training or None,
            "teacher_validation": manifest.metrics.get("validation"), "teacher_parameters": manifest.num_parameters,
            "heads": [h.model_dump(mode="json") for h in manifest.heads]}
    record = json.loads((teacher_dir / "chatmod_run.json").read_text())
    report = teacher_dir / "eval_report.json"
    return teacher_dir, {"teacher": str(teacher_dir), "base": record.get("base"), "teacher_config": record.get("config"),
                         "teacher_validation": json.loads(report.read_text())["headline"] if report.is_file() else None,
                         "teacher_parameters": record.get("parameters"), "heads": record.get("heads")}


def save(path: Path, texts: Sequence[str], logits: np.ndarray, meta: dict) -> Path:
    """Write ``path`` (.npz) and its ``.json`` description; duplicate texts are stored once."""
    path = Path(path)
    if len(texts) != len(logits):
        raise ValueError(f"{len(texts)} texts but {len(logits)} rows of logits")
    keys: dict[bytes, int] = {}
    for i, text in enumerate(texts):
        keys.setdefault(text_key(text), i)
    rows = list(keys.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES),
                        logits=logits[rows].astype(np.float16))
    meta = meta | {"texts": len(rows), "num_logits": int(logits.shape[1]),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
    return path


class _LabelFile:
    """One stored teacher's logits, looked up by text."""

    def __init__(self, path: Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no soft labels at {path}; make them with `chatmod train label`")
        data = np.load(path)
        keys, logits = data["keys"], data["logits"]
        if keys.shape[0] != logits.shape[0] or keys.shape[1] != KEY_BYTES:
            raise ValueError(f"{path}: {keys.shape} keys for {logits.shape} logits")
        self.path = path
        self.meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
        self.rows = {bytes(k): i for i, k in enumerate(keys)}
        self._logits = logits.astype(np.float32)
        self.num_logits = int(logits.shape[1])

    def get(self, text: str) -> np.ndarray | None:
        row = self.rows.get(text_key(text))
        return None if row is None else self._logits[row]

    def for_heads(self, texts: Sequence[str], heads: Sequence, soft_heads: Sequence) -> list[np.ndarray | None]:
        width = sum(h.width for h in heads)
        stored = [Head.model_validate(h) for h in self.meta.get("heads") or []]
        if not stored:
            if self.num_logits != width:
                raise ValueError(f"{self.path}: soft labels hold {self.num_logits} logits per text and name no "
                                 f"heads; the tasks need {width}")
            return [self.get(t) for t in texts]
        where = {(h.task, label): h.offset + i for h in stored for i, label in enumerate(h.labels)}
        cols = np.array([where.get((h.task, label), -1) for h in heads for label in h.labels])
        missing = [f"{h.task}:{label}" for h in soft_heads for label in h.labels if (h.task, label) not in where]
        if missing:
            raise ValueError(f"{self.path}: the teacher's soft labels hold no {missing}; distil only the heads it "
                             "labeled (--soft-task) or label again")
        known = cols >= 0
        return [None if row is None else np.where(known, row[np.maximum(cols, 0)], 0.0).astype(np.float32)
                for row in (self.get(t) for t in texts)]


class SoftLabels:
    """Stored teachers' logits, looked up by text: one file, or several read as one, where a text's logits
    come from the first file that holds it (a round's labels, then a teacher's labels over a transfer set)."""

    def __init__(self, path: Path | str | Sequence[Path | str]):
        paths = [path] if isinstance(path, str | Path) else list(path)
        if not paths:
            raise ValueError("no soft-label files given")
        self._files = [_LabelFile(Path(p)) for p in paths]
        first = self._files[0]
        self.num_logits = first.num_logits
        self.meta = first.meta
        if len(self._files) > 1:
            teachers = [str(f.meta.get("teacher", f.path)) for f in self._files]
            self.meta = first.meta | {"teacher": " + ".join(teachers), "files": [str(f.path) for f in self._files]}

    @property
    def source(self) -> str | list[str]:
        """The file, or the files in the order they are read."""
        paths = [str(f.path) for f in self._files]
        return paths[0] if len(paths) == 1 else paths

    def __len__(self) -> int:
        if len(self._files) == 1:
            return len(self._files[0].rows)
        return len(set().union(*(f.rows for f in self._files)))

    def get(self, text: str) -> np.ndarray | None:
        """The stored logits of ``text`` as its file holds them (the first file that has it)."""
        for f in self._files:
            row = f.get(text)
            if row is not None:
                return row
        return None

    def for_texts(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        return [self.get(t) for t in texts]

    def for_heads(self, texts: Sequence[str], heads: Sequence, soft_heads: Sequence) -> list[np.ndarray | None]:
        """Each text's stored logits laid out for ``heads`` (``models.artifact.Head``), which may hold labels
        appended to the contract after the teacher labeled: its columns are matched by (task, label) through
        the heads stored with the labels. Every label of ``soft_heads`` must be stored; other new columns
        are 0 (no soft loss reads them)."""
        rows = self._files[0].for_heads(texts, heads, soft_heads)
        for f in self._files[1:]:
            if any(r is None for r in rows):
                rows = [r if r is not None else other
                        for r, other in zip(rows, f.for_heads(texts, heads, soft_heads), strict=True)]
        return rows
