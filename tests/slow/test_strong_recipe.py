"""`chatmod train strong` end to end on a sliver of ../shared/data: a tiny teacher, its soft labels, a
student warm-started from the store's artifact and distilled from them, evaluated (validation and the
functional suite), exported with per-token int8, registered; a second run resumes instead of redoing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.slow import needs_labeled_data
from tests.tiny_models import build_tiny_artifact, save_tiny_hf_model
from training.distill import TrainConfig
from training.export_check import ExportTolerance
from training.recipe import StageConfig, scaled
from training.soft_labels import SoftLabels
from training.strong import run_strong

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@needs_labeled_data
def test_strong_recipe_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    store = ModelRegistry(tmp_path / "store")
    build_tiny_artifact(tmp_path / "build", family="distilbert", seed=0, name="tiny-student")
    store.promote(store.add(tmp_path / "build").ref)
    teacher = save_tiny_hf_model(tmp_path / "teacher-base", family="distilbert", seed=5)
    base = StageConfig(threads=1, val_cap=200, train=TrainConfig(epochs=1.0, max_length=32, lr=1e-3))
    teacher_cfg = scaled(base, 0.01)
    student_cfg = replace(scaled(base, 0.01), train=replace(base.train, alpha_cos=0.0))
    lines: list[str] = []
    # A 32-wide random encoder trained for a few steps quantises coarsely (logits move up to ~2 in int8, every
    # decision agreeing): this test checks the recipe's stages, so only the decision contract (98%) is kept;
    # int8 accuracy is tests/unit/test_export.py's.
    coarse = ExportTolerance(max_abs_logit_diff=3.0, min_agreement=0.98)
    summary = run_strong(tmp_path / "run", store.store, teacher_cfg, student_cfg, base=str(teacher),
                         version="2", families=("distilbert",), promote=True, int8_tolerance=coarse, say=lines.append)
    labels = SoftLabels(tmp_path / "run" / "soft_labels.npz")
    assert len(labels) > 500 and labels.meta["base"] == str(teacher)
    (card,) = summary["models"].values()
    assert card["soft_label_coverage"] == 1.0 and card["warm_start"] == "tiny-student@1"
    assert set(card["headline"]) >= {"olid_macro_f1", "semeval_macro_recall"} and card["functional"]["cases"] > 500
    assert summary["registered"] == {"tiny-student@2": "tiny-student@2"} and summary["promoted"]
    assert store.current("toxicity") == "tiny-student@2"
    manifest = store.get("tiny-student@2")[0]
    assert manifest.metrics["export"]["onnx_int8"]["batch_invariance_max_diff"] == 0.0
    lines.clear()
    run_strong(tmp_path / "run", store.store, teacher_cfg, student_cfg, base=str(teacher), version="2",
               families=("distilbert",), int8_tolerance=coarse, say=lines.append)
    assert not any(line.startswith(("[1/4]", "[2/4]", "[3/4]")) for line in lines), lines  # resumed: nothing redone
