"""ONNX export is kept only when it computes what the torch model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import contract_heads, save_tiny_hf_model
from training.export import (
    DEFAULT_VERIFY_TEXTS,
    ExportMismatch,
    build_artifact,
    export_onnx,
    quantize_int8,
    verify_export,
)

pytestmark = pytest.mark.unit

HEADS = contract_heads(["toxicity", "sentiment"])


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf")
    return save_tiny_hf_model(root / "a", seed=0), save_tiny_hf_model(root / "b", seed=1)


def test_export_and_int8_pass_verification(hf_models: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = hf_models
    onnx = export_onnx(model, tmp_path / "model.onnx")
    check = verify_export(model, onnx, DEFAULT_VERIFY_TEXTS, 1e-4, 1.0, heads=HEADS)
    assert check.n == len(DEFAULT_VERIFY_TEXTS) and check.agreement == 1.0 and check.max_abs_diff < 1e-4
    int8 = quantize_int8(onnx, tmp_path / "model.int8.onnx")
    assert int8.stat().st_size < onnx.stat().st_size / 2  # the MatMuls really are int8
    check8 = verify_export(model, int8, DEFAULT_VERIFY_TEXTS, 0.05, 0.9, heads=HEADS)
    assert 0 < check8.max_abs_diff < 0.05


def test_export_of_another_model_is_refused(hf_models: tuple[Path, Path], tmp_path: Path) -> None:
    model_a, model_b = hf_models
    onnx_b = export_onnx(model_b, tmp_path / "b.onnx")
    with pytest.raises(ExportMismatch, match="the export is refused"):
        verify_export(model_a, onnx_b, DEFAULT_VERIFY_TEXTS, 1e-3, 0.99, heads=HEADS)


def test_build_artifact_leaves_nothing_when_verification_fails(
    hf_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.export as export

    model_a, model_b = hf_models
    real_export = export.export_onnx
    # An exporter that silently exports the wrong weights: the artifact must not appear.
    monkeypatch.setattr(export, "export_onnx", lambda _src, path, opset=17: real_export(model_b, path, opset))
    out = tmp_path / "artifact"
    with pytest.raises(ExportMismatch):
        build_artifact(model_a, out, name="x", version="1", heads=HEADS, formats=("onnx",))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folders left behind either


def test_heads_must_match_model_outputs(hf_models: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = hf_models
    with pytest.raises(Exception, match="9 outputs but the heads need 3"):
        build_artifact(model, tmp_path / "x", name="x", version="1", heads=contract_heads(["sentiment"]))
    np.testing.assert_equal(list(tmp_path.iterdir()), [])
