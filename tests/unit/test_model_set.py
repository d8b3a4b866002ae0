"""ModelSet: one model per distinct artifact, one tokenisation per distinct tokenizer, safe across threads."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models.artifact import ArtifactError
from models.labels import TOXICITY_LABELS, Task
from models.runtime import ModelSet, TextClassifier
from tests.tiny_models import build_tiny_artifact

pytestmark = pytest.mark.unit

TEXTS = ["hello there", "you are an idiot", "", "great game, well played everyone", "ok"]


def test_two_tasks_on_one_artifact_load_one_model(tiny_artifact: Path) -> None:
    ms = ModelSet({Task.TOXICITY: tiny_artifact, Task.SENTIMENT: tiny_artifact}, backend="onnx", threads=1)
    assert len(ms.classifiers) == 1
    assert ms.refs == {Task.TOXICITY: "tiny-distilbert@1", Task.SENTIMENT: "tiny-distilbert@1"}
    assert ms.heads[Task.SENTIMENT].offset == len(TOXICITY_LABELS)
    alone = TextClassifier(tiny_artifact, backend="onnx", threads=1).predict(TEXTS)
    assert ms.predict(TEXTS) == alone


def test_a_copy_with_the_same_ref_is_loaded_once(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "same"))
    ms = ModelSet({"toxicity": tiny_artifact, "sentiment": copy}, backend="onnx", threads=1)
    assert len(ms.classifiers) == 1


def test_two_different_artifacts_with_one_ref_are_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    impostor = tmp_path / "impostor"
    build_tiny_artifact(impostor, seed=7, formats=("onnx",))  # also "tiny-distilbert@1", other weights
    with pytest.raises(ArtifactError, match="two different artifacts claim to be tiny-distilbert@1"):
        ModelSet({"toxicity": tiny_artifact, "sentiment": impostor}, threads=1)


def test_two_artifacts_share_one_tokenisation(tiny_artifact: Path, tiny_albert_artifact: Path) -> None:
    ms = ModelSet({"toxicity": tiny_artifact, "sentiment": tiny_albert_artifact}, backend="onnx", threads=1)
    assert len(ms.classifiers) == 2
    assert len(ms.encoders) == 1  # same MiniLM tokenizer.json and max_length
    assert ms.refs == {Task.TOXICITY: "tiny-distilbert@1", Task.SENTIMENT: "tiny-albert@1"}
    got = ms.predict(TEXTS)
    tox = TextClassifier(tiny_artifact, backend="onnx", threads=1).predict(TEXTS)
    sent = TextClassifier(tiny_albert_artifact, backend="onnx", threads=1).predict(TEXTS)
    assert got == [
        {Task.TOXICITY: t[Task.TOXICITY], Task.SENTIMENT: s[Task.SENTIMENT]}
        for t, s in zip(tox, sent, strict=True)
    ]


def test_single_task_artifact_cannot_serve_another_task(tmp_path: Path) -> None:
    folder = tmp_path / "sentiment-only"
    build_tiny_artifact(folder, tasks=("sentiment",), formats=("onnx",), name="tiny-sent")
    assert ModelSet({"sentiment": folder}, threads=1).predict(["fine"])[0].keys() == {Task.SENTIMENT}
    with pytest.raises(ArtifactError, match="no head for task"):
        ModelSet({"toxicity": folder}, threads=1)


def test_concurrent_predicts_match_sequential(tiny_artifact: Path, tiny_albert_artifact: Path) -> None:
    ms = ModelSet({"toxicity": tiny_artifact, "sentiment": tiny_albert_artifact}, threads=1, max_batch=2)
    batches = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 4
    expected = [ms.predict(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(ms.predict, batches))
    assert got == expected
