"""The project's functional suite: well-formed, held out from the training templates, run as a moderator
reads a decision, and able to refuse a candidate that regresses a behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.augment import counterfactual, misspelt, templated
from training.data import TOX, Example, tox
from training.functional import DEFAULT_SUITE, Behaviour, load_suite, regressions, run_suite
from training.retrain import gate

pytestmark = pytest.mark.unit


def test_the_suite_has_25_behaviours_of_20_distinct_cases_with_valid_expectations() -> None:
    suite = load_suite(DEFAULT_SUITE)
    assert len(suite) >= 25
    for beh in suite:
        assert len(set(beh.cases)) >= 20 and len(set(beh.cases)) == len(beh.cases), beh.name
        assert beh.expect in ("flag", "allow") or beh.expect in {f"label:{k}" for k in TOX}, beh.expect
    assert {b.group for b in suite} >= {"threats", "hate", "evasion", "fairness"}


def test_no_suite_case_is_trained_on() -> None:
    """The suite measures generalisation: none of its cases is among the training templates."""
    cases = {case.lower() for beh in load_suite(DEFAULT_SUITE) for case in beh.cases}
    trained = {ex.text.lower() for ex in templated(seed=13, per_kind=10_000)}
    assert not cases & trained, sorted(cases & trained)[:5]


def test_behaviours_read_decisions_as_a_moderator_does() -> None:
    flag, allow, label = (Behaviour("a", "g", e, ("x",)) for e in ("flag", "allow", "label:threat"))
    assert flag.passes("review", ["insult"]) and flag.passes("block", []) and not flag.passes("allow", [])
    assert allow.passes("allow", []) and not allow.passes("review", ["toxic"])
    assert label.passes("block", ["toxic", "threat"]) and not label.passes("block", ["toxic"])


def test_the_suite_runs_on_a_served_model(tiny_artifact: Path, tmp_path: Path) -> None:
    from pipeline.serving import serving_for
    from pipeline.settings import Settings

    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({"behaviours": [
        {"name": "threats", "group": "threats", "expect": "flag", "cases": ["i will find you", "k y s"]},
        {"name": "greetings", "group": "everyday", "expect": "allow", "cases": ["hi", "gg wp", "hello"]}]}))
    serving = serving_for({"toxicity": tiny_artifact, "sentiment": tiny_artifact}, Settings(models={"threads": 1}))
    report = run_suite(serving, load_suite(suite_file))
    assert set(report["behaviours"]) == {"threats", "greetings"} and report["cases"] == 5
    rates = [b["pass_rate"] for b in report["behaviours"].values()]
    assert all(0.0 <= r <= 1.0 for r in rates) and report["overall"] == round(sum(rates) / 2, 4)


def test_a_regressed_behaviour_fails_the_retraining_gate() -> None:
    current = {"fixed": {"olid_macro_f1": 0.75}, "feedback_slice_accuracy": 0.5,
               "functional": {"behaviours": {"threats": {"pass_rate": 0.8}, "greetings": {"pass_rate": 0.9}}}}
    better_elsewhere = {"fixed": {"olid_macro_f1": 0.76}, "feedback_slice_accuracy": 0.9,
                        "functional": {"behaviours": {"threats": {"pass_rate": 0.6}, "greetings": {"pass_rate": 1.0}}}}
    passed, reasons = gate(better_elsewhere, current, tolerance=0.01, functional_tolerance=0.05)
    assert not passed and reasons == ["functional threats: 0.60 < 0.80 - 0.05"]
    assert gate(better_elsewhere, current, tolerance=0.01, functional_tolerance=None)[0]
    assert regressions(current["functional"], current["functional"]) == []


def test_augmentation_labels_threats_hate_and_the_benign_texts_that_look_like_them() -> None:
    examples = templated(seed=13)
    threats = [e for e in examples if e.toxicity == tox(toxic=1, threat=1, identity_hate=0)]
    hate = [e for e in examples if e.toxicity == tox(toxic=1, identity_hate=1, threat=0)]
    assert all(e.toxicity[TOX["targeted"]] == 1 for e in threats + hate)  # aimed at someone by definition
    untargeted = [e for e in examples if e.toxicity is not None and e.toxicity[TOX["targeted"]] == 0
                  and e.toxicity[TOX["toxic"]] == 1]
    assert untargeted and any("fuck" in e.text for e in untargeted)  # profanity at no one
    benign = [e for e in examples if e.toxicity is not None and set(e.toxicity) == {0}]
    assert len(threats) >= 300 and len(hate) >= 300 and len(benign) >= 1500
    assert any("kill the boss" in e.text for e in benign) and any("you" in e.text for e in threats)


def test_counterfactual_swaps_keep_labels_and_misspellings_are_one_edit() -> None:
    base = [Example("muslims are welcome here", "x", toxicity=tox(toxic=0)),
            Example("you are an idiot", "x", toxicity=tox(toxic=1, insult=1))]
    (swapped,) = counterfactual(base, seed=1)
    assert swapped.toxicity == base[0].toxicity and "muslims" not in swapped.text and "welcome here" in swapped.text
    (typo,) = misspelt(base, seed=1)
    assert typo.toxicity == base[1].toxicity and typo.text != base[1].text
    word = typo.text.split()[-1]
    assert abs(len(word) - len("idiot")) <= 1 and word[0] == "i"
