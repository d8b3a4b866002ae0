"""Model-only benchmark: our runtime beside the transformers ``pipeline`` default, same model, same texts.

Rows per artifact, all measured in one process on the same thread count:

- ``transformers pipeline (default)``: ``pipeline("text-classification")`` with its default settings
  (one text per forward, torch fp32) on the artifact's model rebuilt from its ONNX weights
  (:mod:`models.torch_from_onnx`); the baseline every ratio is taken against;
- ``torch fp32, chatmod batching``: the same torch model fed length-sorted, dynamically padded batches
  (what batching alone buys);
- ``chatmod runtime, <backend>``: :class:`models.runtime.TextClassifier` as a worker runs it (tokenise,
  forward, per-head probabilities), for every ONNX weight file the artifact has;
- on a machine with CUDA, ``torch <dtype> cuda, chatmod batching``.

Each row times the same texts in calls of ``batch_size`` texts (a worker's micro-batch; our rows cut each
call into length-sorted sub-batches as serving does): msgs/s over the whole run, p50/p99 per call.
Needs the ``train`` extra (torch, transformers, onnx) for the torch rows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.artifact import read_manifest
from models.labels import ProblemType
from models.runtime import TextClassifier

Progress = Callable[[str, int, int], None]  # (row label, batches done, batches in all)
WARMUP_BATCHES = 2


@dataclass
class ModelRow:
    model: str  # name@version
    engine: str
    threads: int
    batch_size: int
    messages: int
    msgs_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float
    ratio: float | None = None  # msgs/s over the transformers pipeline default on the same model

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _time_interleaved(label: str, batches: list[list[str]], runs: dict[str, Callable[[list[str]], object]],
                      progress: Progress | None) -> dict[str, list[float]]:
    """Milliseconds per batch for every engine, timed side by side: each batch goes through every engine
    in turn, so a slow spell of a shared machine falls on all of them alike and the ratios hold."""
    for run in runs.values():
        for batch in batches[:WARMUP_BATCHES]:  # first calls allocate and pick kernels: not what serving sees
            run(batch)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i, batch in enumerate(batches):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(batch)
            times[name].append((time.perf_counter() - t0) * 1000.0)
        if progress:
            progress(label, i + 1, len(batches))
    return times


def _row(model: str, engine: str, threads: int, batch_size: int, n: int, times: list[float]) -> ModelRow:
    wall = sum(times) / 1000.0
    return ModelRow(model, engine, threads, batch_size, n, n / wall, percentile(times, 50), percentile(times, 99))


BASELINE = "transformers pipeline (default)"


PARKED = "threads parked"  # the engine label's suffix for CHATMOD_MODELS_SPIN=false


def bench_artifact(folder: Path, texts: Sequence[str], threads: int, batch_size: int = 64,
                   baseline: bool = True, progress: Progress | None = None) -> tuple[list[ModelRow], dict]:
    """Rows for one artifact and a check that the rebuilt torch model is the served one
    (``{"max_abs_logit_diff", "top_label_agreement"}`` against the ONNX runtime)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    ref = manifest.ref
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    runs: dict[str, Callable[[list[str]], object]] = {}
    compare: Callable[[np.ndarray], dict] | None = None
    if baseline:
        torch_runs, compare = _torch_runs(folder, batches, threads)
        runs.update(torch_runs)
    served_logits: np.ndarray | None = None
    for fmt, backend in (("onnx_int8", "onnx_int8"), ("onnx", "onnx_fp32")):
        if fmt not in manifest.weights:
            continue
        clf = TextClassifier(folder, backend=backend, threads=threads)  # sub-batches as a worker runs them
        runs[f"chatmod runtime, {backend}"] = clf.predict
        if served_logits is None:
            served_logits = clf.predict_logits(texts)
            # the served graph again with ONNX Runtime's threads parked after every operator
            # (CHATMOD_MODELS_SPIN=false): what spinning within a pass buys on this machine
            parked = TextClassifier(folder, backend=backend, threads=threads, spin=False)
            runs[f"chatmod runtime, {backend}, {PARKED}"] = parked.predict
    check = compare(served_logits) if compare is not None and served_logits is not None else {}
    times = _time_interleaved(ref, batches, runs, progress)
    rows = [_row(ref, label, threads, batch_size, len(texts), t) for label, t in times.items()]
    if baseline:
        base = next(r for r in rows if r.engine == BASELINE)
        for row in rows:
            row.ratio = row.msgs_per_s / base.msgs_per_s
    return rows, check


def _torch_runs(folder: Path, batches: list[list[str]],
                threads: int) -> tuple[dict[str, Callable], Callable[[np.ndarray], dict]]:
    """The transformers pipeline default and torch with chatmod's batching (and CUDA where present) on the
    served model rebuilt in torch, plus a check of the rebuilt model against the served logits."""
    import torch
    from transformers import AutoTokenizer, pipeline

    from models.torch_from_onnx import torch_model_from_artifact

    torch.set_num_threads(threads)
    model = torch_model_from_artifact(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    classifier = TextClassifier(folder, backend="onnx", threads=threads)
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in model.forward.__code__.co_varnames:
        names.append("token_type_ids")

    def batched(net, device: str) -> Callable[[list[str]], np.ndarray]:
        def run(batch: list[str]) -> np.ndarray:
            encoded = classifier.encode(batch)
            out = np.empty((len(batch), classifier.manifest.num_logits), dtype=np.float32)
            for positions, inputs in encoded.batches(classifier.max_batch):
                feed = {n: torch.from_numpy(inputs[n]).to(device) for n in names}
                with torch.inference_mode():
                    logits = net(**feed).logits  # (batch, num_labels)
                out[positions] = logits.float().cpu().numpy()[:, : out.shape[1]]
            return out

        return run

    cpu_run = batched(model, "cpu")
    runs: dict[str, Callable] = {BASELINE: pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1),
                                 "torch fp32, chatmod batching": cpu_run}

    def compare(served_logits: np.ndarray) -> dict:
        torch_logits = np.concatenate([cpu_run(b) for b in batches])
        check = {"max_abs_logit_diff": float(np.abs(torch_logits - served_logits).max()),
                 "mean_abs_logit_diff": float(np.abs(torch_logits - served_logits).mean())}
        agreement = []
        for head in read_manifest(folder).heads:
            cols = slice(head.offset, head.offset + head.width)
            if head.problem_type == ProblemType.SINGLE_LABEL:
                agreement.append(float((torch_logits[:, cols].argmax(1) == served_logits[:, cols].argmax(1)).mean()))
            else:
                agreement.append(float(((torch_logits[:, cols] > 0) == (served_logits[:, cols] > 0)).mean()))
        check["label_agreement"] = statistics.fmean(agreement)
        return check

    if torch.cuda.is_available():  # a copy on the GPU: the CPU rows keep their fp32 model
        import copy

        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        runs[f"torch {str(dtype).removeprefix('torch.')} cuda, chatmod batching"] = batched(
            copy.deepcopy(model).to(device="cuda", dtype=dtype), "cuda")
    return runs, compare
