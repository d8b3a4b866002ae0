"""Thresholds, metrics and the choice of served model, on cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score

from models.artifact import contract_heads
from models.labels import BASE_TOXICITY_LABELS, TOXICITY_LABELS, Task
from tests.tiny_models import N_LOGITS
from training.data import CLEAN, SENT, TOX, Example, tox
from training.evaluate import (
    best_f1_threshold,
    calibrate,
    evaluate,
    precision_threshold,
    sentiment_metrics,
    toxicity_metrics,
)
from training.train_all import choose_defaults

pytestmark = pytest.mark.unit


def test_best_f1_threshold_separates_separable_classes() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    thr, f1 = best_f1_threshold(y, p)
    assert 0.3 < thr <= 0.7 and f1 == pytest.approx(1.0)
    assert ((p >= thr) == y.astype(bool)).all()


def test_best_f1_threshold_without_both_classes_is_undefined() -> None:
    thr, f1 = best_f1_threshold(np.zeros(4), np.linspace(0, 1, 4))
    assert thr == 0.5 and np.isnan(f1)


def test_precision_threshold_is_the_lowest_reaching_the_target() -> None:
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1, 1])
    p = np.linspace(0.05, 0.95, 10)
    thr = precision_threshold(y, p, target=0.8, floor=0.0)
    assert precision_score(y, p >= thr) >= 0.8
    lower = [t for t in p if t < thr]
    assert lower and all(precision_score(y, p >= t) < 0.8 for t in lower)
    assert precision_threshold(y, p, target=0.8, floor=0.9) == 0.9  # never below the floor
    assert precision_threshold(y, p, target=1.01, floor=0.0) == 0.95  # unreachable: the cautious default


def test_calibrate_bounds_and_orders_thresholds() -> None:
    rng = np.random.default_rng(0)
    n = 300
    width = len(TOXICITY_LABELS)
    targets = rng.integers(0, 2, size=(n, width))
    probs = np.clip(0.35 * targets + rng.uniform(0, 0.65, size=(n, width)), 0, 1)  # overlapping but informative
    targets[:, TOX["threat"]] = -1  # a label no set annotates
    targets[: n // 2, TOX["obscene"]] = -1  # a label half the sets annotate
    probs[:, TOX["severe_toxic"]] = 0.01 + 0.01 * targets[:, TOX["severe_toxic"]]  # F1-optimal ~0.02
    probs[:, TOX["insult"]] = 0.98 + 0.01 * targets[:, TOX["insult"]]  # F1-optimal ~0.99
    review, block = calibrate({"a": probs[:100], "b": probs[100:]}, {"a": targets[:100], "b": targets[100:]})
    assert set(review) == set(block) == set(TOXICITY_LABELS)
    for label in TOXICITY_LABELS:
        assert 0.05 <= review[label] <= 0.95
        assert review[label] <= block[label] <= 1.0
    assert review["severe_toxic"] == 0.05 and review["insult"] == 0.95  # clipped
    assert review["threat"] == 0.5 and block["threat"] == 0.95  # nothing to calibrate on
    # a model trained before ``targeted`` was appended scores the base labels only: calibrated on those
    old_review, old_block = calibrate({"a": probs[:, :6]}, {"a": targets})
    assert set(old_review) == set(old_block) == set(BASE_TOXICITY_LABELS)
    assert old_review == {k: v for k, v in review.items() if k in BASE_TOXICITY_LABELS}


def test_toxicity_metrics_macro_f1_matches_sklearn_on_a_known_confusion() -> None:
    # toxic: TP 3, FN 1, FP 2, TN 4; plus two rows where toxic is not annotated
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.9, 0.1, 0.2, 0.3, 0.4])
    targets = np.full((12, len(TOXICITY_LABELS)), -1)
    targets[:10, TOX["toxic"]] = y
    probs = np.zeros((12, len(TOXICITY_LABELS)))
    probs[:10, TOX["toxic"]] = p
    probs[10:, TOX["toxic"]] = 0.99  # unannotated rows: must not count as false positives
    out = toxicity_metrics(probs, targets, dict.fromkeys(TOXICITY_LABELS, 0.5))
    expected = f1_score(y, p >= 0.5, average="macro")
    assert out["macro_f1"] == pytest.approx(expected)
    assert out["macro_f1"] == pytest.approx((6 / 9 + 8 / 11) / 2)  # (F1 offensive + F1 not) / 2, by hand
    assert out["f1_toxic"] == pytest.approx(6 / 9)
    assert out["roc_auc_toxic"] == pytest.approx(17 / 24)  # 24 (pos, neg) pairs: 16 right, 2 ties at half
    assert out["positives_toxic"] == 4  # the annotated positives the label's figures rest on
    assert "f1_insult" not in out  # never annotated: no metric, rather than a fake 0


def test_sentiment_metrics_restrict_argmax_to_the_sets_classes() -> None:
    probs = np.array([[0.3, 0.6, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3]])  # neutral wins unrestricted
    targets = np.array([SENT["negative"], SENT["positive"], SENT["negative"]])
    silent_on_neutral = np.array([[1, 0, 1]] * 3)  # a set whose annotation says nothing about neutral
    out = sentiment_metrics(probs, targets, silent_on_neutral)
    assert out["accuracy"] == pytest.approx(2 / 3)  # third row: positive 0.3 > negative 0.2
    assert out["macro_recall"] == pytest.approx((1 / 2 + 1) / 2)  # negative 1/2, positive 1/1
    # SST-2 as served: every class may be the answer, and a neutral answer on its texts is wrong; the macro
    # figures average the classes the set holds (no neutral target: no 0 recall for it)
    served = sentiment_metrics(probs, targets, np.ones((3, 3), dtype=int))
    assert served["accuracy"] == 0.0 and served["macro_recall"] == 0.0


def test_evaluate_reports_headlines_per_set() -> None:
    heads = contract_heads([Task.TOXICITY, Task.SENTIMENT])
    validation = {
        "olid": [Example("you idiot", "olid", tox(toxic=1)), Example("nice day", "olid", CLEAN)] * 5,
        "sst2": [Example("great", "sst2", sentiment=SENT["positive"], sentiment_classes=(1, 0, 1)),
                 Example("awful", "sst2", sentiment=SENT["negative"], sentiment_classes=(1, 0, 1))],
    }

    def predict(texts: list[str]) -> np.ndarray:  # a perfect model: toxic iff "idiot", positive iff "great"
        out = np.full((len(texts), N_LOGITS), -4.0)
        for i, text in enumerate(texts):
            out[i, 0] = 4.0 if "idiot" in text else -4.0
            out[i, len(TOXICITY_LABELS) + (SENT["positive"] if "great" in text else SENT["negative"])] = 4.0
        return out

    report = evaluate(predict, heads, validation)
    assert report["headline"] == {"olid_macro_f1": 1.0, "sst2_accuracy": 1.0}
    assert report["n"] == {"olid": 10, "sst2": 2}
    assert 0.05 <= report["thresholds"]["toxic"] <= report["block_thresholds"]["toxic"]


def test_balanced_sets_weigh_toxic_and_clean_rows_equally_and_stay_out_of_calibration() -> None:
    from sklearn.metrics import roc_auc_score

    # 2 toxic rows (one of them a threat) and 8 clean; a threat score that ranks the other toxic row above the
    # clean ones: its AUC against mostly clean rows looks better than against a balanced mix
    targets = np.array([tox(toxic=1, threat=1), tox(toxic=1, threat=0)] + [CLEAN] * 8)
    probs = np.full((10, len(TOXICITY_LABELS)), 0.1)
    probs[:, TOX["toxic"]] = [0.9, 0.8] + [0.2] * 8
    probs[:, TOX["threat"]] = [0.6, 0.7] + list(np.linspace(0.05, 0.65, 8))
    thresholds = dict.fromkeys(TOXICITY_LABELS, 0.5)
    natural = toxicity_metrics(probs, targets, thresholds)
    balanced = toxicity_metrics(probs, targets, thresholds, balanced=True)
    weights = np.array([2.5, 2.5] + [0.625] * 8)  # toxic and clean halves of the weight
    assert balanced["roc_auc_threat"] == pytest.approx(
        roc_auc_score(targets[:, TOX["threat"]], probs[:, TOX["threat"]], sample_weight=weights))
    assert balanced["roc_auc_threat"] < natural["roc_auc_threat"]
    harm = [balanced[f"roc_auc_{label}"] for label in BASE_TOXICITY_LABELS if f"roc_auc_{label}" in balanced]
    assert balanced["min_roc_auc"] == min(harm)

    heads = contract_heads([Task.TOXICITY])
    olid = [Example("you idiot", "olid", tox(toxic=1)), Example("nice day", "olid", CLEAN)] * 5
    enriched = [Example(f"idiot {i}", "jigsaw", tox(toxic=1)) for i in range(6)] + [Example("ok", "jigsaw", CLEAN)]

    def predict(texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), N_LOGITS), -4.0)
        for i, text in enumerate(texts):
            out[i, 0] = 4.0 if text == "you idiot" else (0.5 if "idiot" in text else -4.0)
        return out

    alone = evaluate(predict, heads, {"olid": olid})
    both = evaluate(predict, heads, {"olid": olid, "jigsaw_balanced": enriched})
    assert both["thresholds"] == alone["thresholds"]
    assert both["headline"]["jigsaw_balanced_mean_roc_auc"] == pytest.approx(1.0)


def _card(olid: float, jigsaw: float, latency: float) -> dict:
    return {"headline": {"olid_macro_f1": olid, "jigsaw_balanced_mean_roc_auc": jigsaw, "semeval_macro_recall": 0.6,
                         "sst2_accuracy": 0.8}, "latency_ms_per_msg": latency}


def test_choose_defaults_prefers_the_faster_model_within_the_margin() -> None:
    cards = {"distilbert": _card(0.800, 0.900, latency=4.0), "albert": _card(0.796, 0.898, latency=2.5)}
    assert choose_defaults(cards, [Task.TOXICITY], margin=0.01) == {Task.TOXICITY: "albert"}


def test_choose_defaults_keeps_the_better_model_beyond_the_margin() -> None:
    cards = {"distilbert": _card(0.800, 0.900, latency=4.0), "albert": _card(0.760, 0.880, latency=2.5)}
    assert choose_defaults(cards, [Task.TOXICITY], margin=0.01) == {Task.TOXICITY: "distilbert"}
    slower_and_worse = {"distilbert": _card(0.80, 0.90, latency=4.0),
                        "albert": _card(0.80, 0.899, latency=5.0)}
    assert choose_defaults(slower_and_worse, [Task.TOXICITY, Task.SENTIMENT]) == {
        Task.TOXICITY: "distilbert", Task.SENTIMENT: "distilbert"}


def test_choose_defaults_margin_is_measured_from_the_best_score() -> None:
    # b is within 0.01 of a and faster; c is within 0.01 of b but 0.012 below the best: c must not win
    cards = {"a": _card(0.800, 0.800, latency=10.0), "b": _card(0.794, 0.794, latency=5.0),
             "c": _card(0.788, 0.788, latency=1.0)}
    assert choose_defaults(cards, [Task.TOXICITY], margin=0.01) == {Task.TOXICITY: "b"}
