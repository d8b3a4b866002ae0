"""Stored soft labels: written once by a teacher, looked up by text, and a student distils from them
(the soft term logged, rows without a label trained on their hard labels only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from tests.tiny_models import N_LOGITS, minilm_dir
from tests.unit.test_distill_loop import HEADS, learnable_examples, tiny_teacher
from training.distill import TrainConfig, train
from training.soft_labels import SoftLabels, label_texts, save

pytestmark = pytest.mark.unit


def test_labels_round_trip_by_text_in_float16(tmp_path: Path) -> None:
    texts = ["gg wp", "you idiot", "gg wp", "ok"]
    logits = np.arange(4 * N_LOGITS, dtype=np.float32).reshape(4, N_LOGITS) / 7
    save(tmp_path / "t.npz", texts, logits, {"teacher": "t"})
    labels = SoftLabels(tmp_path / "t.npz")
    assert len(labels) == 3 and labels.meta["texts"] == 3 and labels.meta["teacher"] == "t"
    np.testing.assert_allclose(labels.get("you idiot"), logits[1], atol=1e-2)
    assert labels.get("never seen") is None
    assert (tmp_path / "t.npz").stat().st_size < 1000


def test_a_teacher_labels_texts_in_input_order(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    texts = ["a much longer text about the game and the team", "hi", "push mid"]
    got = label_texts(tmp_path / "teacher", texts, batch_size=2)
    with torch.no_grad():
        alone = [teacher(**tokenizer(t, return_tensors="pt")).logits[0].numpy() for t in texts]
    np.testing.assert_allclose(got, np.stack(alone), atol=1e-4)


def test_a_student_distils_from_stored_labels(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    examples = learnable_examples(64)
    teacher = tiny_teacher(1)
    with torch.no_grad():
        enc = tokenizer([e.text for e in examples], padding=True, return_tensors="pt")
        logits = teacher(**enc).logits.numpy()
    targets = [logits[i] if i % 2 == 0 else None for i in range(len(examples))]  # half unlabeled
    student = tiny_teacher(2)
    result = train(student, HEADS, examples, tokenizer, TrainConfig(epochs=1, batch_size=16, lr=1e-3, log_every=1),
                   soft_targets=targets)
    assert result.steps == 4 and all("loss_soft" in h and np.isfinite(h["loss_soft"]) for h in result.history)
    # soft targets for the sentiment head only (a teacher better at sentiment than at toxicity)
    only_sentiment = [h for h in HEADS if h.task.value == "sentiment"]
    sentiment_only = train(tiny_teacher(2), HEADS, examples, tokenizer,
                           TrainConfig(epochs=1, batch_size=16, lr=1e-3, log_every=1),
                           soft_targets=targets, soft_heads=only_sentiment)
    first_all, first_sentiment = result.history[0], sentiment_only.history[0]  # same init, same first batch
    assert first_sentiment["loss_hard"] == pytest.approx(first_all["loss_hard"])
    assert first_sentiment["loss_soft"] < first_all["loss_soft"], "the toxicity head's soft term is left out"
    with pytest.raises(ValueError, match="one entry"):
        train(student, HEADS, examples, tokenizer, TrainConfig(max_steps=1), soft_targets=targets[:3])


def test_precision_is_checked_and_bf16_autocast_trains(tmp_path: Path) -> None:
    from training.distill import autocast, native_bf16

    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8").validate()
    assert isinstance(native_bf16(), bool)
    with autocast(TrainConfig(precision="bf16")):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(TrainConfig(precision="fp32")):
        assert not torch.is_autocast_enabled("cpu")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    result = train(tiny_teacher(3), HEADS, learnable_examples(32), tokenizer,
                   TrainConfig(epochs=1, batch_size=16, lr=1e-3, log_every=1, precision="bf16"))
    assert all(np.isfinite(h["loss_hard"]) for h in result.history)


def test_labels_from_before_a_label_was_appended_teach_the_heads_they_hold(tmp_path: Path) -> None:
    from models.artifact import Head
    from models.labels import BASE_TOXICITY_LABELS, ProblemType, Task

    old_heads = [Head(task=Task.TOXICITY, labels=list(BASE_TOXICITY_LABELS), problem_type=ProblemType.MULTI_LABEL),
                 Head(task=Task.SENTIMENT, labels=["negative", "neutral", "positive"],
                      problem_type=ProblemType.SINGLE_LABEL, offset=6)]
    logits = np.arange(18, dtype=np.float32).reshape(2, 9)
    save(tmp_path / "old.npz", ["a", "b"], logits, {"heads": [h.model_dump(mode="json") for h in old_heads]})
    labels = SoftLabels(tmp_path / "old.npz")
    sentiment = [h for h in HEADS if h.task == Task.SENTIMENT]
    a, missing = labels.for_heads(["a", "nope"], HEADS, sentiment)
    assert missing is None and a.shape == (N_LOGITS,)
    np.testing.assert_allclose(a[-3:], logits[0, 6:], atol=1e-2)  # sentiment found by label, not by column
    np.testing.assert_allclose(a[:6], logits[0, :6], atol=1e-2)
    with pytest.raises(ValueError, match="targeted"):
        labels.for_heads(["a"], HEADS, HEADS)  # the toxicity head asks for a label the teacher never scored


def test_a_shipped_artifact_labels_as_a_teacher_assistant(tmp_path: Path) -> None:
    """A student artifact (its weights rebuilt, its manifest's heads) labels texts for a smaller student."""
    from models.artifact import read_manifest
    from tests.tiny_models import build_tiny_artifact
    from training.soft_labels import teacher_folder

    manifest = build_tiny_artifact(tmp_path / "art", formats=("safetensors", "onnx_int8"), version="8")
    model_dir, meta = teacher_folder(tmp_path / "art", tmp_path / "tmp")
    assert meta["teacher"] == manifest.ref and meta["base"] == "distilbert"
    assert meta["heads"] == [h.model_dump(mode="json") for h in read_manifest(tmp_path / "art").heads]
    texts = ["gg wp", "you absolute idiot", "push mid please"]
    save(tmp_path / "ta.npz", texts, label_texts(model_dir, texts, batch_size=2), meta)
    labels = SoftLabels(tmp_path / "ta.npz")
    assert labels.meta["teacher"] == manifest.ref and labels.num_logits == manifest.num_logits
    # laid out by (task, label) for the student's heads, as distillation reads them
    rows = labels.for_heads(texts, manifest.heads, manifest.heads)
    assert all(r is not None and r.shape == (manifest.num_logits,) for r in rows)
    with pytest.raises(FileNotFoundError):
        teacher_folder(tmp_path / "missing", tmp_path / "tmp2")
