"""A text's scores are a pure function of (text, model version): the same alone, in any batch, with any
padding, sub-batch size or thread count. Checked on the shipped models, with real chat."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from models.registry import ModelRegistry
from models.runtime import ModelSet, TextClassifier
from training.quantize import (
    WEIGHT_CODE_MAX,
    check_batch_invariance,
    max_weight_code,
    per_token_activations,
    prepare_for_int8,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "models" / "defaults"
DATA = ROOT.parent / "shared" / "data"


def _real_texts() -> list[str]:
    """The bundled sample chat (348 lines), plus real tweets and game chat when ../shared/data is there."""
    lines = (ROOT / "pipeline" / "data" / "sample_chat.txt").read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t")[-1] for line in lines if line.strip()]
    olid = DATA / "toxicity" / "olid" / "train.tsv"
    if olid.is_file():
        texts += [row.split("\t")[1] for row in olid.read_text(encoding="utf-8").splitlines()[1:151]]
    texts += ["", "k y s", "you are such a noob lol", "i will find where you live", "lol " * 100]
    return texts


TEXTS = _real_texts()


def _shipped() -> list[Path]:
    registry = ModelRegistry(DEFAULTS)
    return [registry.get(m.ref)[1] for m in registry.manifests()]


@pytest.fixture(scope="module", params=_shipped(), ids=lambda p: f"{p.parent.name}@{p.name}")
def shipped(request: pytest.FixtureRequest) -> Path:
    return request.param


@pytest.fixture(scope="module")
def alone(shipped: Path) -> np.ndarray:
    clf = TextClassifier(shipped, backend="onnx", threads=1, max_batch=1)
    return np.stack([clf.predict_logits([t])[0] for t in TEXTS])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("max_batch", [3, 16, 64])
def test_scores_do_not_depend_on_batch_padding_or_threads(shipped: Path, alone: np.ndarray, threads: int,
                                                          max_batch: int) -> None:
    clf = TextClassifier(shipped, backend="onnx", threads=threads, max_batch=max_batch)
    assert clf.batch_invariant, f"{clf.ref}: its manifest does not record a batch-invariant export"
    order = list(range(len(TEXTS)))
    random.Random(max_batch * 10 + threads).shuffle(order)
    got = np.empty_like(alone)
    for start in range(0, len(order), 50):  # calls of 50 in shuffled order: new neighbours, new padding
        rows = order[start : start + 50]
        got[rows] = clf.predict_logits([TEXTS[i] for i in rows])
    moved = np.abs(got - alone).max()
    assert moved == 0.0, f"{clf.ref}: a text's logits moved by {moved:.3g} with its batch"


def test_shipped_int8_weights_multiply_exactly_on_every_cpu(shipped: Path) -> None:
    clf = TextClassifier(shipped, backend="onnx", threads=1)
    assert not clf.saturates_without_vnni, f"{clf.ref}: its manifest does not record 7-bit int8 weights"
    assert max_weight_code(shipped / clf.manifest.weights["onnx_int8"]) <= WEIGHT_CODE_MAX


@pytest.mark.parametrize("inner", [384, 1536])  # the student's hidden and feed-forward widths
def test_int8_products_are_exact_at_the_exports_operand_ranges(inner: int) -> None:
    """ORT's MatMulInteger, fed as the export feeds it (u8 activation codes 1..255 at zero point 128, int8
    weight codes within +-WEIGHT_CODE_MAX), equals the integer product: extremes included, where pairs of
    full-range products overflow 16 bits on CPUs without VNNI. A CPU kind that clips fails here."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(inner)
    a = rng.integers(1, 256, size=(8, inner)).astype(np.uint8)
    a[0], a[1], a[2] = 255, 1, np.where(np.arange(inner) % 2, 255, 1)  # extremes, and alternating
    b = rng.integers(-WEIGHT_CODE_MAX, WEIGHT_CODE_MAX + 1, size=(inner, 6)).astype(np.int8)
    b[:, 0], b[:, 1] = -WEIGHT_CODE_MAX, WEIGHT_CODE_MAX
    b[:, 2] = np.where(np.arange(inner) % 2, -WEIGHT_CODE_MAX, WEIGHT_CODE_MAX)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "a_zero_point"], ["y"])], "product",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, inner])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 6])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero_point")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"a": a})[0]
    expected = (a.astype(np.int64) - 128) @ b.astype(np.int64)
    np.testing.assert_array_equal(got, expected)


def test_a_model_set_answers_identically_however_the_texts_arrive(shipped: Path) -> None:
    tasks = [str(t) for t in TextClassifier(shipped, backend="onnx", threads=1).manifest.tasks]
    one = ModelSet({t: shipped for t in tasks}, threads=1, max_batch=1)
    many = ModelSet({t: shipped for t in tasks}, threads=2, max_batch=32)
    expected = [one.predict([t])[0] for t in TEXTS[:120]]
    assert many.predict(list(reversed(TEXTS[:120]))) == list(reversed(expected))  # dict for dict, float for float


def test_the_per_tensor_graph_moves_and_the_rewrite_fixes_it(tmp_path: Path) -> None:
    """The check can fail: ORT's per-tensor dynamic int8 moves a text's logits with its neighbours."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models.runtime import TextEncoder
    from tests.tiny_models import save_tiny_hf_model
    from training.export import export_onnx

    tiny_hf_model = save_tiny_hf_model(tmp_path / "hf", seed=0)
    pre = prepare_for_int8(export_onnx(tiny_hf_model, tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    per_tensor = tmp_path / "per_tensor.onnx"
    quantize_dynamic(str(pre), str(per_tensor), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    encoded = TextEncoder(tiny_hf_model / "tokenizer.json", 128).encode(TEXTS[:200])
    assert check_batch_invariance(per_tensor, encoded) > 1e-4
    per_token = per_token_activations(per_tensor, tmp_path / "per_token.onnx")
    assert check_batch_invariance(per_token, encoded) == 0.0
