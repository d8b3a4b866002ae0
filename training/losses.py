"""Distillation losses: pure, typed, one term each (logged separately by the training loop).

Conventions: logits are (batch, labels) for one head; masks are float tensors with 1 where a target
exists. Every loss returns a scalar mean over the targets that exist, and 0 (with a graph) when none do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    total = mask.sum()
    if total == 0:
        return values.sum() * 0.0  # keeps the graph, contributes nothing
    return (values * mask).sum() / total


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float, multi_label: bool,
                     row_mask: Tensor | None = None) -> Tensor:
    """KL(teacher_T || student_T) scaled by T^2 (Hinton et al.), per row.

    Single-label: softmax distributions over the head's classes. Multi-label: each label is its own
    Bernoulli distribution, so the KL is the binary one, averaged over labels.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = temperature
    if multi_label:
        p = torch.sigmoid(teacher / t)
        log_q1, log_q0 = F.logsigmoid(student / t), F.logsigmoid(-student / t)
        log_p1, log_p0 = F.logsigmoid(teacher / t), F.logsigmoid(-teacher / t)
        kl = (p * (log_p1 - log_q1) + (1 - p) * (log_p0 - log_q0)).mean(dim=-1)  # (batch,)
    else:
        log_q = F.log_softmax(student / t, dim=-1)
        log_p = F.log_softmax(teacher / t, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (batch,)
    mask = torch.ones_like(kl) if row_mask is None else row_mask.to(kl.dtype)
    return _masked_mean(kl, mask) * (t * t)


def multi_label_loss(logits: Tensor, targets: Tensor, mask: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy per label, only where the data set annotates the label (mask == 1)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype), reduction="none",
                                             pos_weight=pos_weight)
    return _masked_mean(bce, mask.to(logits.dtype))


def single_label_loss(logits: Tensor, targets: Tensor, allowed: Tensor, row_mask: Tensor) -> Tensor:
    """Cross-entropy restricted to the classes a data set's annotation speaks for (``allowed`` is
    (batch, classes)): a class a set says nothing about is masked out of its rows' softmax rather than
    taught as wrong.
    """
    masked = logits.masked_fill(allowed == 0, float("-inf"))
    ce = F.cross_entropy(masked, targets.clamp(min=0), reduction="none")  # (batch,)
    ce = torch.where(row_mask > 0, ce, torch.zeros_like(ce))
    return _masked_mean(ce, row_mask.to(logits.dtype))


def hidden_cosine_loss(student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """1 - cos(student, teacher) per real token, as in DistilBERT's cosine embedding loss.

    hidden: (batch, seq, dim), same width for student and teacher; padding positions excluded.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states must match in shape, got student {tuple(student_hidden.shape)} "
            f"and teacher {tuple(teacher_hidden.shape)}"
        )
    cos = F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)  # (batch, seq)
    return _masked_mean(1.0 - cos, attention_mask.to(cos.dtype))


def attention_kl_loss(student_attn: Tensor, teacher_attn: Tensor, attention_mask: Tensor) -> Tensor:
    """KL(teacher || student) between self-attention distributions, per head and real query token, as in
    MiniLM's self-attention transfer.

    attn: (batch, heads, seq, seq) probabilities (rows sum to 1 over the keys), the same heads for both;
    padding queries excluded (padding keys carry no probability in either).
    """
    if student_attn.shape != teacher_attn.shape:
        raise ValueError(
            f"attention maps must match in shape, got student {tuple(student_attn.shape)} "
            f"and teacher {tuple(teacher_attn.shape)}"
        )
    p, q = teacher_attn.float(), student_attn.float()
    kl = (p * (p.clamp_min(1e-8).log() - q.clamp_min(1e-8).log())).sum(dim=-1)  # (batch, heads, seq)
    mask = attention_mask.to(kl.dtype)[:, None, :].expand_as(kl)
    return _masked_mean(kl, mask)
