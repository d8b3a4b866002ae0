"""Two served models side by side on the same validation rows: each headline metric's difference with a paired
bootstrap interval.

Every round of training ends in a judgement: is the candidate better than what ships, or is the change
inside the validation splits' noise? OLID's validation holds 1,324 tweets, so its macro-F1 moves by more
than a point from one resample to the next, and two models' figures read apart cannot say whether a
difference of that size is real. Resampling the rows once and scoring both models on each resample (the
paired bootstrap) keeps what the two models share out of the interval: it is much narrower than either
model's own, and a difference whose interval excludes 0 is one the data supports.

The functional suite is compared the same way, case by case: its figure is the mean pass rate over
behaviours, so each resample draws every behaviour's cases again within the behaviour.

Each model is judged as served: its int8 artifact through the runtime, with the thresholds and sentiment
offsets it ships. A resample is a row of counts (how often each row was drawn), so every metric is a
weighted count, and all resamples are scored at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.artifact import Head
from models.labels import TOXICITY_SIGNALS, Task
from models.runtime import head_probabilities
from training.data import TOX, Example
from training.evaluate import BALANCED_SETS, HEADLINE, PredictFn, served_sentiment

LEVEL = 0.90  # the interval's coverage


@dataclass(frozen=True)
class ServedRows:
    """One model's served output on one validation set: all its headline metric reads."""

    metric: str
    targets: np.ndarray  # (n,) classes, or (n, labels) with -1 where a label is not annotated
    scores: np.ndarray  # (n,) predicted classes, or (n, labels) probabilities
    threshold: float | None = None  # toxicity: the served review threshold of ``toxic`` (OLID's macro-F1)
    labels: Sequence[int] = ()  # sentiment: the classes the set holds, for macro-recall


def served_rows(predict: PredictFn, heads: Sequence[Head], validation: dict[str, list[Example]],
                default_threshold: float = 0.5) -> dict[str, ServedRows]:
    """Per headline set, the model's served decisions: toxicity probabilities with its `toxic` threshold
    (where it ships none, the policy's ``default_threshold``), the sentiment argmax over the set's classes
    with its logit offsets."""
    by_task = {h.task: h for h in heads}
    out: dict[str, ServedRows] = {}
    for source, metric in HEADLINE.items():
        examples = validation.get(source) or []
        if not examples:
            continue
        logits = predict([ex.text for ex in examples])
        tox, sent = by_task.get(Task.TOXICITY), by_task.get(Task.SENTIMENT)
        if tox is not None and examples[0].toxicity is not None:
            probs = head_probabilities(tox, logits)
            # a model trained before a label was appended scores a prefix of the contract
            targets = np.array([ex.toxicity for ex in examples])[:, : probs.shape[1]]
            out[source] = ServedRows(metric, targets, probs, tox.thresholds.get("toxic", default_threshold))
        elif sent is not None and examples[0].sentiment is not None:
            y = np.array([ex.sentiment for ex in examples])
            classes = np.array([ex.sentiment_classes for ex in examples])
            pred, labels = served_sentiment(head_probabilities(sent, logits), y, classes)
            out[source] = ServedRows(metric, y, pred, labels=labels)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def macro_f1(y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Binary macro-F1 (both classes' F1 averaged) under each row of ``counts`` ``(resamples, n)``."""
    y, pred = y.astype(bool), pred.astype(bool)
    f1s = []
    for truth, guess in ((y, pred), (~y, ~pred)):
        tp, fp, fn = counts @ (truth & guess), counts @ (~truth & guess), counts @ (truth & ~guess)
        f1s.append(_ratio(2.0 * tp, 2.0 * tp + fp + fn))
    return (f1s[0] + f1s[1]) / 2


def accuracy(y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return _ratio(counts @ (y == pred), counts.sum(axis=1).astype(np.float64))


def macro_recall(y: np.ndarray, pred: np.ndarray, labels: Sequence[int], counts: np.ndarray) -> np.ndarray:
    """Recall averaged over ``labels`` under each resample (a class a resample misses scores 0, as in
    sklearn)."""
    return np.mean([_ratio(counts @ ((y == k) & (pred == k)), counts @ (y == k)) for k in labels], axis=0)


def weighted_roc_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC under each row of ``weights`` ``(resamples, n)``, ties counted half: the probability that a
    positive drawn by weight outranks a negative drawn by weight (sklearn's ``sample_weight`` AUC)."""
    _, group = np.unique(p, return_inverse=True)  # rows with equal scores share a group
    groups = int(group.max()) + 1
    y = y.astype(bool)
    out = np.empty(len(weights))
    for r, w in enumerate(weights):
        pos = np.bincount(group, weights=w * y, minlength=groups)  # (groups,) ascending score
        neg = np.bincount(group, weights=w * ~y, minlength=groups)
        below = np.cumsum(neg) - neg  # negative weight strictly under each group
        den = pos.sum() * neg.sum()
        out[r] = (pos @ (below + neg / 2)) / den if den > 0 else np.nan
    return out


def _toxicity_headline(rows: ServedRows, counts: np.ndarray, balanced: bool) -> np.ndarray:
    toxic = TOX["toxic"]
    if rows.metric == "macro_f1":
        known = rows.targets[:, toxic] >= 0
        y, pred = rows.targets[known, toxic], rows.scores[known, toxic] >= rows.threshold
        return macro_f1(y, pred, counts[:, known])
    weights = counts.astype(np.float64)
    if balanced:  # toxic and non-toxic rows weigh 1:1 in every resample, as the test is sampled
        is_toxic = rows.targets[:, toxic] == 1
        per_toxic, per_other = 0.5 / (counts @ is_toxic)[:, None], 0.5 / (counts @ ~is_toxic)[:, None]
        weights = weights * np.where(is_toxic, per_toxic, per_other)
    aucs = []
    for col, label in enumerate(list(TOX)[: rows.scores.shape[1]]):
        known = rows.targets[:, col] >= 0
        y = rows.targets[known, col]
        if label in TOXICITY_SIGNALS or not 0 < y.sum() < len(y):
            continue
        aucs.append(weighted_roc_auc(y, rows.scores[known, col], weights[:, known]))
    return np.mean(aucs, axis=0)


def headline(source: str, rows: ServedRows, counts: np.ndarray) -> np.ndarray:
    """The set's headline metric under each resample ``counts`` ``(resamples, n)``."""
    if rows.targets.ndim == 2:
        return _toxicity_headline(rows, counts, balanced=source in BALANCED_SETS)
    if rows.metric == "accuracy":
        return accuracy(rows.targets, rows.scores, counts)
    return macro_recall(rows.targets, rows.scores, rows.labels, counts)


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n)``: how often each row is drawn in each bootstrap resample."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])


def compare_rows(a: dict[str, ServedRows], b: dict[str, ServedRows], resamples: int = 2000,
                 seed: int = 13) -> dict[str, dict]:
    """Per set both models score: each model's figure and interval, and the paired difference ``b - a`` with
    its interval (the same resampled rows scored for both)."""
    rng = np.random.default_rng(seed)
    out = {}
    for source in (s for s in HEADLINE if s in a and s in b):
        n = len(a[source].targets)
        if len(b[source].targets) != n:
            raise ValueError(f"{source}: the two models were scored on different rows ({n} vs "
                             f"{len(b[source].targets)}); score both on one validation split")
        full = np.ones((1, n), dtype=np.int64)
        counts = resample_counts(n, resamples, rng)
        out[source] = _row(a[source].metric, n, float(headline(source, a[source], full)[0]),
                           float(headline(source, b[source], full)[0]),
                           headline(source, a[source], counts), headline(source, b[source], counts))
    return out


def compare_suite(a: dict[str, Sequence[bool]], b: dict[str, Sequence[bool]], resamples: int = 2000,
                  seed: int = 13) -> dict:
    """The functional suite's overall pass rate (the mean over behaviours) for both models, and the paired
    difference ``b - a``: each resample draws every behaviour's cases again, within the behaviour (a stratified
    bootstrap: each behaviour keeps its weight), and scores both models on the same draws."""
    if set(a) != set(b) or any(len(a[name]) != len(b[name]) for name in a):
        raise ValueError("the two models ran different functional suites; run both on one suite file")
    rng = np.random.default_rng(seed)
    draws_a, draws_b = np.zeros(resamples), np.zeros(resamples)
    for name in a:
        passes_a, passes_b = np.asarray(a[name], dtype=float), np.asarray(b[name], dtype=float)
        counts = resample_counts(len(passes_a), resamples, rng)
        draws_a += counts @ passes_a / len(passes_a) / len(a)
        draws_b += counts @ passes_b / len(passes_b) / len(a)
    point_a = float(np.mean([np.mean(v) for v in a.values()]))
    point_b = float(np.mean([np.mean(v) for v in b.values()]))
    return _row("mean_pass_rate", sum(len(v) for v in a.values()), point_a, point_b, draws_a, draws_b)


def _row(metric: str, n: int, point_a: float, point_b: float, draws_a: np.ndarray, draws_b: np.ndarray) -> dict:
    """One comparison's figures: both points, their own intervals, and the paired difference's."""
    low_q, high_q = (1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2
    delta = draws_b - draws_a
    lo, hi = np.nanquantile(delta, [low_q, high_q])
    return {
        "metric": metric, "n": n, "a": point_a, "b": point_b, "delta": point_b - point_a,
        "delta_interval": [float(lo), float(hi)],
        "a_interval": [float(x) for x in np.nanquantile(draws_a, [low_q, high_q])],
        "b_interval": [float(x) for x in np.nanquantile(draws_b, [low_q, high_q])],
        "b_better_share": float(np.mean(delta > 0)),
        "verdict": "better" if lo > 0 else "worse" if hi < 0 else "within noise",
    }


def compare_models(predict_a: PredictFn, heads_a: Sequence[Head], predict_b: PredictFn,
                   heads_b: Sequence[Head], validation: dict[str, list[Example]], resamples: int = 2000,
                   seed: int = 13, default_threshold: float = 0.5,
                   progress: Callable[[str], None] = lambda _: None) -> dict[str, dict]:
    """Score both models on ``validation`` as served and compare them set by set (``compare_rows``)."""
    progress("scoring the first model on the validation sets")
    a = served_rows(predict_a, heads_a, validation, default_threshold)
    progress("scoring the second model on the same rows")
    b = served_rows(predict_b, heads_b, validation, default_threshold)
    progress(f"{resamples} paired resamples")
    return compare_rows(a, b, resamples, seed)
