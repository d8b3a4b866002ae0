"""The paired comparison of two served models: its resampled metrics agree with sklearn's, at full weight
it reads what evaluation reads, a model against itself differs by exactly nothing, and a better model is
told apart from the noise only when the data supports it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from models.artifact import contract_heads
from models.labels import TOXICITY_LABELS, Task
from training.compare import (
    accuracy,
    compare_models,
    compare_rows,
    compare_suite,
    macro_f1,
    macro_recall,
    resample_counts,
    served_rows,
    weighted_roc_auc,
)
from training.data import JIGSAW_BALANCED, NOT_ANNOTATED, TOX, Example
from training.evaluate import evaluate

pytestmark = pytest.mark.unit

HEADS = contract_heads([Task.TOXICITY, Task.SENTIMENT])
WIDTH = sum(h.width for h in HEADS)


def _drawn(counts_row: np.ndarray) -> np.ndarray:
    """The row indices a resample's counts stand for, each repeated as often as it was drawn."""
    return np.repeat(np.arange(len(counts_row)), counts_row)


def test_resampled_metrics_are_sklearns_on_the_drawn_rows() -> None:
    rng = np.random.default_rng(0)
    n = 300
    y2, p2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    scores = np.round(rng.random(n), 1)  # coarse scores: many ties, counted half
    counts = resample_counts(n, 25, rng)
    f1, acc, rec = macro_f1(y2, p2, counts), accuracy(y3, p3, counts), macro_recall(y3, p3, [0, 1, 2], counts)
    auc = weighted_roc_auc(y2, scores, counts.astype(float))
    for r, row in enumerate(counts):
        idx = _drawn(row)
        assert f1[r] == pytest.approx(f1_score(y2[idx], p2[idx], average="macro"))
        assert acc[r] == pytest.approx(accuracy_score(y3[idx], p3[idx]))
        assert rec[r] == pytest.approx(recall_score(y3[idx], p3[idx], labels=[0, 1, 2], average="macro"))
        assert auc[r] == pytest.approx(roc_auc_score(y2[idx], scores[idx]))
    weights = rng.random((3, n))
    for r, w in enumerate(weights):
        assert weighted_roc_auc(y2, scores, weights)[r] == pytest.approx(roc_auc_score(y2, scores, sample_weight=w))


def _validation(rng: np.random.Generator) -> dict[str, list[Example]]:
    """Headline sets shaped like the real ones: OLID annotates toxic (and targeted) only, Jigsaw the six harm
    labels, the balanced Jigsaw set weighed 1:1 (a fifth of its rows toxic), SemEval three classes, SST-2 no neutral label."""
    pad = [NOT_ANNOTATED] * (len(TOXICITY_LABELS) - 6)

    def harms(n: int, rate: float) -> list[tuple[int, ...]]:
        rows = (rng.random((n, 6)) < rate).astype(int)
        rows[:, 3] |= rng.random(n) < 0.3  # threats common enough to rank
        rows[:, 1:] &= rows[:, :1]  # every harm is toxic
        return [(*map(int, r), *pad) for r in rows]

    olid = [(int(t), *[NOT_ANNOTATED] * (len(TOXICITY_LABELS) - 1)) for t in rng.random(400) < 0.33]
    return {
        "olid": [Example(f"olid {i}", "olid", toxicity=t) for i, t in enumerate(olid)],
        "jigsaw": [Example(f"jig {i}", "jigsaw", toxicity=t) for i, t in enumerate(harms(500, 0.15))],
        JIGSAW_BALANCED: [Example(f"bal {i}", JIGSAW_BALANCED, toxicity=t) for i, t in enumerate(harms(300, 0.2))],
        "semeval": [Example(f"sem {i}", "semeval", sentiment=int(s)) for i, s in enumerate(rng.integers(0, 3, 600))],
        "sst2": [Example(f"sst {i}", "sst2", sentiment=int(s), sentiment_classes=(1, 1, 1))
                 for i, s in enumerate(rng.choice([0, 2], 500))],
    }


def _model(validation: dict[str, list[Example]], skill: float, seed: int):
    """A predictor whose logits lean towards each text's true labels by ``skill``."""
    rng = np.random.default_rng(seed)
    table = {}
    for examples in validation.values():
        for ex in examples:
            z = rng.normal(0.0, 1.0, WIDTH)
            if ex.toxicity is not None:
                labels = np.clip(np.array(ex.toxicity), 0, 1)
                z[: len(TOXICITY_LABELS)] += skill * (2 * labels - 1 + labels[0])  # toxic rows score higher on all
            if ex.sentiment is not None:
                z[len(TOXICITY_LABELS) + ex.sentiment] += skill
            table[ex.text] = z

    return lambda texts: np.stack([table[t] for t in texts])


def test_at_full_weight_each_set_reads_what_evaluation_reads() -> None:
    validation = _validation(np.random.default_rng(1))
    predict = _model(validation, skill=1.0, seed=2)
    report = evaluate(predict, HEADS, validation)  # calibrates the thresholds and the sentiment offsets
    heads = [h.model_copy(update={"thresholds": report["thresholds"]}) if h.task == Task.TOXICITY
             else h.model_copy(update={"logit_bias": report["logit_bias"]}) for h in HEADS]
    rows = served_rows(predict, heads, validation)
    compared = compare_rows(rows, rows, resamples=200)
    assert set(compared) == {"olid", "jigsaw", JIGSAW_BALANCED, "semeval", "sst2"}
    for source, row in compared.items():
        assert row["a"] == pytest.approx(report["headline"][f"{source}_{row['metric']}"], abs=5e-5)
        assert row["delta"] == 0 and row["delta_interval"] == [0.0, 0.0] and row["verdict"] == "within noise"
        lo, hi = row["a_interval"]
        assert lo < row["a"] < hi  # the model's own interval: the noise the paired one removes


def test_a_better_model_is_told_apart_and_a_twin_is_not() -> None:
    validation = _validation(np.random.default_rng(3))
    shipped = _model(validation, skill=1.0, seed=4)
    twin = _model(validation, skill=1.0, seed=5)  # as skilled, different noise
    better = _model(validation, skill=2.0, seed=4)
    heads = [h.model_copy(update={"thresholds": dict.fromkeys(TOX, 0.5)}) if h.task == Task.TOXICITY else h
             for h in HEADS]
    lines: list[str] = []
    against_better = compare_models(shipped, heads, better, heads, validation, resamples=500, progress=lines.append)
    against_twin = compare_models(shipped, heads, twin, heads, validation, resamples=500)
    assert len(lines) == 3
    for source, row in against_better.items():
        assert row["verdict"] == "better" and row["delta_interval"][0] > 0 and row["b_better_share"] > 0.95, source
        # pairing: the difference's interval is narrower than the sum of the two models' own half-widths
        a_half = (row["a_interval"][1] - row["a_interval"][0]) / 2
        b_half = (row["b_interval"][1] - row["b_interval"][0]) / 2
        assert row["delta_interval"][1] - row["delta_interval"][0] < 2 * (a_half + b_half), source
    assert sum(row["verdict"] == "within noise" for row in against_twin.values()) >= 4
    reversed_ = compare_models(better, heads, shipped, heads, validation, resamples=500)
    assert all(row["verdict"] == "worse" for row in reversed_.values())


def test_models_scored_on_different_rows_are_refused() -> None:
    validation = _validation(np.random.default_rng(6))
    heads = [h.model_copy(update={"thresholds": dict.fromkeys(TOX, 0.5)}) if h.task == Task.TOXICITY else h
             for h in HEADS]
    rows = served_rows(_model(validation, 1.0, 7), heads, validation)
    shorter = served_rows(_model(validation, 1.0, 7), heads, {**validation, "olid": validation["olid"][:-1]})
    with pytest.raises(ValueError, match="olid: the two models were scored on different rows"):
        compare_rows(rows, shorter)


def test_the_suite_is_compared_case_by_case_with_each_behaviour_weighed_the_same() -> None:
    rng = np.random.default_rng(8)
    shipped = {"threats": list(rng.random(40) < 0.6), "game_violence": list(rng.random(120) < 0.9)}
    fixed_threats = {**shipped, "threats": [True] * 40}  # every threat case passes now
    same = compare_suite(shipped, shipped, resamples=300)
    assert same["a"] == pytest.approx((np.mean(shipped["threats"]) + np.mean(shipped["game_violence"])) / 2)
    assert same["delta"] == 0 and same["delta_interval"] == [0.0, 0.0] and same["n"] == 160
    better = compare_suite(shipped, fixed_threats, resamples=300)
    assert better["verdict"] == "better" and better["delta"] == pytest.approx((1 - np.mean(shipped["threats"])) / 2)
    with pytest.raises(ValueError, match="different functional suites"):
        compare_suite(shipped, {"threats": shipped["threats"]})
