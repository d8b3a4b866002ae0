"""The training loop, for teachers (hard labels only) and students (soft targets + hard labels + cosine;
or soft targets stored by ``training/soft_labels.py`` + hard labels).

Batches are length-bucketed with dynamic padding: chat texts are short, and padding to a fixed length
would cost several times the compute on two CPU cores.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from models.artifact import Head
from models.labels import TASK_LABELS, ProblemType, Task
from training.data import Example
from training.losses import (
    attention_kl_loss,
    hidden_cosine_loss,
    multi_label_loss,
    single_label_loss,
    soft_target_loss,
)

log = logging.getLogger(__name__)


LAYER_MAPS = ("depth", "last")


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 96
    temperature: float = 2.0
    alpha_soft: float = 1.0  # KL to the teacher's soft targets (x T^2)
    alpha_hard: float = 1.0  # cross-entropy to the data set's labels
    alpha_cos: float = 1.0  # 1 - cos(student, teacher) on the last hidden states
    # Layer-wise transfer from a teacher of the student's width and heads (a live teacher, or a layer teacher
    # beside stored soft targets), each student layer paired with a teacher layer spread evenly (the last with
    # the last): 1 - cos of the hidden states, and the KL between self-attention distributions (MiniLM).
    alpha_hidden: float = 0.0
    alpha_attn: float = 0.0
    # "depth": every student layer follows the teacher layer at its depth; "last": the last follows the last
    # alone (MiniLM's choice, for a student that cannot follow distinct layers with one shared layer).
    layer_map: str = "depth"
    seed: int = 13
    log_every: int = 50
    max_steps: int | None = None
    # "bf16": matmuls in bfloat16 under autocast, weights and optimizer in fp32 (4x faster fine-tuning of
    # MPNet-base on a CPU with AMX, measured); "auto": bf16 where the hardware runs it natively.
    precision: str = "fp32"

    @property
    def layerwise(self) -> bool:
        """Whether a teacher's layers teach (either layer-wise term weighs anything)."""
        return self.alpha_hidden > 0 or self.alpha_attn > 0

    def validate(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.alpha_soft, self.alpha_hard, self.alpha_cos, self.alpha_hidden, self.alpha_attn) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.layer_map not in LAYER_MAPS:
            raise ValueError(f"layer_map must be one of {LAYER_MAPS}, got {self.layer_map!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")


@functools.lru_cache(maxsize=None)
def native_bf16(device: str = "cpu") -> bool:
    """Whether bfloat16 matmuls run natively here: AMX or AVX-512 BF16 on a CPU, bf16 support on CUDA."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast(cfg: TrainConfig, device: str = "cpu"):  # -> a context manager
    """bfloat16 autocast when ``cfg.precision`` asks for it (or "auto" finds it native), else a no-op."""
    import contextlib

    use = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16(device))
    return torch.autocast(device_type=device, dtype=torch.bfloat16) if use else contextlib.nullcontext()


@dataclass
class Batch:
    input_ids: Tensor  # (batch, seq)
    attention_mask: Tensor  # (batch, seq)
    tox: Tensor  # (batch, 6) targets, -1 where masked
    sent: Tensor  # (batch,) class index, -1 where none
    sent_allowed: Tensor  # (batch, 3) classes the source can express

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.tox, self.sent,
                                                 self.sent_allowed)))


def collate(encoded: list[list[int]], examples: list[Example], pad_id: int) -> Batch:
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    n_tox = len(TASK_LABELS[Task.TOXICITY])
    tox = torch.tensor([ex.toxicity if ex.toxicity is not None else (-1,) * n_tox for ex in examples])
    sent = torch.tensor([ex.sentiment if ex.sentiment is not None else -1 for ex in examples])
    allowed = torch.tensor([ex.sentiment_classes for ex in examples])
    return Batch(ids, mask, tox, sent, allowed)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, chunk: int = 50) -> list[list[int]]:
    """Indices grouped into batches of similar length: shuffle, sort within chunks, shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * chunk
    for start in range(0, len(order), span):
        part = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def hard_label_loss(logits: Tensor, heads: Sequence[Head], batch: Batch) -> Tensor:
    """Sum of per-head hard-label losses, each masked to what the example's data set annotates."""
    total = logits.new_zeros(())
    for head in heads:
        cols = logits[:, head.offset : head.offset + head.width]  # (batch, labels)
        if head.problem_type == ProblemType.MULTI_LABEL:
            total = total + multi_label_loss(cols, batch.tox, (batch.tox >= 0).float())
        else:
            total = total + single_label_loss(cols, batch.sent, batch.sent_allowed, (batch.sent >= 0).float())
    return total


def soft_loss(student: Tensor, teacher: Tensor, heads: Sequence[Head], temperature: float) -> Tensor:
    total = student.new_zeros(())
    for head in heads:
        s = student[:, head.offset : head.offset + head.width]
        t = teacher[:, head.offset : head.offset + head.width]
        total = total + soft_target_loss(s, t, temperature, head.problem_type == ProblemType.MULTI_LABEL)
    return total


@dataclass
class TrainResult:
    steps: int
    seconds: float
    examples_per_s: float
    final_losses: dict[str, float]
    history: list[dict] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number: the run stops instead of saving a broken model."""


@dataclass
class _Teaching:
    """What teaches beside the hard labels: a live teacher, or stored soft targets (per example, or None)
    with, where given, a layer teacher whose hidden states and attention the student follows."""

    teacher: PreTrainedModel | None
    soft_targets: Sequence[np.ndarray | None] | None
    soft_heads: Sequence[Head] | None
    layer_teacher: PreTrainedModel | None = None

    @property
    def guide(self) -> PreTrainedModel | None:
        """The model whose layers the student follows: the live teacher, else the layer teacher."""
        return self.teacher if self.teacher is not None else self.layer_teacher


def train(
    model: PreTrainedModel,
    heads: Sequence[Head],
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    teacher: PreTrainedModel | None = None,
    log_path: Path | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    soft_targets: Sequence[np.ndarray | None] | None = None,
    soft_heads: Sequence[Head] | None = None,
    checkpoint: Path | None = None,
    layer_teacher: PreTrainedModel | None = None,
) -> TrainResult:
    """Train ``model`` in place. With a teacher: distillation (soft + hard + cosine); with ``soft_targets``
    (a stored teacher's logits per example, None where it has none): soft + hard; else fine-tuning.
    ``soft_heads``: the heads the soft targets teach (default all), e.g. only the tasks where the teacher
    is better than the student it teaches. ``layer_teacher``: beside stored soft targets, a model of the
    student's width, heads and vocabulary whose layers teach (``cfg.alpha_hidden``, ``cfg.alpha_attn``).

    ``checkpoint``: a folder where the model, optimiser and schedule are saved after every epoch but the
    last; a run started again with the same folder resumes after the last saved epoch, and the folder is
    removed when the run ends. A loss that is not a number stops the run (``TrainingDiverged``)."""
    total_steps = _total_steps(cfg, examples, teacher, soft_targets)
    teaching = _Teaching(teacher, soft_targets, soft_heads, layer_teacher)
    layered = _check_layer_transfer(model, teaching, cfg)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=cfg.max_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    optim, sched = _optimiser(model, cfg, total_steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a lent GPU is used as it is
    model.to(device)
    for m in (teacher, layer_teacher):
        if m is not None:
            m.to(device).eval()
    attn_impl = _eager_attention((model, teaching.guide) if layered and cfg.alpha_attn > 0 else ())
    model.train()
    step, epoch = _resume(checkpoint, model, optim, sched) if checkpoint is not None else (0, 0)
    for _ in range(epoch):  # the batch order the finished epochs drew, so the next one matches a straight run
        bucketed_batches(lengths, cfg.batch_size, rng)
    meter = _Meter(log_path, total_steps, cfg.log_every)
    loop = _Loop(model, heads, examples, encoded, tokenizer.pad_token_id or 0, cfg, teaching, device, optim, sched)
    try:
        while step < total_steps:
            for idx in bucketed_batches(lengths, cfg.batch_size, rng):
                if step >= total_steps:
                    break
                step += 1
                meter.record(step, loop.step(idx, step, total_steps), len(idx), sched.get_last_lr()[0])
                if on_step:
                    on_step(step, total_steps, meter.last())
            epoch += 1
            if checkpoint is not None and step < total_steps:
                _save_checkpoint(checkpoint, model, optim, sched, step, epoch)
    finally:
        meter.close()
        for m, impl in attn_impl:
            m.set_attn_implementation(impl)
    model.to("cpu").eval()  # callers save and evaluate on the CPU
    for m in (teacher, layer_teacher):
        if m is not None:
            m.to("cpu")
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return meter.result(step)


def _check_layer_transfer(model: PreTrainedModel, teaching: _Teaching, cfg: TrainConfig) -> bool:
    """Whether the layer-wise terms apply; a layer teacher they cannot pair with the student is an error."""
    if teaching.layer_teacher is not None and not cfg.layerwise:
        raise ValueError("a layer teacher needs alpha_hidden or alpha_attn above 0")
    if teaching.layer_teacher is not None and teaching.soft_targets is None:
        raise ValueError("a layer teacher goes with stored soft targets; a live teacher is its own layer teacher")
    guide = teaching.guide
    if guide is None or not cfg.layerwise:
        return False
    ours, theirs = _shape(model), _shape(guide)
    if ours[:2] != theirs[:2]:
        raise ValueError(f"layer-wise transfer needs the same width and attention heads: the student has "
                         f"(width, heads) {ours[:2]}, its layer teacher {theirs[:2]}")
    return True


def _shape(model: PreTrainedModel) -> tuple[int, int, int]:
    """(width, attention heads, layers) of an encoder (DistilBERT's config maps these names to its own)."""
    c = model.config
    return c.hidden_size, c.num_attention_heads, c.num_hidden_layers


def layer_pairs(student_layers: int, teacher_layers: int, layer_map: str = "depth") -> list[tuple[int, int]]:
    """(student, teacher) indices into ``hidden_states`` (0 is the embeddings): each student layer paired
    with the teacher layer at the same depth fraction, the last with the last; or, for ``last``, only the
    last with the last."""
    if layer_map == "last":
        return [(student_layers, teacher_layers)]
    return [(i, max(1, round(i * teacher_layers / student_layers))) for i in range(1, student_layers + 1)]


def _eager_attention(models: Sequence[PreTrainedModel]) -> list[tuple[PreTrainedModel, str]]:
    """Switch ``models`` to eager attention (the fused kernels return no attention maps); what to restore."""
    restore = []
    for m in models:
        restore.append((m, m.config._attn_implementation or "sdpa"))
        m.set_attn_implementation("eager")
    return restore


def _total_steps(cfg: TrainConfig, examples: Sequence[Example], teacher: PreTrainedModel | None,
                 soft_targets: Sequence[np.ndarray | None] | None) -> int:
    """The run's length in optimiser steps, once the inputs are checked."""
    cfg.validate()
    if not examples:
        raise ValueError("no training examples")
    if soft_targets is not None and (teacher is not None or len(soft_targets) != len(examples)):
        raise ValueError("soft_targets replace the teacher and need one entry (or None) per example")
    total = max(1, int(math.ceil(len(examples) / cfg.batch_size) * cfg.epochs))
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


@dataclass
class _Loop:
    """One optimiser step at a time over a batch of example indices."""

    model: PreTrainedModel
    heads: Sequence[Head]
    examples: Sequence[Example]
    encoded: list[list[int]]
    pad_id: int
    cfg: TrainConfig
    teaching: _Teaching
    device: torch.device
    optim: torch.optim.Optimizer
    sched: Any

    def step(self, idx: list[int], step: int, total_steps: int) -> dict[str, Tensor]:
        """Forward, loss, backward, update; the loss terms (and ``total``). A loss that is not a number stops."""
        cfg = self.cfg
        batch = collate([self.encoded[i] for i in idx], [self.examples[i] for i in idx], self.pad_id).to(self.device)
        terms = _loss_terms(self.model, self.heads, batch, idx, cfg, self.teaching, self.device)
        weights = {"hard": cfg.alpha_hard, "soft": cfg.alpha_soft, "cos": cfg.alpha_cos,
                   "hidden": cfg.alpha_hidden, "attn": cfg.alpha_attn}
        loss = sum(weights[k] * v for k, v in terms.items())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise TrainingDiverged(f"the training loss is {float(loss.detach())} at step {step} of "
                                   f"{total_steps} ({parts}); try a lower learning rate or fp32 precision")
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optim.step()
        self.sched.step()
        return {**terms, "total": loss}


def _optimiser(model: PreTrainedModel, cfg: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and norms) with a linear schedule after warm-up."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optim = torch.optim.AdamW(params, lr=cfg.lr)
    return optim, get_linear_schedule_with_warmup(optim, int(cfg.warmup_fraction * total_steps), total_steps)


def _loss_terms(model: PreTrainedModel, heads: Sequence[Head], batch: Batch, idx: list[int], cfg: TrainConfig,
                teaching: _Teaching, device: torch.device) -> dict[str, Tensor]:
    """The batch's loss terms: hard labels, soft targets (stored or from the teacher), hidden-state cosine,
    and the layer-wise terms where a teacher's layers teach."""
    teacher, soft_targets, guide = teaching.teacher, teaching.soft_targets, teaching.guide
    hidden = guide is not None and (cfg.alpha_hidden > 0 or (teacher is not None and cfg.alpha_cos > 0))
    attn = guide is not None and cfg.alpha_attn > 0
    with autocast(cfg, device.type):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    output_hidden_states=hidden, output_attentions=attn)
    logits = out.logits.float()  # (batch, num_labels): losses in fp32 whatever the matmuls ran in
    terms = {"hard": hard_label_loss(logits, heads, batch)}
    if soft_targets is not None:
        rows = [r for r, i in enumerate(idx) if soft_targets[i] is not None]
        if rows:
            stored = torch.from_numpy(np.stack([soft_targets[idx[r]] for r in rows])).to(device)  # (rows, logits)
            terms["soft"] = soft_loss(logits[rows], stored, teaching.soft_heads or heads, cfg.temperature)
    if guide is None:
        return terms
    with torch.inference_mode(), autocast(cfg, device.type):
        t_out = guide(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      output_hidden_states=hidden, output_attentions=attn)
    if teacher is not None:
        terms["soft"] = soft_loss(logits, t_out.logits.float().clone(), heads, cfg.temperature)
        if cfg.alpha_cos > 0:
            terms["cos"] = hidden_cosine_loss(out.hidden_states[-1].float(),
                                              t_out.hidden_states[-1].float().clone(), batch.attention_mask)
    pairs = layer_pairs(_shape(model)[2], _shape(guide)[2], cfg.layer_map)
    if cfg.alpha_hidden > 0:
        terms["hidden"] = sum(hidden_cosine_loss(out.hidden_states[s].float(), t_out.hidden_states[t].float().clone(),
                                                 batch.attention_mask) for s, t in pairs) / len(pairs)
    if attn:
        terms["attn"] = sum(attention_kl_loss(out.attentions[s - 1], t_out.attentions[t - 1].clone(),
                                              batch.attention_mask) for s, t in pairs) / len(pairs)
    return terms


CHECKPOINT_NAME = "checkpoint.pt"


def _save_checkpoint(folder: Path, model: PreTrainedModel, optim, sched, step: int, epoch: int) -> None:
    """Model, optimiser, schedule and random state after ``epoch`` (written to a temp file and renamed: never half one)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{CHECKPOINT_NAME}.partial"
    torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
                "step": step, "epoch": epoch, "torch_rng": torch.get_rng_state()}, partial)
    partial.replace(folder / CHECKPOINT_NAME)


def _resume(folder: Path, model: PreTrainedModel, optim, sched) -> tuple[int, int]:
    """(step, epoch) to go on from: the checkpoint's, loaded into the model and optimiser, or (0, 0)."""
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return 0, 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["torch_rng"])  # dropout draws as a straight run would
    log.info("resuming training from %s", path, extra={"step": state["step"]})
    return int(state["step"]), int(state["epoch"])


class _Meter:
    """Running means of the loss terms, logged every ``log_every`` steps (and at the last) as history."""

    def __init__(self, log_path: Path | None, total_steps: int, log_every: int) -> None:
        self.total_steps, self.log_every = total_steps, log_every
        self.log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed in close()
        self.running: dict[str, list[float]] = {}
        self.history: list[dict] = []
        self.seen, self.started = 0, time.perf_counter()

    def record(self, step: int, terms: dict[str, Tensor], examples: int, lr: float) -> None:
        self.seen += examples
        for k, v in terms.items():
            self.running.setdefault(k, []).append(float(v.detach()))
        if step % self.log_every == 0 or step == self.total_steps:
            rate = self.seen / (time.perf_counter() - self.started)
            record = {"step": step, "of": self.total_steps, "lr": lr, "examples_per_s": round(rate, 1),
                      **{f"loss_{k}": round(float(np.mean(v)), 5) for k, v in self.running.items()}}
            self.history.append(record)
            if self.log:
                self.log.write(json.dumps(record) + "\n")
                self.log.flush()
            self.running.clear()

    def last(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.running.items()}

    def close(self) -> None:
        if self.log:
            self.log.close()
            self.log = None

    def result(self, steps: int) -> TrainResult:
        elapsed = time.perf_counter() - self.started
        last = self.history[-1] if self.history else {}
        return TrainResult(steps, elapsed, self.seen / max(elapsed, 1e-9),
                           {k: v for k, v in last.items() if k.startswith("loss_")}, self.history)
