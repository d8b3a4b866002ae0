"""Unlabeled transfer sets: the same draw every time, no labeled text among them, and a student distils from
them only through soft labels that cover them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_artifact, save_tiny_hf_model
from tests.unit.test_training_data import data_root  # noqa: F401 - the synthetic data folder, as a fixture
from training.distill import TrainConfig
from training.recipe import StageConfig, run_distill_from_labels, training_examples
from training.soft_labels import SoftLabels, label_recipe
from training.transfer import read_chitchat, transfer_examples

pytestmark = pytest.mark.unit


def _message(text: str) -> dict:
    return {"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": "a"}


def test_read_chitchat_keeps_each_usable_message_once(tmp_path: Path) -> None:
    corpus = {
        "c1": {"messages": [[_message("Hello"), _message("How are  you\n doing?")], [_message("k")]],
               "ratings": {}, "start": "", "prompt": ""},
        "c2": {"messages": [[_message("  Hello "), _message("x" * 401)], [_message("fine, you?")]],
               "ratings": {}, "start": "", "prompt": ""},
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(corpus))
    assert read_chitchat(path) == ["Hello", "How are you doing?", "fine, you?"]


def test_transfer_examples_draw_the_same_unlabeled_texts_every_time() -> None:
    first, prints = transfer_examples({"chitchat": 300}, seed=13)
    again, _ = transfer_examples({"chitchat": 300}, seed=13)
    other, _ = transfer_examples({"chitchat": 300}, seed=14)
    assert [ex.text for ex in first] == [ex.text for ex in again] != [ex.text for ex in other]
    assert len({ex.text for ex in first}) == 300
    assert all(ex.source == "chitchat" and ex.toxicity is None and ex.sentiment is None for ex in first)
    assert prints["transfer/chitchat"].startswith("chitchat-dataset 0.9.0 ")
    excluded, _ = transfer_examples({"chitchat": 300}, seed=13, exclude=frozenset(ex.text for ex in first[:100]))
    assert excluded == first[100:]  # the same draw, less the labeled texts
    with pytest.raises(ValueError, match="unknown transfer set 'reddit'"):
        transfer_examples({"reddit": 5}, seed=13)
    with pytest.raises(ValueError, match="size must be >= 1"):
        transfer_examples({"chitchat": 0}, seed=13)


def test_a_student_distils_from_transfer_texts_only_where_soft_labels_cover_them(
        data_root: Path, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    base = StageConfig(tasks=["sentiment"], data_root=str(data_root), augment=False,
                       train=TrainConfig(batch_size=8, max_steps=2, max_length=32))
    cfg = replace(base, transfer={"chitchat": 40})
    examples, validation, prints = training_examples(cfg)
    labeled, _, _ = training_examples(base)
    assert [ex for ex in examples if ex.source != "chitchat"] == labeled  # the labeled sets are as they were
    assert sum(ex.source == "chitchat" for ex in examples) == 40 and "transfer/chitchat" in prints
    assert validation == training_examples(base)[1]  # never validated on

    teacher = tmp_path / "teacher"
    build_tiny_artifact(teacher, tasks=("sentiment",), formats=("onnx_int8",), name="tiny-teacher")
    round_labels = label_recipe(teacher, base, tmp_path / "round.npz", precision="fp32")
    transfer_labels = label_recipe(teacher, cfg, tmp_path / "transfer.npz", precision="fp32", transfer_only=True)
    assert len(SoftLabels(transfer_labels)) == 40 and SoftLabels(transfer_labels).meta["caps"] == {}
    both = SoftLabels([round_labels, transfer_labels])
    assert len(both) == len(SoftLabels(round_labels)) + 40
    assert both.meta["teacher"] == "tiny-teacher@1 + tiny-teacher@1"

    student = save_tiny_hf_model(tmp_path / "student", num_labels=3, seed=3)
    with pytest.raises(ValueError, match="40 transfer texts .* have no soft labels"):
        run_distill_from_labels(cfg, round_labels, student, tmp_path / "refused")
    record = run_distill_from_labels(cfg, [round_labels, transfer_labels], student, tmp_path / "distilled")
    assert record["soft_label_coverage"] == 1.0 and record["n_train"] == len(examples)
    assert record["soft_labels"] == [str(round_labels), str(transfer_labels)]
    with pytest.raises(ValueError, match="transfer sets are for its students"):
        from training.recipe import run_teacher

        run_teacher(cfg, str(student), tmp_path / "teacher-run")
