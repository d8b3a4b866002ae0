"""Where an artifact's forward pass runs: ONNX Runtime on the CPU (int8 or fp32 graphs), or torch (on a GPU
where one is visible). ``resolve_backend`` says which one a setting means for a given artifact.

Only ``onnxruntime`` is imported up front; torch and transformers only when the torch backend is chosen,
and whether a GPU could be there is answered without importing torch (600 MB worker budget).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from models.artifact import ArtifactError, Manifest

BACKENDS = ("auto", "onnx", "onnx_int8", "onnx_fp32", "torch")


class OnnxBackend:
    def __init__(self, path: Path, threads: int, spin: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # on purpose: workers x threads must fit the cores
        options.inter_op_num_threads = 1
        # Within a run the pool's threads spin between operators: a 3-layer student runs ~280 small ones
        # per call, and waking parked threads for each cost 8% of int8 throughput (measured on a 2-core
        # EPYC: 846 -> 917 msgs/s). They stop spinning as soon as the run returns (force_spinning_stop),
        # since the worker's event loop, Kafka client and Redis share these cores between runs.
        # ``spin=False`` parks them between operators too (a box whose cores are oversubscribed).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ArtifactError(f"{path.name}: unexpected ONNX inputs {sorted(unknown)}")
        width = self.session.get_outputs()[0].shape[-1]
        self.num_outputs = width if isinstance(width, int) else None

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.input_names}  # token_type_ids only if the graph wants it
        return self.session.run(None, feed)[0]  # (batch, num_logits)


class TorchBackend:
    def __init__(self, folder: Path, threads: int | None, device: str | None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float32
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif threads is not None:
            torch.set_num_threads(threads)
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        self.model = model.to(self.device).eval()
        self.accepts_type_ids = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.num_outputs = int(self.model.config.num_labels)

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.accepts_type_ids else [])
        feed = {n: self.torch.from_numpy(inputs[n]).to(self.device) for n in names}
        with self.torch.inference_mode():
            logits = self.model(**feed).logits  # (batch, num_labels)
        return logits.float().cpu().numpy()


def _cuda_visible() -> bool:
    """Whether a GPU could be there, answered without importing torch (600 MB worker budget)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _torch_cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None or not _cuda_visible():
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_backend(manifest: Manifest, backend: str) -> str:
    """Which backend ``backend`` means for this artifact: ``onnx_int8``, ``onnx_fp32`` or ``torch``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    weights = manifest.weights
    has = {
        "onnx_int8": "onnx_int8" in weights,
        "onnx_fp32": "onnx" in weights,
        "torch": "safetensors" in weights,
    }
    if backend == "auto":
        if has["torch"] and _torch_cuda_available():
            return "torch"
        for choice in ("onnx_int8", "onnx_fp32", "torch"):
            if has[choice]:
                return choice
    if backend == "onnx":
        for choice in ("onnx_int8", "onnx_fp32"):  # CPU: int8 is ~2-3x faster at a small accuracy cost
            if has[choice]:
                return choice
        raise ArtifactError(
            f"{manifest.ref} has no ONNX weights (it has {sorted(weights)}); use backend='torch'"
        )
    if not has.get(backend, False):
        raise ArtifactError(
            f"{manifest.ref} cannot run on backend {backend!r}: it has weights {sorted(weights)}"
        )
    return backend
