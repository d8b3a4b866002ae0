"""Evaluation: headline metrics per validation set, per-label F1 and ROC-AUC, threshold calibration,
and model cards (JSON + Markdown).

Headline metrics follow the published benchmarks: OLID offensive macro-F1 (the ``toxic`` label),
SemEval-2017 sentiment macro-recall, SST-2 accuracy (negative vs positive), Jigsaw mean ROC-AUC, both on
the natural-rate split and on the test-shaped balanced set (``jigsaw_balanced``: toxic and non-toxic rows
weighted 1:1, as the withheld test is sampled). Thresholds are calibrated on the pooled natural-rate
validation sets (F1-optimal for review; the lowest score with precision >= ``BLOCK_PRECISION`` and at least
``BLOCK_FLOOR`` for block), and the sentiment head's logit offsets on the sentiment sets
(``fit_logit_bias``); the metrics are reported with both.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, recall_score, roc_auc_score

from models.artifact import Head, dump_json
from models.labels import TOXICITY_SIGNALS, Task
from models.runtime import head_probabilities
from training.data import JIGSAW_BALANCED, TOX, Example

PredictFn = Callable[[list[str]], np.ndarray]  # texts -> logits (n, columns)
HEADLINE = {"olid": "macro_f1", "semeval": "macro_recall", "sst2": "accuracy", "jigsaw": "mean_roc_auc",
            JIGSAW_BALANCED: "mean_roc_auc"}
# Sets sampled to be balanced rather than at a natural rate: scored with toxic and non-toxic weighted 1:1,
# and kept out of threshold calibration (an enriched set would pull the thresholds down).
BALANCED_SETS = frozenset({JIGSAW_BALANCED})


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Threshold maximising F1 of the positive class, and that F1."""
    if y.sum() == 0 or y.sum() == len(y):
        return 0.5, float("nan")
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.nanargmax(f1[:-1]))
    return float(thresholds[best]), float(f1[best])


def precision_threshold(y: np.ndarray, p: np.ndarray, target: float, floor: float) -> float:
    """Lowest threshold at which precision reaches ``target`` (blocking must rarely be wrong)."""
    if y.sum() == 0:
        return max(floor, 0.95)
    precision, _, thresholds = precision_recall_curve(y, p)
    ok = np.where(precision[:-1] >= target)[0]
    return float(max(floor, thresholds[ok[0]])) if len(ok) else max(floor, 0.95)


# Blocking hides a message without a human look: it must rarely be wrong, and never happen at a score a
# review would already catch. Pooled validation is rich in offensive tweets (Davidson is 83% offensive),
# which makes precision look high at low scores; the floor keeps "block" for near-certain cases.
BLOCK_PRECISION = 0.95
BLOCK_FLOOR = 0.9


def calibrate(tox_probs: dict[str, np.ndarray], tox_targets: dict[str, np.ndarray],
              block_precision: float = BLOCK_PRECISION) -> tuple[dict[str, float], dict[str, float]]:
    """Review (F1-optimal) and block (high-precision) thresholds per toxicity label, on pooled validation."""
    probs = np.concatenate(list(tox_probs.values()))
    targets = np.concatenate(list(tox_targets.values()))
    review, block = {}, {}
    for label, col in _scored(probs, targets):
        known = targets[:, col] >= 0
        y, p = targets[known, col], probs[known, col]
        thr, _ = best_f1_threshold(y, p) if known.sum() else (0.5, 0.0)
        thr = float(np.clip(thr, 0.05, 0.95))
        review[label] = round(thr, 4)
        floor = max(thr, BLOCK_FLOOR)
        block[label] = round(precision_threshold(y, p, block_precision, floor=floor), 4) if known.sum() else 0.95
    return review, block


def _scored(probs: np.ndarray, targets: np.ndarray) -> list[tuple[str, int]]:
    """``(label, column)`` for the labels both the model scores and the targets hold: a model trained before
    a label was appended to the contract scores a prefix of it (``models.labels.accepted_labels``)."""
    return [(label, col) for label, col in TOX.items() if col < min(probs.shape[1], targets.shape[1])]


def toxicity_metrics(probs: np.ndarray, targets: np.ndarray, thresholds: dict[str, float],
                     balanced: bool = False) -> dict[str, float]:
    """Per-label F1 and ROC-AUC, their means over the harm labels, and the offensive/not macro-F1.
    ``balanced``: every ROC-AUC weights the toxic and the non-toxic rows 1:1 (``min_roc_auc`` then names the
    worst label's, which the Jigsaw test's floor also bounds)."""
    out: dict[str, float] = {}
    f1s, aucs = [], []
    weights = _balance_weights(targets) if balanced else None
    for label, col in _scored(probs, targets):
        known = targets[:, col] >= 0
        y = targets[known, col]
        if known.sum() == 0 or y.sum() == 0:
            continue
        pred = probs[known, col] >= thresholds[label]
        out[f"positives_{label}"] = int(y.sum())  # how much a label's F1 and ROC-AUC can be trusted
        out[f"f1_{label}"] = float(f1_score(y, pred, zero_division=0))
        if label not in TOXICITY_SIGNALS:
            f1s.append(out[f"f1_{label}"])
        if 0 < y.sum() < len(y):
            w = weights[known] if weights is not None else None
            out[f"roc_auc_{label}"] = float(roc_auc_score(y, probs[known, col], sample_weight=w))
            if label not in TOXICITY_SIGNALS:  # the benchmarks' mean is over the harm labels
                aucs.append(out[f"roc_auc_{label}"])
    if f1s:
        out["label_macro_f1"] = float(np.mean(f1s))
    if aucs:
        out["mean_roc_auc"] = float(np.mean(aucs))
        out["min_roc_auc"] = float(np.min(aucs))
    known = targets[:, TOX["toxic"]] >= 0
    y = targets[known, TOX["toxic"]]
    if known.sum() and 0 < y.sum() < len(y):  # the binary offensive/not task, both classes' F1 averaged
        pred = probs[known, TOX["toxic"]] >= thresholds["toxic"]
        out["macro_f1"] = float(f1_score(y, pred, average="macro"))
    return out


def _balance_weights(targets: np.ndarray) -> np.ndarray:
    """Row weights under which the toxic and the non-toxic rows count equally."""
    toxic = targets[:, TOX["toxic"]] == 1
    if toxic.all() or not toxic.any():
        raise ValueError("a balanced set needs both toxic and non-toxic rows")
    return np.where(toxic, 0.5 / toxic.sum(), 0.5 / (~toxic).sum())


def served_sentiment(probs: np.ndarray, targets: np.ndarray,
                     classes: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The served argmax over the set's classes, and the classes the set holds (its macro metrics' labels)."""
    pred = np.argmax(np.where(classes > 0, probs, -1.0), axis=1)
    return pred, [int(c) for c in np.nonzero(classes[0])[0] if (targets == c).any()]


def sentiment_metrics(probs: np.ndarray, targets: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    pred, labels = served_sentiment(probs, targets, classes)
    out = {"accuracy": float((pred == targets).mean())}
    out["macro_recall"] = float(recall_score(targets, pred, labels=labels, average="macro", zero_division=0))
    out["macro_f1"] = float(f1_score(targets, pred, labels=labels, average="macro", zero_division=0))
    return out


# The sentiment head's decision rule. A softmax trained on a mix of sets argmaxes towards the classes the
# mix holds most (neutral tweets, positive phrases), while the benchmarks score balanced recall: offsets
# added to the logits move each class's share of the argmax. Measured on the v5 DistilBERT student's
# validation: SemEval macro-recall 0.680 -> 0.709 at SST-2 accuracy 0.877 -> 0.873.
BIAS_GRID = np.round(np.arange(-3.0, 3.0001, 0.05), 2)


def fit_logit_bias(head: Head, sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Per-label logit offsets maximising the summed headline metric of the single-label ``sets``
    (``{source: (logits, targets, classes)}``), each set scored as served (its argmax over its classes).
    The first label stays at 0 (only differences count); every combination of the others on ``BIAS_GRID``
    is tried, ties keeping the smallest offsets. (One offset at a time stopped short: DistilBERT v27 read
    SemEval 0.7110 / SST-2 0.9144 where a pair it never tried gives 0.7147 / 0.9151.)"""
    cols = {source: (logits[:, head.offset : head.offset + head.width], y, c) for source, (logits, y, c) in sets.items()}

    def objective(biases: np.ndarray) -> np.ndarray:  # (m, width) -> (m,); the argmax is all the metrics read
        total = np.zeros(len(biases))
        for source, (z, y, c) in cols.items():
            shifted = np.where(c[None] > 0, z[None] + biases[:, None, :], -np.inf)  # (m, rows, width)
            pred = np.argmax(shifted, axis=2)  # (m, rows)
            if HEADLINE.get(source) == "accuracy":
                total += (pred == y[None]).mean(axis=1)
            else:  # macro recall over the classes the set holds
                labels = [k for k in np.nonzero(c[0])[0] if (y == k).any()]
                total += np.mean([(pred[:, y == k] == k).mean(axis=1) for k in labels], axis=0)
        return total

    # Every combination on the grid (121 x 121 for the three sentiment labels), the last offset vectorised;
    # ties keep the smallest offsets (the grid is ordered by magnitude, so the first maximum of a row is its
    # smallest last offset).
    grid = np.array(sorted(BIAS_GRID, key=abs))
    best_score, best = -np.inf, np.zeros(head.width)
    for lead in itertools.product(grid, repeat=head.width - 2):
        trials = np.zeros((len(grid), head.width))
        trials[:, 1:-1], trials[:, -1] = lead, grid
        scores = objective(trials)
        i = int(np.argmax(scores))
        if scores[i] > best_score + 1e-9 or (scores[i] > best_score - 1e-9
                                             and np.abs(trials[i]).sum() < np.abs(best).sum()):
            best_score, best = max(best_score, float(scores[i])), trials[i]
    return {label: float(b) for label, b in zip(head.labels, best, strict=True) if b}


def evaluate(predict: PredictFn, heads: Sequence[Head], validation: dict[str, list[Example]],
             thresholds: tuple[dict[str, float], dict[str, float]] | None = None,
             block_precision: float = BLOCK_PRECISION) -> dict:
    """Metrics per validation set. Unless ``thresholds`` are given, calibrates them and the sentiment head's
    ``logit_bias`` (``report["logit_bias"]``); given, the heads are judged as they stand."""
    by_task = {h.task: h for h in heads}
    tox_probs, tox_targets, sent = {}, {}, {}
    for source, examples in validation.items():
        if not examples:
            continue
        logits = predict([ex.text for ex in examples])
        if Task.TOXICITY in by_task and examples[0].toxicity is not None:
            tox_probs[source] = head_probabilities(by_task[Task.TOXICITY], logits)
            tox_targets[source] = np.array([ex.toxicity for ex in examples])
        if Task.SENTIMENT in by_task and examples[0].sentiment is not None:
            sent[source] = (logits, np.array([ex.sentiment for ex in examples]),
                            np.array([ex.sentiment_classes for ex in examples]))
    report: dict = {"sets": {}, "thresholds": {}, "block_thresholds": {}}
    if tox_probs:
        natural = [s for s in tox_probs if s not in BALANCED_SETS] or list(tox_probs)
        review, block = thresholds or calibrate({s: tox_probs[s] for s in natural},
                                                {s: tox_targets[s] for s in natural}, block_precision)
        report["thresholds"], report["block_thresholds"] = review, block
        for source in tox_probs:
            report["sets"][source] = toxicity_metrics(tox_probs[source], tox_targets[source], review,
                                                      balanced=source in BALANCED_SETS)
    sentiment = by_task.get(Task.SENTIMENT)
    if sent and thresholds is None:  # calibrating: the sentiment decision rule is fitted with the thresholds
        report["logit_bias"] = fit_logit_bias(sentiment, sent)
        sentiment = sentiment.model_copy(update={"logit_bias": report["logit_bias"]})
    for source, (logits, y, c) in sent.items():
        report["sets"][source] = sentiment_metrics(head_probabilities(sentiment, logits), y, c)
    report["headline"] = {f"{s}_{m}": round(report["sets"][s][m], 4)
                          for s, m in HEADLINE.items() if s in report["sets"] and m in report["sets"][s]}
    report["n"] = {s: len(v) for s, v in validation.items()}
    return report


def retention(student: dict, teacher: dict) -> dict[str, float]:
    """Student headline / teacher headline, per metric (the DistilBERT paper's 97% claim)."""
    return {k: round(student[k] / teacher[k], 4) for k in student if k in teacher and teacher[k]}


def write_model_card(folder: Path, card: dict) -> None:
    """``model_card.json`` and a short ``MODEL_CARD.md`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    dump_json(folder / "model_card.json", card)
    lines = [f"# {card.get('name', 'model')} ({card.get('family', '?')})", ""]
    for key in ("parameters", "size_bytes", "teacher", "latency_ms_per_msg"):
        if card.get(key) is not None:  # a soup or a recalibration has no teacher of its own
            lines.append(f"- {key}: {card[key]}")
    if card.get("soup_of"):  # training/soup.py: an average of these models' weights
        lines.append(f"- soup of: {', '.join(card['soup_of'])}")
    if card.get("requantized_from"):  # chatmod train requantize: the same weights and rules, exported again
        lines.append(f"- weights of: {card['requantized_from']} (re-exported with today's int8: "
                     f"{card.get('int8_weights') or 'full-range'} weights; its decision rules kept)")
    elif card.get("recalibrated_from"):  # chatmod train recalibrate: the same weights, decision rules refitted
        lines.append(f"- weights of: {card['recalibrated_from']} (decision rules fitted again, as served)")
    if "headline" in card:
        lines += ["", "## Validation headline metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in card["headline"].items()]
    if "retention" in card:
        lines += ["", "## Retention of the teacher's score", ""]
        lines += [f"- {k}: {v:.1%}" for k, v in card["retention"].items()]
    if "thresholds" in card:
        lines += ["", "## Thresholds (review / block)", ""]
        lines += [f"- {k}: {v} / {card.get('block_thresholds', {}).get(k)}" for k, v in card["thresholds"].items()]
    if card.get("logit_bias"):
        lines += ["", "## Sentiment decision rule (logit offsets, fitted for balanced recall)", ""]
        lines += [f"- {k}: {v:+.2f}" for k, v in card["logit_bias"].items()]
    if "functional" in card:
        func = card["functional"]
        lines += ["", f"## Functional suite: {func['overall']:.1%} (mean over behaviours; worst "
                      f"{func['worst']['name']} {func['worst']['pass_rate']:.0%})", "",
                  "| group | behaviour | expects | pass rate |", "| --- | --- | --- | --- |"]
        lines += [f"| {b['group']} | {name} | {b['expect']} | {b['pass_rate']:.0%} |"
                  for name, b in sorted(func["behaviours"].items(), key=lambda kv: (kv[1]["group"], kv[0]))]
    if "data" in card:
        lines += ["", "## Data fingerprints (sha256, first 16 hex)", ""]
        lines += [f"- {k}: {v}" for k, v in card["data"].items()]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def torch_predictor(model, tokenizer, max_length: int = 128, batch_size: int = 128, precision: str = "fp32",
                    progress: Callable[[int, int], None] | None = None) -> PredictFn:
    """Batched, length-sorted torch inference returning logits in input order, on the model's device;
    ``precision="bf16"`` (or "auto" where native) runs the matmuls in bfloat16."""
    import torch

    from training.distill import TrainConfig, autocast

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0

    def predict(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        order = np.argsort([len(e) for e in enc], kind="stable")
        out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (batch, seq)
                mask = torch.zeros_like(ids)
                for row, i in enumerate(idx):
                    ids[row, : len(enc[i])] = torch.tensor(enc[i])
                    mask[row, : len(enc[i])] = 1
                with autocast(TrainConfig(precision=precision), device.type):
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                out[idx] = logits.float().cpu().numpy()
                if progress:
                    progress(min(start + batch_size, len(order)), len(order))
        return out

    return predict
