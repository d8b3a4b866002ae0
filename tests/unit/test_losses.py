"""Distillation losses against values computed by hand, and the masking rules the data sets rely on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    attention_kl_loss,
    hidden_cosine_loss,
    multi_label_loss,
    single_label_loss,
    soft_target_loss,
)

pytestmark = pytest.mark.unit


def _softmax(xs: list[float]) -> list[float]:
    z = [math.exp(x) for x in xs]
    return [v / sum(z) for v in z]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- soft targets


def test_soft_target_loss_is_t_squared_kl_for_a_softmax() -> None:
    student, teacher, t = [1.0, 0.0], [0.0, 2.0], 2.0
    p = _softmax([x / t for x in teacher])
    q = _softmax([x / t for x in student])
    expected = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = soft_target_loss(torch.tensor([student]), torch.tensor([teacher]), t, multi_label=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.02961, abs=1e-4)  # the hand computation itself, pinned


def test_soft_target_loss_is_zero_when_student_matches_teacher() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0], [5.0, 0.0, -5.0]])
    for multi_label in (False, True):
        loss = soft_target_loss(logits, logits.clone(), 3.0, multi_label)
        assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_soft_target_loss_multi_label_is_mean_binary_kl() -> None:
    student, teacher, t = [2.0, -1.0], [-1.0, 3.0], 2.0

    def binary_kl(s: float, te: float) -> float:
        p, q = _sigmoid(te / t), _sigmoid(s / t)
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    expected = t * t * (binary_kl(student[0], teacher[0]) + binary_kl(student[1], teacher[1])) / 2
    got = soft_target_loss(torch.tensor([student]), torch.tensor([teacher]), t, multi_label=True)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_loss_row_mask_excludes_rows() -> None:
    student = torch.tensor([[1.0, 0.0], [9.0, -9.0]])
    teacher = torch.tensor([[0.0, 2.0], [-9.0, 9.0]])
    only_first = soft_target_loss(student[:1], teacher[:1], 2.0, False)
    masked = soft_target_loss(student, teacher, 2.0, False, row_mask=torch.tensor([1.0, 0.0]))
    assert masked.item() == pytest.approx(only_first.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_soft_target_loss_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_target_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature, multi_label=False)


# ---------------------------------------------------------------- hard labels


def test_multi_label_loss_is_mean_bce_over_annotated_labels() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1, 0, -1]])
    mask = (targets >= 0).float()
    expected = (-math.log(_sigmoid(2.0)) - math.log(1 - _sigmoid(-1.0))) / 2
    assert multi_label_loss(logits, targets, mask).item() == pytest.approx(expected, rel=1e-6)


def test_multi_label_loss_ignores_masked_targets() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    a = multi_label_loss(logits, torch.tensor([[1, 0, 0], [0, 1, 0]]), mask)
    b = multi_label_loss(logits, torch.tensor([[1, 0, 1], [1, 1, 0]]), mask)  # only masked targets changed
    assert a.item() == pytest.approx(b.item(), rel=1e-7)
    c = multi_label_loss(logits, torch.tensor([[0, 0, 0], [0, 1, 0]]), mask)  # an annotated target changed
    # BCE(x, 0) - BCE(x, 1) == x: flipping the logit-2.0 target adds 2.0 over 4 annotated labels
    assert c.item() == pytest.approx(a.item() + 0.5, rel=1e-6)


def test_multi_label_loss_all_masked_is_zero_and_backprops() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 4.0]], requires_grad=True)
    targets = torch.full((2, 2), -1)
    loss = multi_label_loss(logits, targets, (targets >= 0).float())
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_single_label_loss_with_allowed_classes_is_two_way_ce() -> None:
    # SST-2 rows: negative (0) / positive (2) only; neutral (1) is not a class the set can express
    logits = torch.tensor([[0.2, 3.0, -0.5], [1.0, 2.0, 0.4], [-1.0, 5.0, 2.0]], requires_grad=True)
    targets = torch.tensor([0, 2, 2])
    allowed = torch.tensor([[1, 0, 1]] * 3)
    got = single_label_loss(logits, targets, allowed, torch.ones(3))
    two_way = F.cross_entropy(logits[:, [0, 2]], torch.tensor([0, 1, 1]))
    assert got.item() == pytest.approx(two_way.item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 1] == 0).all()  # neutral is not pushed down
    # all three classes allowed: plain 3-way cross-entropy, which the big neutral logit makes larger
    full = single_label_loss(logits.detach(), targets, torch.ones(3, 3, dtype=torch.long), torch.ones(3))
    assert full.item() == pytest.approx(F.cross_entropy(logits.detach(), targets).item(), rel=1e-6)
    assert full.item() > got.item()


def test_single_label_loss_skips_rows_without_a_label() -> None:
    logits = torch.tensor([[0.2, 3.0, -0.5], [1.0, 2.0, 0.4]], requires_grad=True)
    targets = torch.tensor([1, -1])
    loss = single_label_loss(logits, targets, torch.ones(2, 3, dtype=torch.long), (targets >= 0).float())
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:1], targets[:1]).item(), rel=1e-6)
    none = single_label_loss(logits, torch.tensor([-1, -1]), torch.tensor([[1, 0, 1]] * 2), torch.zeros(2))
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- hidden states


def test_hidden_cosine_loss_is_zero_for_identical_states() -> None:
    hidden = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert hidden_cosine_loss(hidden, hidden.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_cosine_loss_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 4, 8, generator=gen), torch.randn(2, 4, 8, generator=gen)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    loss = hidden_cosine_loss(student, teacher, mask)
    real = mask.bool()
    expected = (1 - F.cosine_similarity(student[real], teacher[real], dim=-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    scrambled = student.clone()
    scrambled[~real] = torch.randn(int((~real).sum()), 8, generator=gen) * 100  # change only padding
    assert hidden_cosine_loss(scrambled, teacher, mask).item() == pytest.approx(loss.item(), rel=1e-6)


def test_hidden_cosine_loss_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must match in shape"):
        hidden_cosine_loss(torch.zeros(2, 4, 8), torch.zeros(2, 4, 16), torch.ones(2, 4))


# ---------------------------------------------------------------- attention maps


def _attention(gen: torch.Generator, mask: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """Random attention distributions over the real keys of each row (batch, heads, seq, seq)."""
    batch, seq = mask.shape
    scores = torch.randn(batch, heads, seq, seq, generator=gen)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    return scores.softmax(dim=-1)


def test_attention_kl_loss_is_zero_for_identical_maps_and_positive_otherwise() -> None:
    gen = torch.Generator().manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    a, b = _attention(gen, mask), _attention(gen, mask)
    assert attention_kl_loss(a, a.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl_loss(a, b, mask).item() > 0.01


def test_attention_kl_loss_is_the_mean_kl_over_heads_and_real_queries() -> None:
    gen = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    student, teacher = _attention(gen, mask), _attention(gen, mask)
    kls = []
    for row in range(2):
        for head in range(2):
            for query in range(int(mask[row].sum())):
                p, q = teacher[row, head, query], student[row, head, query]
                kls.append(sum(float(pi * (math.log(pi) - math.log(qi))) for pi, qi in zip(p, q) if pi > 0))
    assert attention_kl_loss(student, teacher, mask).item() == pytest.approx(sum(kls) / len(kls), rel=1e-5)
    scrambled = student.clone()
    scrambled[0, :, 2] = torch.rand(2, 3, generator=gen)  # the padding query's row: not counted
    assert attention_kl_loss(scrambled, teacher, mask).item() == pytest.approx(sum(kls) / len(kls), rel=1e-5)


def test_attention_kl_loss_refuses_mismatched_heads() -> None:
    with pytest.raises(ValueError, match="must match in shape"):
        attention_kl_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3), torch.ones(1, 3))
