"""Serve an artifact: tokenise, forward (``models.backends``: ONNX Runtime or torch), turn logits into
per-head probabilities.

The serving path imports only ``tokenizers``, ``numpy`` and ``onnxruntime``; torch and transformers are
imported lazily, and only when the torch backend is chosen, so a CPU worker stays inside its memory budget.
Batches are sorted by length, cut into sub-batches of at most ``max_batch`` texts and each sub-batch is
padded to its own longest text (dynamic padding): chat messages are short and mostly similar in length.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import ArtifactError, Head, Manifest, read_manifest, sha256_file, verify_artifact
from models.backends import OnnxBackend, TorchBackend, resolve_backend
from models.labels import ProblemType, Task

log = logging.getLogger(__name__)

Scores = dict[Task, dict[str, float]]  # {task: {label: probability}}
# Texts per forward pass. Measured on 2 cores (int8 DistilBERT student, chat-length texts, length-sorted
# per call): sub-batches of 16 ran 750-900 msgs/s, of 32 550-850, of 64 415-430: less padding per
# sub-batch, and activations that stay in cache.
DEFAULT_SUB_BATCH = 16
# Recorded by the export (metrics.export.onnx_int8.weights) when every int8 weight code is within [-64, 64]:
# ONNX Runtime's u8 x s8 products are then exact on every CPU, not only on those with VNNI (see
# training.quantize).
WEIGHTS_7BIT = "per_channel_7bit"


class BatchMismatch(RuntimeError):
    """The model returned a different number of rows than texts it was given."""

    def __init__(self, expected: int, got: int, what: str = "rows") -> None:
        super().__init__(f"batch contract broken: {expected} texts in, {got} {what} out")
        self.expected = expected
        self.got = got


# tokenising -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of texts, unpadded; ``key`` says which tokenizer and truncation made them."""

    key: tuple[str, int]  # (sha256 of tokenizer.json, max_length)
    ids: list[np.ndarray]  # one int64 array per text
    type_ids: list[np.ndarray]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, max_batch: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(positions, inputs)``: texts sorted by length, at most ``max_batch`` per batch, each
        padded to its own longest. ``positions`` are indices into the original list."""
        lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), max_batch):
            positions = order[start : start + max_batch]
            width = int(lengths[positions].max())
            input_ids = np.full((len(positions), width), self.pad_id, dtype=np.int64)  # (batch, seq)
            type_ids = np.zeros((len(positions), width), dtype=np.int64)
            mask = np.zeros((len(positions), width), dtype=np.int64)
            for row, pos in enumerate(positions):
                n = lengths[pos]
                input_ids[row, :n] = self.ids[pos]
                type_ids[row, :n] = self.type_ids[pos]
                mask[row, :n] = 1
            yield positions, {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}


class TextEncoder:
    """A fast tokenizer read straight from ``tokenizer.json`` (no transformers): truncation, no padding."""

    def __init__(self, tokenizer_json: Path, max_length: int, sha256: str | None = None) -> None:
        from tokenizers import Tokenizer

        tokenizer_json = Path(tokenizer_json)
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.pad_id = _pad_id(self.tokenizer, tokenizer_json)
        # tokenizer.json files often carry fixed-length padding (MiniLM's pads to 128); padding is ours to do.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        if sha256 is None:

            sha256 = sha256_file(tokenizer_json)
        self.key = (sha256, max_length)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenise a batch (special tokens added, truncated to ``max_length``)."""
        texts = _check_texts(texts)
        encodings = self.tokenizer.encode_batch(texts) if texts else []
        return Encoded(
            key=self.key,
            ids=[np.asarray(e.ids, dtype=np.int64) for e in encodings],
            type_ids=[np.asarray(e.type_ids, dtype=np.int64) for e in encodings],
            pad_id=self.pad_id,
        )


def _pad_id(tokenizer: Any, tokenizer_json: Path) -> int:
    if tokenizer.padding is not None:  # the tokenizer's own padding settings know the id
        return int(tokenizer.padding["pad_id"])
    config = tokenizer_json.with_name("tokenizer_config.json")
    candidates = ["[PAD]", "<pad>"]
    if config.is_file():
        pad = json.loads(config.read_text()).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            candidates.insert(0, pad)
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0  # masked out anyway; any valid id will do


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not a single string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; items {bad[:5]} are not")
    return texts


# post-processing ------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))  # clip: no overflow warnings on extreme logits


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def head_probabilities(head: Head, logits: np.ndarray) -> np.ndarray:
    """Probabilities ``(n, width)`` of one head from the full logits ``(n, num_logits)``."""
    cols = logits[:, head.offset : head.offset + head.width].astype(np.float64)
    if head.problem_type == ProblemType.MULTI_LABEL:
        return sigmoid(cols)
    return softmax(cols + head.bias_vector()) if head.logit_bias else softmax(cols)


def scores_from_logits(heads: Sequence[Head], logits: np.ndarray) -> list[Scores]:
    """``[{task: {label: prob}}]`` per row; plain floats so results serialise as they are."""
    out: list[Scores] = [{} for _ in range(len(logits))]
    for head in heads:
        for row, probs in zip(out, head_probabilities(head, logits).tolist(), strict=True):
            row[head.task] = dict(zip(head.labels, probs, strict=True))
    return out


# classifier -----------------------------------------------------------------------------------------------


class TextClassifier:
    """One artifact, loaded for inference; answers every head it carries in one forward pass."""

    def __init__(
        self,
        folder: Path,
        backend: str = "auto",
        threads: int | None = None,
        max_batch: int = DEFAULT_SUB_BATCH,
        device: str | None = None,
        spin: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.folder = Path(folder)
        self.manifest = verify_artifact(self.folder)  # refuse corrupt or contract-breaking artifacts first
        self.max_batch = max_batch
        self.backend = resolve_backend(self.manifest, backend)
        self.encoder = TextEncoder(
            self.folder / "tokenizer.json",
            self.manifest.max_length,
            sha256=self.manifest.files["tokenizer.json"].sha256,
        )
        if self.backend == "torch":
            self._model: OnnxBackend | TorchBackend = TorchBackend(self.folder, threads, device)
            self.device = str(self._model.device)
        else:
            fmt = "onnx_int8" if self.backend == "onnx_int8" else "onnx"
            self._model = OnnxBackend(
                self.folder / self.manifest.weights[fmt], threads or os.cpu_count() or 1, spin=spin
            )
            self.device = "cpu"
        outputs = self._model.num_outputs
        if outputs is not None and outputs != self.manifest.num_logits:
            raise ArtifactError(
                f"{self.manifest.ref}: model has {outputs} logits but the manifest's heads need "
                f"{self.manifest.num_logits}"
            )
        # One forward at a time per model: ORT already uses `threads` cores per run, more would oversubscribe.
        self._lock = threading.Lock()
        log.info("loaded %s (%s on %s) from %s", self.manifest.ref, self.backend, self.device, self.folder)
        if not self.batch_invariant:
            log.warning(
                "%s on %s is not known to score a text the same in every batch: redelivered duplicates and "
                "cached scores may differ slightly; `chatmod train requantize %s --version N` re-exports it "
                "with per-token int8", self.manifest.ref, self.backend, self.manifest.ref,
            )
        elif self.saturates_without_vnni:
            log.warning(
                "%s has full-range int8 weights: on CPUs without VNNI, ONNX Runtime's int8 products saturate, "
                "so its scores differ between machines of different CPU generations; `chatmod train requantize "
                "%s --version N` re-exports it with 7-bit weights, exact on every CPU",
                self.manifest.ref, self.manifest.ref,
            )

    @property
    def batch_invariant(self) -> bool:
        """Whether the export proved this model's scores independent of batch, padding and thread count
        (``training.quantize.check_batch_invariance``, recorded in the manifest). The torch backend is
        never assumed to be: GPU kernels pick their reduction order by shape."""
        if self.backend == "torch":
            return False
        return self._export_check.get("batch_invariance_max_diff") == 0.0

    @property
    def saturates_without_vnni(self) -> bool:
        """Whether this int8 model has full-range weights, whose products ONNX Runtime clips on x86 CPUs
        without VNNI: its scores then differ by CPU generation, by far more than float rounding (export
        records 7-bit weights as :data:`WEIGHTS_7BIT`)."""
        return self.backend == "onnx_int8" and self._export_check.get("weights") != WEIGHTS_7BIT

    @property
    def _export_check(self) -> dict:
        """What the export recorded of the served ONNX file (``metrics.export.onnx`` or ``onnx_int8``)."""
        fmt = "onnx_int8" if self.backend == "onnx_int8" else "onnx"
        return self.manifest.metrics.get("export", {}).get(fmt, {})

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def heads(self) -> list[Head]:
        return list(self.manifest.heads)

    @property
    def tokenizer_key(self) -> tuple[str, int]:
        return self.encoder.key

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenise; the result can be shared with any model whose ``tokenizer_key`` is the same."""
        return self.encoder.encode(texts)

    def predict_encoded_logits(self, encoded: Encoded) -> np.ndarray:
        """Logits ``(n, num_logits)`` for already tokenised texts, in their original order."""
        if encoded.key != self.encoder.key:
            raise ValueError(
                f"{self.ref}: texts were tokenised by another tokenizer or max_length ({encoded.key})"
            )
        num_logits = self.manifest.num_logits
        out = np.empty((len(encoded), num_logits), dtype=np.float32)
        for positions, inputs in encoded.batches(self.max_batch):
            with self._lock:
                logits = self._model.run(inputs)
            if logits.ndim != 2 or logits.shape[0] != len(positions):
                raise BatchMismatch(len(positions), logits.shape[0] if logits.ndim else 0)
            if logits.shape[1] < num_logits:
                raise BatchMismatch(num_logits, logits.shape[1], what="logit columns")
            out[positions] = logits[:, :num_logits]
        return out

    def predict_encoded(self, encoded: Encoded) -> list[Scores]:
        return scores_from_logits(self.manifest.heads, self.predict_encoded_logits(encoded))

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits ``(len(texts), manifest.num_logits)``, rows in input order."""
        return self.predict_encoded_logits(self.encode(texts))

    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """``[{task: {label: probability}}]``, one per text, in input order: sigmoid or softmax per head."""
        return self.predict_encoded(self.encode(texts))


# model set -------------------------------------------------------------------------------------------------


class ModelSet:
    """The models serving each task. Tasks that share an artifact share one model and one forward pass;
    models that share a tokenizer (same tokenizer.json sha256 and max_length) share one tokenisation."""

    def __init__(
        self,
        paths_by_task: Mapping[Task | str, Path],
        backend: str = "auto",
        threads: int | None = None,
        max_batch: int = DEFAULT_SUB_BATCH,
        spin: bool = True,
    ) -> None:
        if not paths_by_task:
            raise ValueError("ModelSet needs at least one task -> artifact path")
        by_folder: dict[Path, TextClassifier] = {}
        by_ref: dict[str, TextClassifier] = {}
        self._task_model: dict[Task, TextClassifier] = {}
        for task, path in paths_by_task.items():
            task = Task(task)
            folder = Path(path).resolve()
            clf = by_folder.get(folder)
            if clf is None:
                manifest = read_manifest(folder)
                clf = by_ref.get(manifest.ref)
                if clf is None:
                    clf = TextClassifier(folder, backend=backend, threads=threads, max_batch=max_batch, spin=spin)
                elif clf.manifest.files != manifest.files:  # a copy of a loaded artifact is served once
                    raise ArtifactError(
                        f"two different artifacts claim to be {clf.ref}: {clf.folder} and {folder}"
                    )
                by_folder[folder] = by_ref[clf.ref] = clf
            clf.manifest.head(task)  # raises if this artifact has no head for the task
            self._task_model[task] = clf
        self.classifiers: list[TextClassifier] = list(by_ref.values())
        self.encoders: dict[tuple[str, int], TextEncoder] = {}
        for clf in self.classifiers:
            self.encoders.setdefault(clf.tokenizer_key, clf.encoder)

    @property
    def tasks(self) -> list[Task]:
        return list(self._task_model)

    @property
    def refs(self) -> dict[Task, str]:
        return {task: clf.ref for task, clf in self._task_model.items()}

    @property
    def manifests(self) -> dict[Task, Manifest]:
        return {task: clf.manifest for task, clf in self._task_model.items()}

    @property
    def heads(self) -> dict[Task, Head]:
        return {task: clf.manifest.head(task) for task, clf in self._task_model.items()}

    def predict(self, texts: Sequence[str]) -> list[Scores]:
        """``[{task: {label: probability}}]`` for every configured task, one dict per text, input order."""
        texts = _check_texts(texts)
        encoded = {key: encoder.encode(texts) for key, encoder in self.encoders.items()}
        out: list[Scores] = [{} for _ in texts]
        for clf in self.classifiers:
            heads = [clf.manifest.head(t) for t, c in self._task_model.items() if c is clf]
            logits = clf.predict_encoded_logits(encoded[clf.tokenizer_key])
            if len(logits) != len(texts):
                raise BatchMismatch(len(texts), len(logits))
            for row, scores in zip(out, scores_from_logits(heads, logits), strict=True):
                row.update(scores)
        return out
