"""Int8 quantisation of an exported encoder, with activation scales per token.

ONNX Runtime's dynamic quantisation gives each activation tensor one scale, computed over the whole
batch, padding included: a text's scores then move with its batch neighbours (measured on the shipped
DistilBERT student: up to 0.43 in a logit between a text scored alone and in a shuffled batch of 64),
so redelivered duplicates, the content cache and audits can disagree. Here every MatMul's input is
instead quantised per token: the scale of a row is its own absolute maximum / 127, with a fixed zero
point of 128. A token's int8 codes then depend on nothing but that token, the integer products are
exact (on every CPU: see below), and everything else in the graph (LayerNorm, softmax, GELU) is per row
already, so the logits of a text are bit-identical whatever its batch, its padding, the sub-batch size or
the thread count (``check_batch_invariance`` proves it on real text at export time). Across CPU kinds
only the float parts' rounding can differ. Per-token scales also fit each
token's own range rather than the batch's outliers: the per-tensor graph's largest logit error against
fp32 was 0.43 on 800 chat texts, the per-token graph's 0.20.

Weights are per-channel int8 from ``quantize_dynamic``, on 7 bits: codes in [-64, 64]
(``WEIGHT_CODE_MAX``). On x86 without VNNI, ONNX Runtime's u8 x s8 kernel (``vpmaddubsw``) adds each pair
of products in 16 bits with saturation: with full-range weights a pair reaches 255 * 128 * 2 = 65,280 and
is clipped to 32,767 (measured on one ``MatMulInteger`` fed as the export feeds it: off by up to 6.1M, 11% of
outputs wrong), so the same artifact scored differently on AVX2 and on AVX-512 VNNI machines, and a mixed
fleet could disagree on a redelivered duplicate. At 7 bits a pair is at most 255 * 64 * 2 = 32,640: exact on
every CPU. Half the grid is spent better by fitting each channel's scale for least squared error
(``fit_weight_scales``) rather than taking its absolute maximum: re-exported so, the DistilBERT student read
SemEval 0.16 points and SST-2 0.40 under its 8-bit figures, the rest within noise. The export check bounds
the logit error against fp32 as before.

The rewrite keeps ORT's structure so that its ``MatMulIntegerToFloat`` fusion still applies: the fused
kernel takes a scalar activation scale, so it is fed a 1.0 that constant folding cannot see through, and
the per-token scale multiplies its output.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PER_TOKEN = "per_token"  # recorded in the manifest as metrics.export.onnx_int8.activations
WEIGHT_CODE_MAX = 64  # |int8 weight code|: exact u8 x s8 products on every CPU (module docstring)
_PREFIX = "chatmod_per_token"

# The MatMuls that project a layer's feed-forward activations back to the hidden size: their inputs (GELU
# outputs) carry outliers that int8 holds worst, the first layer's worst (measured on the DistilBERT
# student with per-tensor scales: keeping only that one in fp32 took the largest logit change on 400
# validation texts from 0.62 to 0.44 for 11% of the FLOPs). BERT, DistilBERT and ALBERT names.
_FFN_OUT = re.compile(r"(layer\.\d+/output/dense|ffn/lin2|ffn_output(_\d+)?)/MatMul")


class QuantizationError(RuntimeError):
    """The int8 graph does not have the structure the per-token rewrite expects."""


def fp32_fallbacks(onnx_path: Path) -> list[list[str]]:
    """What to keep in fp32, in the order to try when int8 misses its bounds: nothing, the first
    feed-forward output projection, all of them."""
    import onnx

    names = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node
             if n.op_type == "MatMul" and _FFN_OUT.search(n.name)]
    ladder: list[list[str]] = [[]]
    for step in (names[:1], names):
        if step and step != ladder[-1]:
            ladder.append(step)
    return ladder


def prepare_for_int8(onnx_path: Path, pre_path: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, graph clean-up): without it most MatMuls stay fp32."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # auto_merge: symbolic shape inference otherwise gives up on transformers' mask arithmetic
        quant_pre_process(str(onnx_path), str(pre_path), auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - fall back to ONNX shape inference only
        log.warning("symbolic shape inference failed (%s); pre-processing without it", exc)
        quant_pre_process(str(onnx_path), str(pre_path), skip_symbolic_shape=True)
    return Path(pre_path)


def quantize_prepared(pre_path: Path, out_path: Path, keep_fp32: Sequence[str] = ()) -> Path:
    """Per-channel int8 weights and per-token int8 activations for a pre-processed graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        per_tensor = Path(tmp) / "per_tensor.onnx"
        quantize_dynamic(
            str(pre_path),
            str(per_tensor),
            per_channel=True,  # per-tensor int8 weights visibly degrade real encoders
            weight_type=QuantType.QInt8,
            reduce_range=True,  # 7-bit codes; fit_weight_scales then sets every code and scale
            nodes_to_exclude=list(keep_fp32),
            extra_options={"MatMulConstBOnly": True},  # weights only; activation x activation stays fp32
        )
        fit_weight_scales(per_tensor, pre_path)  # every weight's codes within +-WEIGHT_CODE_MAX, or refused
        return per_token_activations(per_tensor, out_path)


CLIP_RATIOS = np.linspace(0.5, 1.0, 51)  # of a channel's absolute maximum; 1.0 is quantize_dynamic's own choice


def fit_weight_scales(int8_path: Path, fp32_path: Path) -> float:
    """Give every ``MatMulInteger`` weight channel the scale that quantises it with the least squared error.

    ``quantize_dynamic`` scales a channel by its absolute maximum / 64, so one outlier weight stretches the
    grid for all the others; on 7 bits that costs. Here each channel's scale is ``r * absmax / 64`` with
    ``r`` the best of :data:`CLIP_RATIOS` (the outliers clipped to the grid's end where that pays), fitted
    on the fp32 weights of ``fp32_path`` (the graph that was quantised) and written into ``int8_path`` with
    the codes it gives, clipped to +-:data:`WEIGHT_CODE_MAX`: a ``MatMulInteger`` weight it cannot fit is
    refused, so no full-range code reaches a served graph. Measured on the DistilBERT student re-exported from its int8 weights: squared weight
    error -10%, and the SemEval loss of going to 7 bits cut from 0.47 to 0.16 points. Returns the squared
    error over that of the absolute-maximum scales (1.0 where no weight was there to fit: the graph is then
    left as it was).
    """
    import onnx
    from onnx import numpy_helper

    fp32 = {t.name: t for t in onnx.load(str(fp32_path)).graph.initializer}
    model = onnx.load(str(int8_path))
    weights = {t.name: t for t in model.graph.initializer}
    fitted_error = plain_error = 0.0
    done: set[str] = set()  # a weight shared by several MatMuls (ALBERT's one layer) is fitted once
    for node in model.graph.node:
        codes_name = node.input[1] if node.op_type == "MatMulInteger" else ""
        base = codes_name.removesuffix("_quantized")
        if codes_name not in weights or codes_name in done:
            continue
        done.add(codes_name)
        if f"{base}_scale" not in weights:
            raise QuantizationError(f"{int8_path}: {codes_name} has no per-channel scale {base}_scale")
        if base in fp32:
            w = numpy_helper.to_array(fp32[base])
        elif base.endswith("_Transposed") and base.removesuffix("_Transposed") in fp32:  # a Gemm's B, transposed
            w = numpy_helper.to_array(fp32[base.removesuffix("_Transposed")]).T
        else:
            raise QuantizationError(f"{int8_path}: no fp32 weight for {codes_name} in {fp32_path}")
        scale, fitted, plain = _least_squares_scale(w.astype(np.float64))
        codes = np.clip(np.round(w / scale), -WEIGHT_CODE_MAX, WEIGHT_CODE_MAX).astype(np.int8)
        weights[codes_name].CopyFrom(numpy_helper.from_array(codes, codes_name))
        weights[f"{base}_scale"].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"))
        fitted_error += fitted
        plain_error += plain
    if not plain_error:
        return 1.0
    onnx.save(model, str(int8_path))
    ratio = fitted_error / plain_error
    log.info("int8 weight scales fitted", extra={"squared_error_ratio": round(ratio, 4)})
    return ratio


def _least_squares_scale(w: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per output channel (column) of ``w``: the scale of least squared error among the clip ratios;
    (scales, their squared error, the absolute maximum's)."""
    absmax = np.maximum(np.abs(w).max(axis=0), 1e-12)
    best = np.full(w.shape[1], np.inf)
    scales = absmax / WEIGHT_CODE_MAX
    plain = 0.0
    for ratio in CLIP_RATIOS:
        scale = ratio * absmax / WEIGHT_CODE_MAX
        err = ((w - np.clip(np.round(w / scale), -WEIGHT_CODE_MAX, WEIGHT_CODE_MAX) * scale) ** 2).sum(axis=0)
        better = err < best
        best[better], scales[better] = err[better], scale[better]
        if ratio == 1.0:
            plain = float(err.sum())
    return scales, float(best.sum()), plain


def max_weight_code(int8_path: Path) -> int:
    """The largest |code| among the int8 weights that ``MatMulInteger`` nodes multiply (0 if none)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(int8_path)).graph
    weights = {t.name: t for t in graph.initializer}
    widest = 0
    for node in graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in weights:
            codes = numpy_helper.to_array(weights[node.input[1]]).astype(np.int16)
            widest = max(widest, int(np.abs(codes).max(initial=0)))
    return widest


def quantize_int8(onnx_path: Path, out_path: Path, keep_fp32: Sequence[str] = ()) -> Path:
    """Int8 quantisation (per-channel weights, per-token activations) of a pre-processed copy of
    ``onnx_path``. ``keep_fp32``: node names left unquantised (see :func:`fp32_fallbacks`)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        return quantize_prepared(prepare_for_int8(onnx_path, Path(tmp) / "pre.onnx"), out_path, keep_fp32)


def per_token_activations(int8_path: Path, out_path: Path) -> Path:
    """Rewrite a ``quantize_dynamic`` graph so that every activation is quantised per token.

    Each ``DynamicQuantizeLinear(x) -> (q, scale, zero_point)`` becomes
    ``s = max(|x|, over the last axis) / 127``, ``q = QuantizeLinear(x / s, 1, 128)``: symmetric codes
    1..255 around a fixed zero point, with ``s`` of shape ``(batch, seq, 1)``. Where ORT multiplied the
    int32 product by ``scale * w_scale``, it now multiplies by ``1.0 * w_scale`` and then by ``s``.
    """
    import onnx

    model = onnx.load(str(int8_path))
    graph = model.graph
    dynamic = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    if not dynamic:
        raise QuantizationError(f"{int8_path}: no DynamicQuantizeLinear node; nothing was quantised")
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    head = _per_token_prelude(graph)
    rewritten: list = []
    token_scale_of: dict[str, str] = {}  # combined-scale tensor -> the per-token scale that replaces it
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            rewritten.append(node)
            continue
        rewritten += _per_token_quantize(node)
        _rewire_scales(node, consumers, token_scale_of)
    final = _rescale_products(rewritten, token_scale_of)
    scaled = sum(1 for node in final if node.name.endswith("/PerToken"))
    if scaled != len(token_scale_of):
        raise QuantizationError(f"{int8_path}: {len(token_scale_of)} scaled products but {scaled} rescaled")
    del graph.node[:]
    graph.node.extend(head + final)
    # Shapes inferred for the old per-tensor scales and zero points no longer hold.
    stale = {name for node in dynamic for name in node.output[1:]} | set(token_scale_of)
    kept = [vi for vi in graph.value_info if vi.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    log.info("per-token activation scales", extra={"quantized_inputs": len(dynamic), "matmuls": scaled})
    return out_path


def _per_token_prelude(graph) -> list:  # noqa: ANN001 - onnx GraphProto
    """The shared constants (added as initializers) and the nodes computing ``{_PREFIX}/one``."""
    from onnx import TensorProto, helper, numpy_helper

    p = _PREFIX
    constants = {
        f"{p}/zero_point": np.array(128, dtype=np.uint8),
        f"{p}/one_f": np.array(1.0, dtype=np.float32),
        f"{p}/qmax": np.array(127.0, dtype=np.float32),
        f"{p}/eps": np.array(1e-12, dtype=np.float32),  # an all-zero row quantises to zeros, not NaN
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    # A 1.0 computed at run time (size / size of an input): constant folding keeps the Mul that ORT's
    # MatMulIntegerToFloat fusion looks for, and the fused kernel's scalar activation scale is exact.
    return [
        helper.make_node("Size", [graph.input[0].name], [f"{p}/size"], name=f"{p}/Size"),
        helper.make_node("Cast", [f"{p}/size"], [f"{p}/size_f"], name=f"{p}/SizeF", to=TensorProto.FLOAT),
        helper.make_node("Div", [f"{p}/size_f", f"{p}/size_f"], [f"{p}/one"], name=f"{p}/One"),
    ]


def _per_token_quantize(node) -> list:  # noqa: ANN001 - onnx NodeProto
    """The nodes replacing one ``DynamicQuantizeLinear``: a scale per row, and the row quantised by it."""
    from onnx import helper

    p = _PREFIX
    x, q, n = node.input[0], node.output[0], node.name
    absmax, inv, token_scale = f"{n}/absmax", f"{n}/inv_scale", f"{n}/token_scale"
    return [
        # max |x| per row as max(max x, -min x): two reads of x, no |x| written out
        helper.make_node("ReduceMax", [x], [f"{n}/max"], name=f"{n}/ReduceMax", keepdims=1, axes=[-1]),
        helper.make_node("ReduceMin", [x], [f"{n}/min"], name=f"{n}/ReduceMin", keepdims=1, axes=[-1]),
        helper.make_node("Neg", [f"{n}/min"], [f"{n}/neg_min"], name=f"{n}/Neg"),  # (batch, seq, 1)
        helper.make_node("Max", [f"{n}/max", f"{n}/neg_min", f"{p}/eps"], [absmax], name=f"{n}/AbsMax"),
        helper.make_node("Div", [absmax, f"{p}/qmax"], [token_scale], name=f"{n}/Scale"),
        helper.make_node("Div", [f"{p}/qmax", absmax], [inv], name=f"{n}/InvScale"),
        helper.make_node("Mul", [x, inv], [f"{n}/scaled"], name=f"{n}/Normalise"),
        helper.make_node("QuantizeLinear", [f"{n}/scaled", f"{p}/one_f", f"{p}/zero_point"], [q],
                         name=f"{n}/Quantize"),
    ]


def _rewire_scales(node, consumers: dict[str, list], token_scale_of: dict[str, str]) -> None:  # noqa: ANN001
    """The fixed zero point into the ``MatMulInteger``s; 1.0 in place of the per-tensor scale in the scales'
    ``Mul``, whose output is recorded as to be multiplied by the per-token scale."""
    _, scale, zero_point = node.output
    for user in consumers.get(zero_point, []):
        if user.op_type != "MatMulInteger":
            raise QuantizationError(f"{node.name}: zero point feeds a {user.op_type}, expected MatMulInteger")
        user.input[list(user.input).index(zero_point)] = f"{_PREFIX}/zero_point"
    for user in consumers.get(scale, []):  # Mul(scale, w_scale): its output scales the int32 product
        if user.op_type != "Mul":
            raise QuantizationError(f"{node.name}: scale feeds a {user.op_type}, expected the scales' Mul")
        user.input[list(user.input).index(scale)] = f"{_PREFIX}/one"
        token_scale_of[user.output[0]] = f"{node.name}/token_scale"


def _rescale_products(nodes: list, token_scale_of: dict[str, str]) -> list:
    """After every ``Cast(int32 product) * (1.0 * w_scale)``, a ``Mul`` by the row's per-token scale."""
    from onnx import helper

    final: list = []
    for node in nodes:
        final.append(node)
        combined = [name for name in node.input if name in token_scale_of]
        if node.op_type == "Mul" and combined:
            out = node.output[0]
            node.output[0] = f"{out}/per_channel"
            final.append(helper.make_node("Mul", [f"{out}/per_channel", token_scale_of[combined[0]]], [out],
                                          name=f"{node.name}/PerToken"))
    return final


def check_batch_invariance(onnx_path: Path, encoded, batch_sizes: Sequence[int] = (1, 7, 32),
                           threads: Sequence[int] = (1, 2), seed: int = 0) -> float:
    """Largest |logit difference| of any text between being scored alone and in shuffled batches of
    ``batch_sizes`` (each padded to its longest text) on each thread count.

    ``encoded`` is a :class:`models.runtime.Encoded`. 0.0 means bit-identical.
    """
    import onnxruntime as ort

    n = len(encoded)
    worst = 0.0
    reference: np.ndarray | None = None
    rng = np.random.default_rng(seed)
    for thread_count in threads:
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for size in batch_sizes:
            order = np.arange(n) if size == 1 else rng.permutation(n)
            out = None
            for start in range(0, n, size):
                rows = order[start : start + size]
                batch = replace(encoded, ids=[encoded.ids[r] for r in rows],
                                type_ids=[encoded.type_ids[r] for r in rows])
                for positions, feed in batch.batches(len(rows)):  # one batch, padded to its longest text
                    got = session.run(None, {k: feed[k] for k in names})[0]  # (rows, num_logits)
                    if out is None:
                        out = np.empty((n, got.shape[1]), dtype=np.float32)
                    out[rows[positions]] = got
            if reference is None:
                reference = out
            worst = max(worst, float(np.abs(out - reference).max()))
    return worst

