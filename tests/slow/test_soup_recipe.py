"""`chatmod train soup` as a user runs it: two stored versions averaged, the average evaluated on validation
and the functional suite as served (int8), exported with per-token int8 and registered beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.e2e.test_cli import chatmod
from tests.slow import needs_labeled_data
from tests.tiny_models import build_tiny_artifact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@needs_labeled_data
def test_two_versions_make_a_third_that_is_evaluated_and_registered(tmp_path: Path) -> None:
    store = ModelRegistry(tmp_path / "store")
    for version, seed in (("1", 0), ("2", 1)):
        build_tiny_artifact(tmp_path / f"d{version}", name="tiny-d", version=version, seed=seed,
                            formats=("onnx_int8",))
        store.add(tmp_path / f"d{version}")
    store.promote("tiny-d@1")
    done = chatmod("train", "soup", "tiny-d@1", "tiny-d@2", "--version", "3", "--store", str(store.store),
                   "--out", str(tmp_path / "run"), "--threads", "1", "--promote", timeout_s=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered tiny-d@3" in done.stderr and "functional suite" in done.stderr
    manifest = store.get("tiny-d@3")[0]
    assert manifest.training["stage"] == "soup" and manifest.training["init"] == {"soup_of": ["tiny-d@1", "tiny-d@2"]}
    assert manifest.metrics["export"]["onnx_int8"]["batch_invariance_max_diff"] == 0.0
    assert store.current("toxicity") == "tiny-d@3"  # --promote: it takes the tasks its source serves
    card = json.loads((tmp_path / "run" / "soup" / "model_card.json").read_text())
    assert card["soup_of"] == ["tiny-d@1", "tiny-d@2"] and card["functional"]["cases"] > 500
    assert set(card["headline"]) >= {"olid_macro_f1", "semeval_macro_recall", "sst2_accuracy"}
