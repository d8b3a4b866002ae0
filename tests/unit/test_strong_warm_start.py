"""`chatmod train strong --warm-start`: which stored model each student starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.tiny_models import build_tiny_artifact
from training.strong import _current_of, _warm_starts

pytestmark = pytest.mark.unit


def test_a_named_model_is_the_start_else_the_serving_one_else_the_newest(tmp_path: Path) -> None:
    store = ModelRegistry(tmp_path / "store")
    for version in ("1", "2"):
        build_tiny_artifact(tmp_path / f"d{version}", family="distilbert", name="tiny-d", version=version,
                            formats=("onnx_int8",))
        store.add(tmp_path / f"d{version}")
    store.promote("tiny-d@1")
    assert _current_of(store, "distilbert") == "tiny-d@1"  # serving beats newest
    assert _warm_starts(store, ["tiny-d@2"], ("distilbert", "albert")) == {"distilbert": "tiny-d@2"}
    assert _warm_starts(store, [], ("distilbert",)) == {}
    with pytest.raises(ValueError, match="two distilbert models"):
        _warm_starts(store, ["tiny-d@1", "tiny-d@2"], ("distilbert",))
    with pytest.raises(ValueError, match="is a distilbert model"):
        _warm_starts(store, ["tiny-d@2"], ("albert",))


def test_a_student_config_it_cannot_train_is_refused_before_any_work(tmp_path: Path) -> None:
    """A bad layer map, or a layer teacher with no layer-wise weight, stops the recipe before its teacher is
    trained or its run folder made."""
    from dataclasses import replace

    from training.distill import TrainConfig
    from training.recipe import StageConfig
    from training.strong import run_strong

    cfg = StageConfig(train=TrainConfig(alpha_hidden=1.0, layer_map="first"))
    with pytest.raises(ValueError, match="layer_map must be one of"):
        run_strong(tmp_path / "run", tmp_path / "store", cfg, cfg, layer_teacher="tiny-d@1")
    with pytest.raises(ValueError, match="needs the student config's alpha_hidden or alpha_attn"):
        run_strong(tmp_path / "run", tmp_path / "store", cfg, replace(cfg, train=TrainConfig()),
                   layer_teacher="tiny-d@1")
    assert not (tmp_path / "run").exists()
