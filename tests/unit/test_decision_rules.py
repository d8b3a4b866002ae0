"""The sentiment head's logit offsets: validated, applied by the runtime, fitted for balanced recall on
validation only when calibrating, and a recalibrated artifact keeps its weights byte for byte and gets a
model card that judges it as served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from models.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    Head,
    Manifest,
    contract_heads,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from models.labels import ProblemType, Task
from models.runtime import TextClassifier, head_probabilities, softmax
from training.data import SENT, Example
from training.evaluate import BIAS_GRID, evaluate, fit_logit_bias, sentiment_metrics, write_model_card
from training.requantize import recalibrate_artifact, recalibration_card

pytestmark = pytest.mark.unit

SENTIMENT = contract_heads([Task.SENTIMENT])[0]
TOXICITY = contract_heads([Task.TOXICITY])[0]


def test_offsets_are_for_single_label_heads_and_their_own_labels() -> None:
    with pytest.raises(ValidationError, match="single-label"):
        TOXICITY.model_validate(TOXICITY.model_dump() | {"logit_bias": {"toxic": 1.0}})
    with pytest.raises(ValidationError, match="unknown labels"):
        Head.model_validate(SENTIMENT.model_dump() | {"logit_bias": {"happy": 1.0}})
    with pytest.raises(ValidationError, match=r"must lie in \[-20, 20\]"):
        Head.model_validate(SENTIMENT.model_dump() | {"logit_bias": {"neutral": 50.0}})
    assert SENTIMENT.problem_type == ProblemType.SINGLE_LABEL


def test_the_runtime_adds_the_offsets_before_the_softmax() -> None:
    logits = np.array([[0.0, 0.5, 0.2]])
    biased = SENTIMENT.model_copy(update={"logit_bias": {"neutral": -1.0}})
    assert head_probabilities(SENTIMENT, logits).argmax() == 1  # neutral without the offsets
    probs = head_probabilities(biased, logits)
    np.testing.assert_allclose(probs, softmax(np.array([[0.0, -0.5, 0.2]])))
    assert probs.argmax() == 2


def _skewed(n: int = 3000, neutral_boost: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced classes, logits that know the class but argmax towards neutral (a learned prior)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = 2.0 * np.eye(3)[y] + rng.normal(0.0, 1.0, (n, 3))
    logits[:, 1] += neutral_boost
    return logits, y


def test_fitted_offsets_undo_a_learned_prior_and_raise_balanced_recall() -> None:
    logits, y = _skewed()
    classes = np.ones((len(y), 3), dtype=int)
    bias = fit_logit_bias(SENTIMENT, {"semeval": (logits, y, classes)})
    assert "negative" not in bias  # the first label stays at 0: only differences count
    assert -2.0 < bias["neutral"] < -1.0 and abs(bias.get("positive", 0.0)) < 0.3

    def recall(head: Head) -> float:
        return sentiment_metrics(head_probabilities(head, logits), y, classes)["macro_recall"]

    assert recall(SENTIMENT.model_copy(update={"logit_bias": bias})) > recall(SENTIMENT) + 0.1


def test_offsets_trade_neutral_tweets_against_sst2_texts_served_as_neutral() -> None:
    """SST-2 counts a neutral answer as wrong; SemEval needs neutral: the fit weighs both as served."""
    logits, y = _skewed(900, neutral_boost=1.5)
    classes = np.ones((len(y), 3), dtype=int)
    rng = np.random.default_rng(3)
    y2 = rng.choice([SENT["negative"], SENT["positive"]], 600)  # SST-2: no neutral texts
    sst2 = 2.0 * np.eye(3)[y2] + rng.normal(0.0, 1.0, (600, 3))
    sst2[:, 1] += 1.5  # the same learned prior towards neutral
    alone = fit_logit_bias(SENTIMENT, {"semeval": (logits, y, classes)})
    both = fit_logit_bias(SENTIMENT, {"semeval": (logits, y, classes), "sst2": (sst2, y2, np.ones((600, 3), int))})
    assert both["neutral"] < alone["neutral"]  # SST-2's texts pull the neutral offset further down

    def served_accuracy(bias: dict) -> float:
        head = SENTIMENT.model_copy(update={"logit_bias": bias})
        return sentiment_metrics(head_probabilities(head, sst2), y2, np.ones((600, 3), int))["accuracy"]

    assert served_accuracy(both) > served_accuracy(alone)


def test_the_fitted_pair_is_the_best_pair_on_the_grid() -> None:
    """No local optimum: on these logits one offset at a time stops at 1.639 (summed served metric) where
    moving both reaches 1.642; the fit must find the grid's best pair, checked here by brute force."""
    logits, y = _skewed(600, neutral_boost=1.0, seed=4)
    rng = np.random.default_rng(5)
    y2 = rng.choice([SENT["negative"], SENT["positive"]], 300)
    sst2 = 1.5 * np.eye(3)[y2] + rng.normal(0.0, 1.2, (300, 3))
    sst2[:, 1] += 1.0

    def summed(neutral: np.ndarray, positive: np.ndarray) -> np.ndarray:  # offsets (m,) -> metric (m,)
        bias = np.stack([np.zeros_like(neutral), neutral, positive], axis=1)[:, None, :]  # (m, 1, 3)
        pred, pred2 = (logits[None] + bias).argmax(2), (sst2[None] + bias).argmax(2)  # (m, rows)
        recall = np.mean([(pred[:, y == k] == k).mean(axis=1) for k in range(3)], axis=0)
        return recall + (pred2 == y2[None]).mean(axis=1)

    grid = BIAS_GRID
    best = max(float(summed(np.full(len(grid), a), grid).max()) for a in grid)
    fitted = fit_logit_bias(SENTIMENT, {"semeval": (logits, y, np.ones((600, 3), int)),
                                        "sst2": (sst2, y2, np.ones((300, 3), int))})
    got = float(summed(np.array([fitted.get("neutral", 0.0)]), np.array([fitted.get("positive", 0.0)]))[0])
    assert got == pytest.approx(best) and best > 1.64


def test_evaluate_fits_the_offsets_only_when_calibrating() -> None:
    logits, y = _skewed(600)
    texts = [f"text {i}" for i in range(len(y))]
    rows = dict(zip(texts, logits, strict=True))
    validation = {"semeval": [Example(t, "semeval", sentiment=int(c)) for t, c in zip(texts, y, strict=True)]}

    def predict(batch: list[str]) -> np.ndarray:
        return np.stack([rows[t] for t in batch])

    calibrated = evaluate(predict, [SENTIMENT], validation)
    as_it_stands = evaluate(predict, [SENTIMENT], validation, ({}, {}))
    assert calibrated["logit_bias"]["neutral"] < 0 and "logit_bias" not in as_it_stands
    assert calibrated["headline"]["semeval_macro_recall"] > as_it_stands["headline"]["semeval_macro_recall"]


def test_a_recalibrated_artifact_keeps_its_weights_and_serves_its_offsets(tiny_artifact: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    texts = [f"message number {i} {'great' if i % 3 else 'awful'}" for i in range(90)]
    validation = {"semeval": [Example(t, "semeval", sentiment=int(rng.integers(0, 3))) for t in texts]}
    with pytest.raises(ValueError, match="already has version 1"):
        recalibrate_artifact(tiny_artifact, tmp_path / "same", "1", validation)
    manifest, _ = recalibrate_artifact(tiny_artifact, tmp_path / "v2", "2", validation)
    source = read_manifest(tiny_artifact)
    assert manifest.ref == "tiny-distilbert@2" and manifest.format_version == FORMAT_VERSION
    assert manifest.training["recalibrated_from"] == "tiny-distilbert@1"
    assert manifest.files["model.int8.onnx"] == source.files["model.int8.onnx"]  # same weights
    assert manifest.head(Task.TOXICITY).thresholds == source.head(Task.TOXICITY).thresholds  # kept
    assert "semeval_macro_recall" in manifest.metrics["validation"]
    verify_artifact(tmp_path / "v2")
    bias = manifest.head(Task.SENTIMENT).logit_bias
    before, after = TextClassifier(tiny_artifact, backend="onnx"), TextClassifier(tmp_path / "v2", backend="onnx")
    logits = before.predict_logits(texts[:5])
    sentiment = manifest.head(Task.SENTIMENT)
    expected = head_probabilities(sentiment, logits)
    got = np.array([[s[Task.SENTIMENT][label] for label in sentiment.labels] for s in after.predict(texts[:5])])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    if bias:  # a random tiny model may need none; when it has some, they change the probabilities
        assert not np.allclose(expected, head_probabilities(source.head(Task.SENTIMENT), logits))


def test_a_recalibrated_artifact_has_a_card_of_its_served_figures(tiny_artifact: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    texts = [f"chat line {i} {'lovely' if i % 2 else 'dreadful'}" for i in range(60)]
    validation = {"semeval": [Example(t, "semeval", sentiment=int(rng.integers(0, 3))) for t in texts]}
    manifest, served = recalibrate_artifact(tiny_artifact, tmp_path / "v3", "3", validation)
    card = recalibration_card(tmp_path / "v3", served, texts[:20])
    write_model_card(tmp_path / "card", card)
    assert card["name"] == "tiny-distilbert@3" and card["recalibrated_from"] == "tiny-distilbert@1"
    assert card["headline"] == manifest.metrics["validation"] == served["headline"]
    assert card["logit_bias"] == manifest.head(Task.SENTIMENT).logit_bias
    assert card["thresholds"] == manifest.head(Task.TOXICITY).thresholds
    assert card["parameters"] == manifest.num_parameters and card["latency_ms_per_msg"] > 0
    assert set(card["functional"]["behaviours"]) >= {"counter_speech_quote", "evasion_spaced"}
    markdown = (tmp_path / "card" / "MODEL_CARD.md").read_text()
    assert "weights of: tiny-distilbert@1" in markdown and "semeval_macro_recall" in markdown
    assert "## Functional suite" in markdown
    assert json.loads((tmp_path / "card" / "model_card.json").read_text())["name"] == "tiny-distilbert@3"


def test_older_formats_are_read_and_newer_ones_refused(artifact_copy: Path) -> None:
    raw = json.loads(read_manifest(artifact_copy).model_dump_json())
    write_manifest(artifact_copy, Manifest.model_validate(raw | {"format_version": 1}))
    assert verify_artifact(artifact_copy).format_version == 1
    write_manifest(artifact_copy, Manifest.model_validate(raw | {"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ArtifactError, match="upgrade chatmod"):
        verify_artifact(artifact_copy)
