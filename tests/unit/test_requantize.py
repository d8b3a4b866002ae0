"""`chatmod train requantize`: a stored model re-exported with today's int8 graph, as a new version that
scores like its source and multiplies exactly on every CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from models.artifact import read_manifest, write_manifest
from models.runtime import TextClassifier
from tests.tiny_models import build_tiny_artifact
from training.export_check import DEFAULT_VERIFY_TEXTS
from training.quantize import WEIGHT_CODE_MAX, max_weight_code
from training.requantize import requantize_artifact

pytestmark = pytest.mark.unit


@pytest.fixture
def full_range_source(tmp_path: Path) -> Path:
    """An int8-only artifact whose manifest, like every export before 7-bit weights, records none."""
    src = tmp_path / "source"
    build_tiny_artifact(src, formats=("onnx_int8",), name="tiny", version="1")
    manifest = read_manifest(src)
    export = manifest.metrics["export"]
    export["onnx_int8"].pop("weights")
    write_manifest(src, manifest.model_copy(update={"metrics": manifest.metrics | {"export": export}}))
    return src


def test_a_model_without_7bit_weights_warns_when_loaded(full_range_source: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        clf = TextClassifier(full_range_source, backend="onnx")
    assert clf.saturates_without_vnni and clf.batch_invariant
    assert "full-range int8 weights" in caplog.text and "chatmod train requantize tiny@1" in caplog.text


def test_requantize_gives_7bit_weights_and_keeps_the_source(full_range_source: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    source = read_manifest(full_range_source)
    out = tmp_path / "requantized"
    seen: list[str] = []

    def evaluate(folder: Path, manifest) -> dict:  # noqa: ANN001 - the served model, as the CLI judges it
        seen.append(manifest.ref)
        return {"headline": {"olid_macro_f1": 0.5}, "sets": {}}

    manifest = requantize_artifact(full_range_source, out, "2", evaluate=evaluate)
    assert seen == ["tiny@2"] and manifest.metrics["validation"] == {"olid_macro_f1": 0.5}
    assert all(h.metrics == {"olid_macro_f1": 0.5} for h in manifest.heads)
    assert manifest.ref == "tiny@2" and manifest.training["requantized_from"] == "tiny@1"
    assert [h.model_copy(update={"metrics": {}}) for h in manifest.heads] == [
        h.model_copy(update={"metrics": {}}) for h in source.heads] and manifest.max_length == source.max_length
    assert manifest.metrics["export"]["onnx_int8"]["weights"] == "per_channel_7bit"
    assert max_weight_code(out / manifest.weights["onnx_int8"]) == WEIGHT_CODE_MAX  # per channel: the grid's end
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        new = TextClassifier(out, backend="onnx")
    assert not new.saturates_without_vnni and "full-range" not in caplog.text
    texts = list(DEFAULT_VERIFY_TEXTS)
    moved = np.abs(new.predict_logits(texts) - TextClassifier(full_range_source, backend="onnx").predict_logits(texts))
    assert moved.max() < 0.05  # the same weights, on a grid half as fine
    with pytest.raises(ValueError, match="already has version 1"):
        requantize_artifact(full_range_source, tmp_path / "again", "1")
