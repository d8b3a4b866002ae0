"""ONNX export is kept only when it computes what the torch model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import N_LOGITS, contract_heads, save_tiny_hf_model
from training.export import build_artifact, export_onnx
from training.export_check import DEFAULT_VERIFY_TEXTS, ExportMismatch, verify_export
from training.quantize import WEIGHT_CODE_MAX, max_weight_code, quantize_int8

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
    assert max_weight_code(int8) == WEIGHT_CODE_MAX  # 7-bit codes, each channel reaching the grid's end
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
    with pytest.raises(Exception, match=f"{N_LOGITS} outputs but the heads need 3"):
        build_artifact(model, tmp_path / "x", name="x", version="1", heads=contract_heads(["sentiment"]))
    np.testing.assert_equal(list(tmp_path.iterdir()), [])


@pytest.mark.parametrize("family", ["distilbert", "albert"])
def test_fp32_fallbacks_name_the_feed_forward_output_projections(family: str, tmp_path: Path) -> None:
    import onnx

    from training.quantize import fp32_fallbacks

    model = save_tiny_hf_model(tmp_path / family, family=family, seed=0)
    fp32 = export_onnx(model, tmp_path / "model.onnx")
    ladder = fp32_fallbacks(fp32)
    assert ladder[0] == [] and len(ladder) == 3  # nothing, the first layer's, every layer's (2 layers)
    assert ladder[1] == ladder[2][:1] and len(ladder[2]) == 2
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx", keep_fp32=ladder[2])
    nodes = {n.name: n.op_type for n in onnx.load(str(int8)).graph.node}
    assert all(nodes[name] == "MatMul" for name in ladder[2])  # left as they were
    assert sum(op == "MatMulInteger" for op in nodes.values()) >= 4  # the rest is int8


def test_int8_retries_with_fp32_feed_forward_outputs_then_refuses(hf_models: tuple[Path, Path], tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from training.export_check import ExportTolerance

    model, _ = hf_models
    exact = ExportTolerance(max_abs_logit_diff=0.0, min_agreement=1.0)  # no int8 graph can meet it
    with pytest.raises(ExportMismatch, match="model.int8.onnx"):
        build_artifact(model, tmp_path / "x", name="x", version="1", heads=HEADS, formats=("onnx_int8",),
                       int8_tolerance=exact)
    retries = [r for r in caplog.records if "retrying with fp32" in r.getMessage()]
    assert [len(r.keep_fp32) for r in retries] == [1, 2]
    manifest = build_artifact(model, tmp_path / "y", name="y", version="1", heads=HEADS, formats=("onnx_int8",))
    assert manifest.metrics["export"]["onnx_int8"]["fp32_nodes"] == []  # within bounds at once: all int8


def test_int8_weight_scales_fit_each_channel_for_least_squared_error(tmp_path: Path) -> None:
    """Each channel's scale is the least-squares one: no channel is quantised with more error than its
    absolute maximum / 64 gives, and together they carry less (Gaussian weights: the rare large ones are
    clipped to the grid's end, the many small ones get a finer grid)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
                              [numpy_helper.from_array(w, "W")])
    fp32 = tmp_path / "one.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    int8 = quantize_int8(fp32, tmp_path / "one.int8.onnx")
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer}
    codes, scale = stored["W_quantized"].astype(np.float64), stored["W_scale"].astype(np.float64)
    assert np.abs(codes).max() <= WEIGHT_CODE_MAX
    fitted = ((w - codes * scale) ** 2).sum(axis=0)
    plain_scale = np.abs(w).max(axis=0).astype(np.float64) / WEIGHT_CODE_MAX
    plain = ((w - np.clip(np.round(w / plain_scale), -64, 64) * plain_scale) ** 2).sum(axis=0)
    assert np.all(fitted <= plain * (1 + 1e-6)) and fitted.sum() < 0.97 * plain.sum()
    x = rng.standard_normal((4, 1024)).astype(np.float32)  # and the graph computes with them
    got = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - x @ w).max() < 0.05 * np.abs(x @ w).max()
