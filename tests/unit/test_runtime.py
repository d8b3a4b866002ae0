"""TextClassifier: backends agree, batching keeps order, probabilities follow each head's contract."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from models.labels import SENTIMENT_LABELS, TOXICITY_LABELS, Task
from models.runtime import BatchMismatch, TextClassifier
from tests.tiny_models import N_LOGITS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "hi",
    "you are a complete idiot and nobody wants you here",
    "",
    "thanks!",
    "this is a fairly long message " * 30,  # truncated to max_length
    "ok ok ok",
    "Ça va? 😀",
    "I love this community, you are all great",
    "stop",
]


@pytest.mark.parametrize("fixture", ["tiny_artifact", "tiny_albert_artifact"])
def test_onnx_and_torch_agree(fixture: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(fixture)
    torch_logits = TextClassifier(folder, backend="torch", threads=1).predict_logits(TEXTS)
    fp32 = TextClassifier(folder, backend="onnx_fp32", threads=1)
    int8 = TextClassifier(folder, backend="onnx", threads=1)
    assert (fp32.backend, int8.backend) == ("onnx_fp32", "onnx_int8")
    np.testing.assert_allclose(fp32.predict_logits(TEXTS), torch_logits, atol=1e-4)
    np.testing.assert_allclose(int8.predict_logits(TEXTS), torch_logits, atol=2e-2)


def test_sub_batches_return_input_order_and_match_one_by_one(tiny_artifact: Path) -> None:
    clf = TextClassifier(tiny_artifact, backend="onnx_fp32", threads=1, max_batch=3)
    batched = clf.predict_logits(TEXTS)
    single = np.concatenate([clf.predict_logits([t]) for t in TEXTS])
    assert batched.shape == (len(TEXTS), N_LOGITS)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    reversed_batch = clf.predict_logits(TEXTS[::-1])
    np.testing.assert_allclose(reversed_batch[::-1], batched, atol=1e-5)


def test_spinning_is_a_scheduling_choice_only(tiny_artifact: Path) -> None:
    """Threads spin between a pass's operators unless told not to, never after it; the scores are the same."""
    spinning, parked = (TextClassifier(tiny_artifact, backend="onnx", threads=2, spin=s) for s in (True, False))
    for clf, allowed in ((spinning, "1"), (parked, "0")):
        options = clf._model.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == allowed
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    np.testing.assert_array_equal(spinning.predict_logits(TEXTS), parked.predict_logits(TEXTS))


def test_scores_follow_the_label_contract(tiny_artifact: Path) -> None:
    results = TextClassifier(tiny_artifact, threads=1).predict(TEXTS)
    assert len(results) == len(TEXTS)
    for scores in results:
        assert set(scores) == {Task.TOXICITY, Task.SENTIMENT}
        assert list(scores["toxicity"]) == list(TOXICITY_LABELS)
        assert list(scores["sentiment"]) == list(SENTIMENT_LABELS)
        assert all(0.0 <= p <= 1.0 for p in scores["toxicity"].values())
        assert sum(scores["sentiment"].values()) == pytest.approx(1.0)


def test_truncates_to_max_length(tiny_artifact: Path) -> None:
    clf = TextClassifier(tiny_artifact, threads=1)
    encoded = clf.encode(["word " * 1000, "short"])
    assert [len(ids) for ids in encoded.ids] == [clf.manifest.max_length, 3]  # [CLS] short [SEP]


def test_empty_input_gives_empty_output(tiny_artifact: Path) -> None:
    clf = TextClassifier(tiny_artifact, threads=1)
    assert clf.predict([]) == []
    assert clf.predict_logits([]).shape == (0, N_LOGITS)
    with pytest.raises(TypeError, match="not a single string"):
        clf.predict("one text")


def test_broken_batch_contract_raises(tiny_artifact: Path) -> None:
    clf = TextClassifier(tiny_artifact, threads=1)
    real_run = clf._model.run
    clf._model.run = lambda inputs: real_run(inputs)[:-1]  # a model that drops a row
    with pytest.raises(BatchMismatch, match="3 texts in, 2 rows out"):
        clf.predict(["a", "b", "c"])


def test_onnx_serving_never_imports_torch(tiny_artifact: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from models.runtime import ModelSet, TextClassifier
        clf = TextClassifier({str(tiny_artifact)!r}, backend="auto", threads=1)
        assert clf.backend == "onnx_int8", clf.backend
        assert len(clf.predict(["hello", "you idiot"])) == 2
        ms = ModelSet({{"toxicity": {str(tiny_artifact)!r}, "sentiment": {str(tiny_artifact)!r}}}, threads=1)
        ms.predict(["hello"])
        import models.registry
        leaked = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print("leaked:", leaked)
        sys.exit(1 if leaked else 0)
        """
    )
    # A CPU worker: no GPU visible, so "auto" must settle on ONNX without ever importing torch.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
