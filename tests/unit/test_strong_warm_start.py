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
