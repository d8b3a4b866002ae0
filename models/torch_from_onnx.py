"""Rebuild a transformers (torch) model from an artifact's ONNX weights.

The shipped defaults carry int8 ONNX weights only (the repository's size budget). Benchmarks compare our
runtime with the transformers ``pipeline`` on the *same model*, so this module reverses the export: every
ONNX initializer is mapped back to the torch parameter it came from and int8 tensors are dequantised
(``(q - zero_point) * scale``, per channel where the quantiser made it so). The result has the artifact's
architecture (``config.json``) and its weights up to int8 rounding; ``agreement`` reports how close its
logits are to the ONNX model's.

Needs torch, transformers and onnx (the ``train`` extra).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models.artifact import ArtifactError, verify_artifact

_SUFFIX = re.compile(r"_(\d+)$")  # ONNX node paths number repeated module calls: attention_1, attention_2


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    q = q.astype(np.float32) - zero_point.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return q * scale.astype(np.float32).reshape(())
    if scale.shape[0] == q.shape[-1]:  # MatMul weights (in, out): one scale per output column
        return q * scale.astype(np.float32)
    if scale.shape[0] == q.shape[0]:
        return q * scale.astype(np.float32).reshape(-1, *([1] * (q.ndim - 1)))
    raise ArtifactError(f"cannot broadcast an int8 scale of shape {scale.shape} over a weight of {q.shape}")


def _module_path(node_name: str) -> str:
    """``/distilbert/transformer/layer.0/attention/q_lin/MatMul_quant`` -> ``distilbert...q_lin``."""
    parts = [p for p in node_name.split("/") if p][:-1]
    return ".".join(_SUFFIX.sub("", p) for p in parts)


def onnx_state_dict(onnx_path: Path, param_names: set[str]) -> dict[str, np.ndarray]:
    """Torch parameter name -> float32 array, read from an ONNX file, plain or int8 (as exported here)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def value(name: str) -> np.ndarray:
        if name.endswith("_quantized"):
            stem = name[: -len("_quantized")]
            return _dequantize(inits[name], inits[stem + "_scale"], inits[stem + "_zero_point"])
        return inits[name].astype(np.float32)

    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul")
               and len(n.input) > 1 and n.input[1] in inits]
    transposed = {n.input[1] for n in matmuls}  # torch Linear weights are (out, in); MatMul's B is (in, out)
    out: dict[str, np.ndarray] = {}
    for name in inits:  # parameters the exporter kept under their torch names (biases, norms, embeddings)
        stem = name[: -len("_quantized")] if name.endswith("_quantized") else name
        if stem in param_names:
            out[stem] = value(name).T.copy() if name in transposed else value(name)
    for node in matmuls:  # the other MatMul weights were renamed (onnx::MatMul_423): the node's path says whose
        param = _module_path(node.name) + ".weight"
        if param in param_names and param not in out:
            out[param] = value(node.input[1]).T.copy()
    # a parameter equal to another one (an ALBERT layer group's attention key bias, which no gradient moves
    # away from the group it was copied from) is exported as an Identity of that one's initializer
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] in param_names \
                and node.output[0] not in out:
            out[node.output[0]] = value(node.input[0])
    return out


def torch_model_from_artifact(folder: Path):  # -> transformers.PreTrainedModel
    """The artifact's model as a transformers model on the CPU, weights from its ONNX file."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    manifest = verify_artifact(folder)
    weights = manifest.weights
    fmt = next((f for f in ("onnx", "onnx_int8") if f in weights), None)
    if fmt is None:
        raise ArtifactError(f"{manifest.ref} has no ONNX weights to rebuild a torch model from")
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    params = dict(model.named_parameters())
    state = onnx_state_dict(folder / weights[fmt], set(params))
    tied = {"lm_head", "decoder", "predictions"}  # heads absent from a sequence classifier anyway
    missing = [n for n in params if n not in state and not tied & set(n.split("."))]
    if missing:
        raise ArtifactError(f"{manifest.ref}: no ONNX weight for {len(missing)} parameters, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, array in state.items():
            if tuple(array.shape) != tuple(params[name].shape):
                raise ArtifactError(f"{manifest.ref}: {name} is {array.shape} in ONNX, {tuple(params[name].shape)} in torch")
            params[name].copy_(torch.from_numpy(array))
    return model
