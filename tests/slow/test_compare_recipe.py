"""`chatmod train compare` as a user runs it: a stored model against a candidate folder, both served (int8) on
the same validation rows, each headline set's difference with its paired interval, in a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.e2e.test_cli import ROOT, chatmod
from tests.slow import needs_labeled_data
from tests.tiny_models import build_tiny_artifact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@needs_labeled_data
def test_a_stored_model_and_a_candidate_folder_are_compared_set_by_set(tmp_path: Path) -> None:
    store = ModelRegistry(tmp_path / "store")
    build_tiny_artifact(tmp_path / "shipped", name="tiny-c", version="1", seed=0, formats=("onnx_int8",))
    store.add(tmp_path / "shipped")
    build_tiny_artifact(tmp_path / "candidate", name="tiny-c", version="2", seed=1, formats=("onnx_int8",))
    done = chatmod("train", "compare", "tiny-c@1", str(tmp_path / "candidate"), "--store", str(store.store),
                   "--resamples", "300", "--out", str(tmp_path / "compare.json"), "--threads", "1", timeout_s=540)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "compare.json").read_text())
    sets = report["sets"]
    assert set(sets) == {"olid", "semeval", "sst2", "jigsaw", "jigsaw_balanced", "functional_suite"}
    suite = json.loads((ROOT / "tests/functional/suite.json").read_text())["behaviours"]
    assert sets.pop("functional_suite")["n"] == sum(len(b["cases"]) for b in suite)  # every case, both models
    for source, row in sets.items():
        lo, hi = row["delta_interval"]
        assert row["delta"] == pytest.approx(row["b"] - row["a"]) and lo <= hi, source
        assert row["verdict"] == ("better" if lo > 0 else "worse" if hi < 0 else "within noise"), source
        assert row["n"] > 500, source  # the real validation split, not a sliver
    assert "sst2" in done.stdout and "90% interval" in done.stdout
    assert "300 paired resamples" in done.stderr and "A: tiny-c@1" in done.stderr


def test_a_missing_data_folder_is_a_usage_error(tmp_path: Path) -> None:
    done = chatmod("train", "compare", "tiny-c@1", "tiny-c@2", "--store", str(tmp_path / "store"),
                   "--data-root", str(tmp_path / "nowhere"))  # said before any model is loaded
    assert done.returncode == 2
    said = " ".join(done.stderr.replace("│", " ").split())  # the usage box wraps the message
    assert "is missing: the comparison scores the validation sets made from it" in said
