"""ONNX and int8 export of a trained classifier, verified against the torch model, and artifact assembly.

An export is only kept when its logits match the torch model's on real texts, padded the way the
runtime pads them, and (int8) when a text's logits are bit-identical whatever its batch, padding and
thread count (see ``training.quantize``); otherwise ``ExportMismatch`` is raised and no artifact is written.
"""

from __future__ import annotations

import inspect
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

from models.artifact import WEIGHT_FORMATS, ArtifactError, Head, Manifest, write_manifest
from models.labels import ProblemType
from models.runtime import TextEncoder
from training.quantize import (  # noqa: F401 - the int8 steps, re-exported for callers
    PER_TOKEN,
    check_batch_invariance,
    fp32_fallbacks,
    prepare_for_int8,
    quantize_int8,
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

# Texts to check an export on when the caller has none: short, long (truncated), unicode, empty.
DEFAULT_VERIFY_TEXTS = (
    "",
    "ok",
    "thanks, that was really helpful!",
    "you are an idiot and everyone hates you",
    "I will find you and hurt you",
    "meh. the update is fine I guess, nothing special",
    "WHY IS THIS STILL BROKEN?!?! fix it now",
    "gg wp 😀🔥",
    "Ça marche très bien, merci beaucoup",
    "lol " * 200,
    "This product arrived on time, works as described, and support answered within an hour. " * 3,
    "shut up",
)


class ExportMismatch(Exception):
    """The exported model does not compute what the torch model computes; the export is refused."""


@dataclass(frozen=True)
class ExportCheck:
    max_abs_diff: float  # largest |torch logit - onnx logit|
    agreement: float  # fraction of per-head decisions that agree
    n: int  # texts compared


@dataclass(frozen=True)
class ExportTolerance:
    max_abs_logit_diff: float
    min_agreement: float


LOGIT_SCALE = 10.0  # the logit magnitude the absolute tolerances below are stated for
FP32_TOLERANCE = ExportTolerance(max_abs_logit_diff=1e-3, min_agreement=0.99)
# Per-channel int8 on a real encoder moves logits by a few hundredths; decisions near 0 may flip.
INT8_TOLERANCE = ExportTolerance(max_abs_logit_diff=0.5, min_agreement=0.95)


def _load_torch_model(hf_model_dir: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    # Eager attention: the TorchScript exporter then sees plain MatMul/Softmax that ORT knows how to fuse.
    model = AutoModelForSequenceClassification.from_pretrained(
        hf_model_dir, attn_implementation="eager", use_safetensors=True
    )
    return model.float().eval()


def _input_names(model: Any) -> list[str]:
    """input_ids + attention_mask, + token_type_ids for models whose forward takes them (BERT, ALBERT)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


def export_onnx(hf_model_dir: Path, onnx_path: Path, opset: int = 17) -> Path:
    """Export a Hugging Face sequence classifier to ONNX: dynamic batch and sequence, output ``logits``."""
    import torch

    hf_model_dir, onnx_path = Path(hf_model_dir), Path(onnx_path)
    model = _load_torch_model(hf_model_dir)
    names = _input_names(model)
    # A padded second row, so the traced graph keeps the attention-mask path (no "all ones" shortcut).
    input_ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102], [101, 7592, 102, 0, 0, 0]])  # (batch, seq)
    attention_mask = (input_ids != 0).long()
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


def _decisions(logits: np.ndarray, heads: Sequence[Head]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per head: (decisions, margin to the decision boundary) for every text (and label)."""
    out = []
    for head in heads:
        cols = logits[:, head.offset : head.offset + head.width]
        if head.problem_type == ProblemType.MULTI_LABEL:
            out.append((cols > 0, np.abs(cols)))
        else:
            top2 = np.sort(cols, axis=1)[:, -2:] if cols.shape[1] > 1 else np.concatenate([cols, cols - np.inf], 1)
            out.append((cols.argmax(axis=1), top2[:, 1] - top2[:, 0]))
    return out


# Decisions closer to the boundary than this are ties: int8 rounding may break them either way, and
# counting them would fail exports of sound models whose scores sit near 0.5 (e.g. early in training).
TIE_MARGIN = 0.05


def _default_heads(model: Any) -> list[Head]:
    n = int(model.config.num_labels)
    multi = model.config.problem_type == "multi_label_classification"
    # Only the problem type matters for decisions; the task and labels are placeholders.
    return [
        Head(
            task="toxicity" if multi else "sentiment",
            labels=[str(i) for i in range(n)],
            problem_type=ProblemType.MULTI_LABEL if multi else ProblemType.SINGLE_LABEL,
        )
    ]


def verify_export(
    hf_model_dir: Path,
    onnx_path: Path,
    texts: Iterable[str],
    max_abs_logit_diff: float,
    min_agreement: float,
    *,
    heads: Sequence[Head] | None = None,
    max_length: int = 128,
    batch_size: int = 16,
) -> ExportCheck:
    """Compare torch and ONNX logits on ``texts``; raise ExportMismatch beyond the bounds.

    Decisions are per head: argmax for single-label heads, logit > 0 per label for multi-label heads.
    Without ``heads`` the whole output is one head, typed by the config's ``problem_type``.
    """
    import onnxruntime as ort
    import torch

    hf_model_dir = Path(hf_model_dir)
    texts = list(texts)
    if not texts:
        raise ValueError("verify_export needs at least one text")
    model = _load_torch_model(hf_model_dir)
    heads = list(heads) if heads is not None else _default_heads(model)
    torch_names = _input_names(model)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_names = [i.name for i in session.get_inputs()]
    encoded = TextEncoder(hf_model_dir / "tokenizer.json", max_length).encode(texts)
    torch_logits = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    onnx_logits = np.empty_like(torch_logits)
    for positions, inputs in encoded.batches(batch_size):  # padded as the runtime pads
        with torch.inference_mode():
            ref = model(**{n: torch.from_numpy(inputs[n]) for n in torch_names}).logits
        got = session.run(None, {n: inputs[n] for n in onnx_names})[0]
        if got.shape != tuple(ref.shape):
            raise ExportMismatch(f"{onnx_path}: logits shape {got.shape}, torch gives {tuple(ref.shape)}")
        torch_logits[positions] = ref.numpy()
        onnx_logits[positions] = got
    max_abs = float(np.abs(torch_logits - onnx_logits).max())
    # int8 rounding error grows with the size of the activations: a model whose logits reach past
    # LOGIT_SCALE (where a sigmoid or softmax is saturated anyway) is allowed a proportionally larger move.
    scale = max(1.0, float(np.abs(torch_logits).max()) / LOGIT_SCALE) if torch_logits.size else 1.0
    max_abs_logit_diff = max_abs_logit_diff * scale
    pairs = zip(_decisions(torch_logits, heads), _decisions(onnx_logits, heads), strict=True)
    agree, decisive = [], []
    for (ref_dec, margin), (got_dec, _) in pairs:
        agree.append((ref_dec == got_dec).ravel())
        decisive.append((margin >= TIE_MARGIN).ravel())
    agree_all, decisive_all = np.concatenate(agree), np.concatenate(decisive)
    agreement = float(agree_all[decisive_all].mean()) if decisive_all.any() else 1.0
    check = ExportCheck(max_abs_diff=max_abs, agreement=agreement, n=len(texts))
    if not np.isfinite(max_abs) or max_abs > max_abs_logit_diff or agreement < min_agreement:
        raise ExportMismatch(
            f"{Path(onnx_path).name} disagrees with the torch model on {len(texts)} texts: max |logit diff| "
            f"{max_abs:.3g} (allowed {max_abs_logit_diff:.3g}, for logits up to {scale * LOGIT_SCALE:.3g}), "
            "agreement on decisions that are not ties "
            f"(margin >= {TIE_MARGIN}) {agreement:.3f} "
            f"(required {min_agreement:g}); the export is refused"
        )
    log.info("export check %s: %s", Path(onnx_path).name, check)
    return check


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
    import onnxruntime
    import torch

    hf_model_dir, out_dir = Path(hf_model_dir), Path(out_dir)
    formats = tuple(dict.fromkeys(formats))
    unknown = set(formats) - set(WEIGHT_FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {WEIGHT_FORMATS}, got {formats}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; pick a new folder for the artifact")
    for required in ("config.json", SAFETENSORS_NAME, "tokenizer.json"):
        if not (hf_model_dir / required).is_file():
            raise ArtifactError(
                f"{hf_model_dir} lacks {required}; save the model with save_pretrained (safetensors) "
                "and the fast tokenizer next to it"
            )
    verify_texts = list(verify_texts)
    config = json.loads((hf_model_dir / "config.json").read_text())
    manifest = Manifest(
        name=name,
        version=version,
        family=family or config.get("model_type", "unknown"),
        heads=list(heads),
        max_length=max_length,
        lowercase=_tokenizer_lowercases(hf_model_dir / "tokenizer.json") if lowercase is None else lowercase,
        weights={"safetensors": SAFETENSORS_NAME},  # placeholder until the files exist; replaced below
        base_model=base_model,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
    )
    num_labels = config.get("num_labels", len(config.get("id2label", {})))
    if num_labels != manifest.num_logits:
        raise ArtifactError(
            f"{hf_model_dir}: the model has {num_labels} outputs but the heads need {manifest.num_logits}"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the store may be read by another user (the worker)
    try:
        weights: dict[str, str] = {}
        export: dict[str, Any] = {
            "opset": opset,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        }
        shutil.copy2(hf_model_dir / "config.json", staging / "config.json")
        if "safetensors" in formats:
            shutil.copy2(hf_model_dir / SAFETENSORS_NAME, staging / SAFETENSORS_NAME)
            weights["safetensors"] = SAFETENSORS_NAME
        for fname in TOKENIZER_FILES:
            if (hf_model_dir / fname).is_file():
                shutil.copy2(hf_model_dir / fname, staging / fname)
        if "onnx" in formats or "onnx_int8" in formats:
            with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:

                def checked(onnx_path: Path, tol: ExportTolerance) -> dict[str, Any]:
                    check = verify_export(
                        hf_model_dir,
                        onnx_path,
                        verify_texts,
                        tol.max_abs_logit_diff,
                        tol.min_agreement,
                        heads=manifest.heads,
                        max_length=max_length,
                    )
                    return asdict(check) | {"batch_invariance_max_diff": invariance(onnx_path)}

                def invariance(onnx_path: Path) -> float:
                    return check_batch_invariance(onnx_path, verify_encoded)

                verify_encoded = TextEncoder(hf_model_dir / "tokenizer.json", max_length).encode(verify_texts)

                fp32 = export_onnx(hf_model_dir, Path(tmp) / ONNX_NAME, opset=opset)
                export["onnx"] = checked(fp32, fp32_tolerance)  # int8 is only as good as the graph under it
                if "onnx" in formats:
                    shutil.copy2(fp32, staging / ONNX_NAME)
                    weights["onnx"] = ONNX_NAME
                if "onnx_int8" in formats:
                    pre = prepare_for_int8(fp32, Path(tmp) / "pre.onnx")  # once, whatever the retries
                    ladder = fp32_fallbacks(pre)
                    for step, keep in enumerate(ladder):
                        int8 = quantize_prepared(pre, staging / ONNX_INT8_NAME, keep)
                        try:
                            export["onnx_int8"] = checked(int8, int8_tolerance) | {
                                "fp32_nodes": keep, "activations": PER_TOKEN}
                            break
                        except ExportMismatch as exc:
                            if step == len(ladder) - 1:
                                raise
                            log.warning("int8 export beyond its bounds; retrying with fp32 feed-forward outputs",
                                        extra={"reason": str(exc), "keep_fp32": ladder[step + 1]})
                    moved = export["onnx_int8"]["batch_invariance_max_diff"]
                    if moved != 0.0:
                        raise ExportMismatch(
                            f"{ONNX_INT8_NAME}: a text's logits move by up to {moved:.3g} with its batch "
                            "neighbours, padding or thread count; per-token int8 must make them identical"
                        )
                    weights["onnx_int8"] = ONNX_INT8_NAME
        for path in staging.iterdir():
            path.chmod(0o644)
        num_parameters = _count_parameters(hf_model_dir / SAFETENSORS_NAME)
        manifest = manifest.model_copy(
            update={
                "weights": weights,
                "num_parameters": num_parameters,
                "metrics": manifest.metrics | {"export": export},
            }
        )
        manifest = write_manifest(staging, manifest)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("built artifact %s at %s (%s)", manifest.ref, out_dir, ", ".join(weights))
    return manifest


def _count_parameters(safetensors_path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(safetensors_path), framework="numpy") as fh:
        for key in fh.keys():
            total += int(np.prod(fh.get_slice(key).get_shape()))
    return total
