"""Model artifact format: a folder the registry stores and the runtime loads.

A folder holds a Hugging Face sequence-classification model (``config.json`` + ``model.safetensors``)
and/or its ONNX exports (``model.onnx``, ``model.int8.onnx``), the fast tokenizer (``tokenizer.json``
plus the files transformers wants), and ``manifest.json``. The manifest names the model, lists its
*heads* (one per task: a slice of the logit columns, its labels, sigmoid or softmax, thresholds) and
the sha256 of every other file, checked at load. One encoder may carry heads for both tasks: the
runtime then answers both in one forward pass. Only safetensors and ONNX: pickle formats are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from models.labels import TASK_LABELS, TASK_PROBLEM, ProblemType, Task, accepted_labels

MANIFEST_NAME = "manifest.json"
# 2 adds Head.logit_bias. A reader accepts the formats it knows and refuses newer ones, so a worker not
# yet upgraded keeps its model rather than serve a newer artifact's scores without their offsets.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5")
WEIGHT_FORMATS = ("safetensors", "onnx", "onnx_int8")


class ArtifactError(Exception):
    """An artifact that must not be served: missing, corrupt, or not what it claims to be."""


class Head(BaseModel):
    """One task's output: logit columns ``offset .. offset+len(labels)`` of the model."""

    task: Task
    labels: list[str]
    problem_type: ProblemType
    offset: int = 0
    # Multi-label: flag a label for review at >= thresholds[label], block at >= block_thresholds[label].
    thresholds: dict[str, float] = Field(default_factory=dict)
    block_thresholds: dict[str, float] = Field(default_factory=dict)
    # Single-label: added to the label's logit before the softmax. Fitted on validation so that the argmax
    # is the balanced-recall decision (a class's logit minus its learned log-prior, in effect); 0 if absent.
    logit_bias: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def width(self) -> int:
        return len(self.labels)

    @model_validator(mode="after")
    def _check(self) -> Head:
        if self.offset < 0:
            raise ValueError(f"head {self.task}: offset must be >= 0, got {self.offset}")
        for name, table in (("thresholds", self.thresholds), ("block_thresholds", self.block_thresholds)):
            unknown = set(table) - set(self.labels)
            if unknown:
                raise ValueError(f"head {self.task}: {name} for unknown labels {sorted(unknown)}")
            bad = {k: v for k, v in table.items() if not 0.0 <= v <= 1.0}
            if bad:
                raise ValueError(f"head {self.task}: {name} must lie in [0, 1], got {bad}")
        if self.logit_bias:
            if self.problem_type != ProblemType.SINGLE_LABEL:
                raise ValueError(f"head {self.task}: logit_bias is for single-label heads (multi-label ones have thresholds)")
            unknown = set(self.logit_bias) - set(self.labels)
            if unknown:
                raise ValueError(f"head {self.task}: logit_bias for unknown labels {sorted(unknown)}")
            bad = {k: v for k, v in self.logit_bias.items() if not -20.0 <= v <= 20.0}
            if bad:
                raise ValueError(f"head {self.task}: logit_bias must lie in [-20, 20], got {bad}")
        return self

    def bias_vector(self) -> np.ndarray:
        """``logit_bias`` as a row of ``width`` floats, in label order."""
        return np.array([self.logit_bias.get(label, 0.0) for label in self.labels], dtype=np.float64)


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    """What an artifact is. Written by training/export, read by the registry and the runtime."""

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    family: str  # distilbert | albert | bert | any other HF model_type
    heads: list[Head]
    max_length: int = 128
    lowercase: bool = True  # the tokenizer folds case, so the cache key may too
    weights: dict[str, str] = Field(default_factory=dict)  # format -> file name, formats in WEIGHT_FORMATS
    files: dict[str, FileEntry] = Field(default_factory=dict)
    num_parameters: int | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    base_model: str | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tasks(self) -> list[Task]:
        return [h.task for h in self.heads]

    @property
    def num_logits(self) -> int:
        return max(h.offset + h.width for h in self.heads)

    def head(self, task: Task | str) -> Head:
        for h in self.heads:
            if h.task == Task(task):
                return h
        raise ArtifactError(f"{self.ref} has no head for task {task!r}; it serves {[t.value for t in self.tasks]}")

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if not self.heads:
            raise ValueError("a manifest needs at least one head")
        if "@" in self.name or "/" in self.name or not self.name:
            raise ValueError(f"model name must be non-empty without '@' or '/', got {self.name!r}")
        if "@" in self.version or "/" in self.version or not self.version:
            raise ValueError(f"model version must be non-empty without '@' or '/', got {self.version!r}")
        tasks = [h.task for h in self.heads]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"one head per task, got {tasks}")
        unknown_formats = set(self.weights) - set(WEIGHT_FORMATS)
        if unknown_formats:
            raise ValueError(f"unknown weight formats {sorted(unknown_formats)}; expected {WEIGHT_FORMATS}")
        if not self.weights:
            raise ValueError("a manifest must name at least one weights file")
        spans = sorted((h.offset, h.offset + h.width) for h in self.heads)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"head logit columns overlap: {spans}")
        return self


def contract_heads(tasks: Sequence[Task | str]) -> list[Head]:
    """Heads with the contract's labels, laid out one after another in the logit columns, in order."""
    heads, offset = [], 0
    for task in map(Task, tasks):
        labels = list(TASK_LABELS[task])
        heads.append(Head(task=task, labels=labels, problem_type=TASK_PROBLEM[task], offset=offset))
        offset += len(labels)
    return heads


def check_label_contract(manifest: Manifest) -> None:
    """Refuse heads whose labels or problem type differ from the task's contract."""
    for head in manifest.heads:
        expected = list(TASK_LABELS[head.task])
        if not accepted_labels(head.task, head.labels):
            raise ArtifactError(
                f"{manifest.ref}: {head.task} labels {head.labels} differ from the contract {expected} "
                "(or an earlier prefix of it)"
            )
        if head.problem_type != TASK_PROBLEM[head.task]:
            raise ArtifactError(
                f"{manifest.ref}: {head.task} must be {TASK_PROBLEM[head.task]}, got {head.problem_type}"
            )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _artifact_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record the checksum of every file in ``folder`` and write ``manifest.json`` atomically."""
    folder = Path(folder)
    files = {}
    for path in _artifact_files(folder):
        rel = path.relative_to(folder).as_posix()
        if path.suffix in FORBIDDEN_SUFFIXES:
            raise ArtifactError(f"{rel}: pickle-based formats are not allowed in artifacts (use safetensors)")
        files[rel] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    missing = [f for f in manifest.weights.values() if f not in files]
    if missing:
        raise ArtifactError(f"manifest names weights that are not in {folder}: {missing}")
    manifest = manifest.model_copy(update={"files": files})
    atomic_write_text(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2))
    return manifest


def read_manifest(folder: Path) -> Manifest:
    """Parse ``manifest.json`` without checking files (listing, display)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a model artifact: {MANIFEST_NAME} is missing")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from exc


def verify_artifact(folder: Path, check_contract: bool = True) -> Manifest:
    """Load a manifest and check every file against its checksum; raise ArtifactError on any mismatch."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.format_version not in READABLE_FORMATS:
        raise ArtifactError(f"{manifest.ref}: format_version {manifest.format_version} is not one this chatmod "
                            f"reads {READABLE_FORMATS}: upgrade chatmod to serve it")
    present = {p.relative_to(folder).as_posix() for p in _artifact_files(folder)}
    forbidden = [p for p in present if p.endswith(FORBIDDEN_SUFFIXES)]
    if forbidden:
        raise ArtifactError(f"{manifest.ref}: pickle-based files refused: {forbidden}")
    for rel, entry in manifest.files.items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"{manifest.ref}: {rel} is listed in the manifest but missing")
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{manifest.ref}: checksum mismatch for {rel}; the artifact is corrupt")
    unlisted = present - set(manifest.files)
    if unlisted:
        raise ArtifactError(f"{manifest.ref}: files not covered by the manifest: {sorted(unlisted)}")
    if "tokenizer.json" not in manifest.files:
        raise ArtifactError(f"{manifest.ref}: tokenizer.json (fast tokenizer) is required")
    if check_contract:
        check_label_contract(manifest)
    return manifest


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` to fill, renamed to ``target`` when the block ends without error
    and removed when it does not: readers never see half a folder, and a failure leaves nothing behind.
    ``target`` must not exist, or be an empty folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700; the store may be read by another user (the worker)
        yield staging
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; keep the old file's mode, else make it readable like any written file
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True, default=str))
