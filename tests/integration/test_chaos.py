"""The delivery contract under repeated faults: two workers under steady load, SIGKILLed in turn, Redis
restarted empty. Every id comes out; copies of a result differ only in latency_ms and cached.

The short version runs in `make test`; `chatmod chaos` runs the 3-minute one (README, "Faults")."""

from __future__ import annotations

import json

import pytest

from pipeline.devstack.chaos import ChaosConfig, ChaosReport, compare_copies, run_chaos
from pipeline.schemas import differing_fields

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(420)]


def test_short_chaos_run_loses_nothing_and_every_copy_agrees(tansu_binary, tiny_store, tmp_path) -> None:
    cfg = ChaosConfig(duration_s=30, rate=120, kill_every_s=9, redis_restarts=1, store=tiny_store,
                      drain_timeout_s=150)
    lines: list[str] = []
    report = run_chaos(cfg, say=lines.append, workdir=tmp_path)
    story = "\n".join(lines)
    assert report.produced == 3600, story
    assert report.kills == 3 and report.redis_restarts == 1, story
    assert report.lost == 0, f"{report.lost} ids never came out: {report.examples}\n{story}"
    assert report.duplicates_differing == 0, (
        f"{report.duplicates_differing} copies differ outside the delivery fields "
        f"({report.differing_fields}, {report.decisions_differing} with another decision): {report.examples}")
    assert report.ok


def test_copies_that_differ_outside_the_delivery_fields_are_reported() -> None:
    """The comparison can fail: another score or decision is caught, latency and cache flags are not."""
    first = {"id": "a", "decision": "allow", "toxicity": {"insult": 0.41}, "cached": False, "latency_ms": 12.0}
    delivery_only = first | {"cached": True, "latency_ms": 80.5}
    rescored = first | {"decision": "review", "toxicity": {"insult": 0.52}, "latency_ms": 40.0}
    assert differing_fields(first, delivery_only) == []
    assert differing_fields(first, rescored) == ["decision", "toxicity"]
    report = ChaosReport()
    raw = {k: [json.dumps(v).encode() for v in copies] for k, copies in
           {"a": [first, first, delivery_only], "b": [first | {"id": "b"}, rescored | {"id": "b"}]}.items()}
    compare_copies(raw, ["a", "b", "c"], report)
    assert (report.unique_ids, report.results, report.lost) == (2, 5, 1)
    assert (report.duplicates, report.duplicates_byte_identical, report.duplicates_differing) == (3, 1, 1)
    assert report.decisions_differing == 1 and report.differing_fields == {"decision": 1, "toxicity": 1}
    assert not report.ok
