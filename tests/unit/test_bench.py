"""Benchmark parts that decide what is measured: the workloads and the rebuilt torch baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.bench import bench_artifact
from models.runtime import TextClassifier
from models.torch_from_onnx import torch_model_from_artifact
from pipeline.devstack.bench_report import check_targets
from pipeline.devstack.bench_workload import chat_lines, unique_texts, workload
from tests.tiny_models import build_tiny_artifact

pytestmark = pytest.mark.unit


def _tokens(texts: list[str]) -> float:
    return float(np.mean([len(t.split()) for t in texts]))


def test_unique_texts_are_distinct_seeded_and_chat_sized() -> None:
    texts = unique_texts(5000, seed=3)
    assert len(set(texts)) == 5000
    assert texts == unique_texts(5000, seed=3) and texts != unique_texts(5000, seed=4)
    # as long as real chat lines on average, give or take a word: splicing must not double the cost
    assert abs(_tokens(texts) - _tokens(chat_lines())) < 1.5


def test_repeat_workload_repeats_earlier_texts_only() -> None:
    texts = workload(4000, 0.5, seed=1)
    first_seen: dict[str, int] = {}
    repeats = 0
    for i, text in enumerate(texts):
        if text in first_seen:
            repeats += 1
            assert i - first_seen[text] > 50  # never inside the batch that first carries it
        else:
            first_seen[text] = i
    assert 0.45 < repeats / len(texts) < 0.55
    assert len(set(workload(1000, 0.0, seed=1))) == 1000


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    build_tiny_artifact(out, formats=("onnx", "onnx_int8"))
    return out


def test_torch_model_rebuilt_from_onnx_is_the_served_model(tiny_artifact: Path) -> None:
    import torch

    texts = unique_texts(64, seed=0)
    model = torch_model_from_artifact(tiny_artifact)
    clf = TextClassifier(tiny_artifact, backend="onnx_fp32", threads=1)
    encoded = clf.encode(texts)
    for positions, inputs in encoded.batches(32):
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(inputs["input_ids"]),
                           attention_mask=torch.from_numpy(inputs["attention_mask"])).logits.numpy()
        np.testing.assert_allclose(logits, clf.predict_encoded_logits(encoded)[positions], atol=1e-4)


def test_model_bench_rows_and_ratios(tiny_artifact: Path) -> None:
    rows, check = bench_artifact(tiny_artifact, unique_texts(96, seed=0), threads=1, batch_size=32)
    engines = [r.engine for r in rows]
    assert engines[:2] == ["transformers pipeline (default)", "torch fp32, chatmod batching"]
    assert {"chatmod runtime, onnx_int8", "chatmod runtime, onnx_int8, threads parked",
            "chatmod runtime, onnx_fp32"} <= set(engines)
    assert rows[0].ratio == pytest.approx(1.0)
    assert all(r.messages == 96 and r.msgs_per_s > 0 and r.batch_p99_ms >= r.batch_p50_ms for r in rows)
    # the baseline is the same model: its logits match the served int8 model up to quantisation
    assert check["max_abs_logit_diff"] < 0.1 and check["label_agreement"] > 0.9


def test_targets_are_judged_from_the_measured_figures() -> None:
    report = {"end_to_end": {"runs": [
        {"workload": "unique", "sustained_msgs_per_s": 1200.0, "lost": 0},
        {"workload": "raid: 50 texts", "sustained_msgs_per_s": 2800.0, "lost": 0,
         "extra": {"cpu_ms_per_msg": {"worker": 0.25}}},
        {"workload": "reference: Faust, no model", "sustained_msgs_per_s": 3000.0, "lost": 0},
        {"workload": "peer: kafka-python + pipeline", "sustained_msgs_per_s": 100.0, "lost": 0},
    ], "capacity": {"bound_ms": 150.0, "capacity_msgs_per_s": 450.0, "points": [{"lost": 1}]},
        "worker_memory": {"peak_rss_mb": 300.0}}}
    targets = check_targets(report)
    verdicts = {t["target"].split(":")[0]: t["met"] for t in targets}
    assert verdicts == {"end-to-end unique": True, "capacity at p99 <= 150 ms": False,
                        "raid": False, "end-to-end unique over the peer design (reported)": True,
                        "worker peak RSS <= 600 MB": True, "nothing lost": False}  # the raid's two share a prefix
    measured = {t["target"]: t["measured"] for t in targets}
    assert measured["raid: >= 90% of the stack's own limit (Faust, no model)"] == 0.933  # met on its own
    assert measured["raid: worker CPU per cached message <= 0.2 ms"] == 0.25
    assert measured["end-to-end unique over the peer design (reported)"] == 12.0
    assert measured["nothing lost"] == 1  # a capacity point's loss counts too


def test_cpu_seconds_counts_this_process_and_is_none_for_a_gone_one() -> None:
    import os
    import time

    from pipeline.devstack.bench_workload import cpu_seconds

    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU
        pass
    assert before is not None and cpu_seconds(os.getpid()) - before >= 0.15
    assert cpu_seconds(2**22 + 12345) is None  # above Linux's pid_max default: no such process
