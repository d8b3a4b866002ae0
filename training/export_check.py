"""Is an exported graph the model it came from? Torch and ONNX logits on real texts, padded the way the
runtime pads them, compared within a tolerance and by the decisions they lead to; ``ExportMismatch``
refuses an export that is not."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import Head
from models.labels import ProblemType
from models.runtime import TextEncoder

log = logging.getLogger(__name__)

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


# Decisions closer to the boundary than this are ties: int8 rounding may break them either way, and
# counting them would fail exports of sound models whose scores sit near 0.5 (e.g. early in training).
TIE_MARGIN = 0.05


def load_torch_model(hf_model_dir: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    # Eager attention: the TorchScript exporter then sees plain MatMul/Softmax that ORT knows how to fuse.
    model = AutoModelForSequenceClassification.from_pretrained(
        hf_model_dir, attn_implementation="eager", use_safetensors=True
    )
    return model.float().eval()


def input_names(model: Any) -> list[str]:
    """input_ids + attention_mask, + token_type_ids for models whose forward takes them (BERT, ALBERT)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


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
    texts = list(texts)
    if not texts:
        raise ValueError("verify_export needs at least one text")
    model, torch_logits, onnx_logits = _paired_logits(Path(hf_model_dir), onnx_path, texts, max_length, batch_size)
    heads = list(heads) if heads is not None else _default_heads(model)
    max_abs = float(np.abs(torch_logits - onnx_logits).max())
    # int8 rounding error grows with the size of the activations: a model whose logits reach past
    # LOGIT_SCALE (where a sigmoid or softmax is saturated anyway) is allowed a proportionally larger move.
    scale = max(1.0, float(np.abs(torch_logits).max()) / LOGIT_SCALE) if torch_logits.size else 1.0
    max_abs_logit_diff = max_abs_logit_diff * scale
    agreement = _agreement(torch_logits, onnx_logits, heads)
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


def _paired_logits(hf_model_dir: Path, onnx_path: Path, texts: list[str], max_length: int,
                   batch_size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """(the torch model, its logits, the ONNX graph's logits) on the same padded batches."""
    import onnxruntime as ort
    import torch

    model = load_torch_model(hf_model_dir)
    torch_names = input_names(model)
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
    return model, torch_logits, onnx_logits


def _agreement(torch_logits: np.ndarray, onnx_logits: np.ndarray, heads: Sequence[Head]) -> float:
    """The share of decisions (per head, per text) the two agree on, ties left out."""
    agree, decisive = [], []
    pairs = zip(_decisions(torch_logits, heads), _decisions(onnx_logits, heads), strict=True)
    for (ref_dec, margin), (got_dec, _) in pairs:
        agree.append((ref_dec == got_dec).ravel())
        decisive.append((margin >= TIE_MARGIN).ravel())
    agree_all, decisive_all = np.concatenate(agree), np.concatenate(decisive)
    return float(agree_all[decisive_all].mean()) if decisive_all.any() else 1.0
