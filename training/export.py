"""ONNX and int8 export of a trained classifier, verified against the torch model, and artifact assembly.

An export is only kept when its logits match the torch model's on real texts, padded the way the
runtime pads them, and (int8) when a text's logits are bit-identical whatever its batch, padding and
thread count (see ``training.quantize``); otherwise ``ExportMismatch`` is raised and no artifact is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import WEIGHT_FORMATS, ArtifactError, Head, Manifest, staged_folder, write_manifest
from models.runtime import WEIGHTS_7BIT, TextEncoder
from training.export_check import (
    DEFAULT_VERIFY_TEXTS,
    FP32_TOLERANCE,
    INT8_TOLERANCE,
    ExportMismatch,
    ExportTolerance,
    input_names,
    load_torch_model,
    verify_export,
)
from training.quantize import (
    PER_TOKEN,
    check_batch_invariance,
    fp32_fallbacks,
    prepare_for_int8,
    quantize_prepared,
)

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"
SAFETENSORS_NAME = "model.safetensors"
# What transformers wants to rebuild the tokenizer; the runtime itself reads only tokenizer.json.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "spiece.model",
)

def export_onnx(hf_model_dir: Path, onnx_path: Path, opset: int = 17) -> Path:
    """Export a Hugging Face sequence classifier to ONNX: dynamic batch and sequence, output ``logits``."""
    import torch

    hf_model_dir, onnx_path = Path(hf_model_dir), Path(onnx_path)
    model = load_torch_model(hf_model_dir)
    names = input_names(model)
    # A padded second row, so the traced graph keeps the attention-mask path (no "all ones" shortcut).
    input_ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102], [101, 7592, 102, 0, 0, 0]])  # (batch, seq)
    attention_mask = (input_ids != 0).long()
    input_ids = input_ids % model.config.vocab_size  # a pruned vocabulary (training/vocab.py) is smaller
    example = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter warns about itself and the shape checks it folds; verify_export decides.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(example[n] for n in names),
            str(onnx_path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter needs onnxscript and trips on transformers' mask utilities
        )
    import onnx

    onnx.checker.check_model(str(onnx_path))
    return onnx_path


def _tokenizer_lowercases(tokenizer_json: Path) -> bool:
    normalizer = json.loads(tokenizer_json.read_text()).get("normalizer") or {}
    stack = [normalizer]
    while stack:
        node = stack.pop()
        if node.get("type") == "Lowercase" or (
            node.get("type") == "BertNormalizer" and node.get("lowercase")
        ):
            return True
        stack.extend(node.get("normalizers") or [])
    return False


def build_artifact(
    hf_model_dir: Path,
    out_dir: Path,
    *,
    name: str,
    version: str,
    heads: Sequence[Head],
    family: str | None = None,
    max_length: int = 128,
    lowercase: bool | None = None,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    formats: Sequence[str] = ("safetensors", "onnx_int8"),
    verify_texts: Iterable[str] = DEFAULT_VERIFY_TEXTS,
    fp32_tolerance: ExportTolerance = FP32_TOLERANCE,
    int8_tolerance: ExportTolerance = INT8_TOLERANCE,
    opset: int = 17,
) -> Manifest:
    """Assemble a verified artifact folder from a saved Hugging Face model; nothing is left on failure.

    ``formats`` picks the weights to ship (``safetensors``, ``onnx``, ``onnx_int8``); every ONNX file is
    checked against the torch model and the checks are recorded in ``manifest.metrics["export"]``.
    """
    hf_model_dir, out_dir = Path(hf_model_dir), Path(out_dir)
    formats = tuple(dict.fromkeys(formats))
    unknown = set(formats) - set(WEIGHT_FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {WEIGHT_FORMATS}, got {formats}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; pick a new folder for the artifact")
    manifest = _draft_manifest(hf_model_dir, name=name, version=version, heads=heads, family=family,
                               max_length=max_length, lowercase=lowercase, base_model=base_model,
                               training=training, metrics=metrics)
    checks = _Checks(hf_model_dir, manifest, list(verify_texts), fp32_tolerance, int8_tolerance)
    with staged_folder(out_dir) as staging:
        weights, export = _write_weights(hf_model_dir, staging, formats, checks, opset)
        for path in staging.iterdir():
            path.chmod(0o644)
        manifest = write_manifest(staging, manifest.model_copy(update={
            "weights": weights, "num_parameters": _count_parameters(hf_model_dir / SAFETENSORS_NAME),
            "metrics": manifest.metrics | {"export": export}}))
    log.info("built artifact %s at %s (%s)", manifest.ref, out_dir, ", ".join(weights))
    return manifest


def _draft_manifest(hf_model_dir: Path, *, name: str, version: str, heads: Sequence[Head], family: str | None,
                    max_length: int, lowercase: bool | None, base_model: str | None, training: dict | None,
                    metrics: dict | None) -> Manifest:
    """The manifest before its weights exist, once the model folder is checked against the heads."""
    for required in ("config.json", SAFETENSORS_NAME, "tokenizer.json"):
        if not (hf_model_dir / required).is_file():
            raise ArtifactError(
                f"{hf_model_dir} lacks {required}; save the model with save_pretrained (safetensors) "
                "and the fast tokenizer next to it"
            )
    config = json.loads((hf_model_dir / "config.json").read_text())
    manifest = Manifest(
        name=name,
        version=version,
        family=family or config.get("model_type", "unknown"),
        heads=list(heads),
        max_length=max_length,
        lowercase=_tokenizer_lowercases(hf_model_dir / "tokenizer.json") if lowercase is None else lowercase,
        weights={"safetensors": SAFETENSORS_NAME},  # placeholder until the files exist; replaced by the build
        base_model=base_model,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
    )
    num_labels = config.get("num_labels", len(config.get("id2label", {})))
    if num_labels != manifest.num_logits:
        raise ArtifactError(
            f"{hf_model_dir}: the model has {num_labels} outputs but the heads need {manifest.num_logits}"
        )
    return manifest


@dataclass
class _Checks:
    """An exported graph against the torch model it came from, on the check texts (encoded once)."""

    hf_model_dir: Path
    manifest: Manifest
    texts: list[str]
    fp32: ExportTolerance
    int8: ExportTolerance

    def __post_init__(self) -> None:
        self.encoded = TextEncoder(self.hf_model_dir / "tokenizer.json", self.manifest.max_length).encode(self.texts)

    def run(self, onnx_path: Path, tol: ExportTolerance) -> dict[str, Any]:
        check = verify_export(self.hf_model_dir, onnx_path, self.texts, tol.max_abs_logit_diff, tol.min_agreement,
                              heads=self.manifest.heads, max_length=self.manifest.max_length)
        return asdict(check) | {"batch_invariance_max_diff": check_batch_invariance(onnx_path, self.encoded)}


def _write_weights(hf_model_dir: Path, staging: Path, formats: tuple[str, ...], checks: _Checks,
                   opset: int) -> tuple[dict[str, str], dict[str, Any]]:
    """Config, tokenizer and the chosen weights into ``staging``; (weights, the export checks)."""
    import onnxruntime
    import torch

    weights: dict[str, str] = {}
    export: dict[str, Any] = {"opset": opset, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    shutil.copy2(hf_model_dir / "config.json", staging / "config.json")
    if "safetensors" in formats:
        shutil.copy2(hf_model_dir / SAFETENSORS_NAME, staging / SAFETENSORS_NAME)
        weights["safetensors"] = SAFETENSORS_NAME
    for fname in TOKENIZER_FILES:
        if (hf_model_dir / fname).is_file():
            shutil.copy2(hf_model_dir / fname, staging / fname)
    if "onnx" not in formats and "onnx_int8" not in formats:
        return weights, export
    with tempfile.TemporaryDirectory(dir=staging.parent) as tmp:
        fp32 = export_onnx(hf_model_dir, Path(tmp) / ONNX_NAME, opset=opset)
        export["onnx"] = checks.run(fp32, checks.fp32)  # int8 is only as good as the graph under it
        if "onnx" in formats:
            shutil.copy2(fp32, staging / ONNX_NAME)
            weights["onnx"] = ONNX_NAME
        if "onnx_int8" in formats:
            export["onnx_int8"] = _int8(fp32, Path(tmp), staging / ONNX_INT8_NAME, checks)
            weights["onnx_int8"] = ONNX_INT8_NAME
    return weights, export


def _int8(fp32: Path, tmp: Path, out: Path, checks: _Checks) -> dict[str, Any]:
    """Quantise with per-token activations; where the check refuses it, again with more feed-forward outputs
    kept in fp32 (the fallback ladder). Its logits must not move with batch neighbours at all."""
    pre = prepare_for_int8(fp32, tmp / "pre.onnx")  # once, whatever the retries
    ladder = fp32_fallbacks(pre)
    for step, keep in enumerate(ladder):
        int8 = quantize_prepared(pre, out, keep)
        try:
            check = checks.run(int8, checks.int8) | {
                "fp32_nodes": keep, "activations": PER_TOKEN, "weights": WEIGHTS_7BIT}
            break
        except ExportMismatch as exc:
            if step == len(ladder) - 1:
                raise
            log.warning("int8 export beyond its bounds; retrying with fp32 feed-forward outputs",
                        extra={"reason": str(exc), "keep_fp32": ladder[step + 1]})
    moved = check["batch_invariance_max_diff"]
    if moved != 0.0:
        raise ExportMismatch(
            f"{ONNX_INT8_NAME}: a text's logits move by up to {moved:.3g} with its batch "
            "neighbours, padding or thread count; per-token int8 must make them identical"
        )
    return check


def _count_parameters(safetensors_path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(safetensors_path), framework="numpy") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not iterable
            total += int(np.prod(fh.get_slice(key).get_shape()))
    return total
