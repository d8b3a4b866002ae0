"""`chatmod train recalibrate` as a user runs it: a stored version's decision rules fitted again on
validation as served (int8), registered as a new version with the same weights, and judged in a model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.labels import Task
from models.registry import ModelRegistry
from tests.e2e.test_cli import chatmod
from tests.slow import needs_labeled_data
from tests.tiny_models import build_tiny_artifact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@needs_labeled_data
def test_a_recalibration_is_registered_promoted_and_carded(tmp_path: Path) -> None:
    store = ModelRegistry(tmp_path / "store")
    build_tiny_artifact(tmp_path / "d1", name="tiny-r", version="1", seed=0, formats=("onnx_int8",))
    store.add(tmp_path / "d1")
    store.promote("tiny-r@1")
    done = chatmod("train", "recalibrate", "tiny-r@1", "--version", "2", "--store", str(store.store),
                   "--card", str(tmp_path / "card"), "--threads", "1", "--promote", timeout_s=540)
    assert done.returncode == 0, done.stderr[-3000:]
    source, (manifest, folder) = store.get("tiny-r@1")[0], store.get("tiny-r@2")
    assert manifest.training["recalibrated_from"] == "tiny-r@1"
    assert manifest.files["model.int8.onnx"] == source.files["model.int8.onnx"]  # the same weights
    assert store.current("toxicity") == store.current("sentiment") == "tiny-r@2"
    card = json.loads((tmp_path / "card" / "model_card.json").read_text())
    assert card["name"] == "tiny-r@2" and card["headline"] == manifest.metrics["validation"]
    assert set(card["headline"]) >= {"olid_macro_f1", "semeval_macro_recall", "sst2_accuracy", "jigsaw_mean_roc_auc",
                                     "jigsaw_balanced_mean_roc_auc"}
    assert card["logit_bias"] == manifest.head(Task.SENTIMENT).logit_bias and card["functional"]["cases"] > 500
    assert "weights of: tiny-r@1" in (tmp_path / "card" / "MODEL_CARD.md").read_text()
    assert "model card:" in done.stderr and "registered tiny-r@2" in done.stderr
    assert folder.is_dir()
