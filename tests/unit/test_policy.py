"""Decisions from scores, and where each threshold comes from."""

from __future__ import annotations

import pytest

from models.artifact import Head
from models.labels import SENTIMENT_LABELS, TOXICITY_LABELS, ProblemType, Task
from pipeline.policy import Policy
from pipeline.settings import PolicySettings

pytestmark = pytest.mark.unit


def _head(thresholds=None, block_thresholds=None) -> Head:
    return Head(task=Task.TOXICITY, labels=list(TOXICITY_LABELS), problem_type=ProblemType.MULTI_LABEL,
                thresholds=thresholds or {}, block_thresholds=block_thresholds or {})


def _scores(**given: float) -> dict[str, float]:
    return {label: given.get(label, 0.01) for label in TOXICITY_LABELS}


def test_clean_text_is_allowed():
    policy = Policy.from_heads(_head(), PolicySettings())
    assert policy.decide(_scores()) == ("allow", [])


def test_review_and_block_at_or_over_thresholds():
    policy = Policy.from_heads(_head(), PolicySettings())  # defaults 0.5 / 0.9
    assert policy.decide(_scores(insult=0.5)) == ("review", ["insult"])
    assert policy.decide(_scores(insult=0.6, toxic=0.7)) == ("review", ["toxic", "insult"])  # label order
    assert policy.decide(_scores(threat=0.9)) == ("block", ["threat"])
    assert policy.decide(_scores(toxic=0.6, threat=0.95)) == ("block", ["toxic", "threat"])


def test_precedence_override_then_manifest_then_default():
    head = _head(thresholds={"insult": 0.6, "threat": 0.3}, block_thresholds={"insult": 0.8})
    settings = PolicySettings(thresholds={"insult": 0.7}, block_thresholds={"threat": 0.5})
    policy = Policy.from_heads(head, settings)
    assert policy.review["insult"] == 0.7  # override beats manifest
    assert policy.review["threat"] == 0.3  # manifest beats default
    assert policy.review["toxic"] == 0.5  # default
    assert policy.block["insult"] == 0.8 and policy.block["threat"] == 0.5 and policy.block["toxic"] == 0.9
    assert policy.decide(_scores(insult=0.65)) == ("allow", [])
    assert policy.decide(_scores(threat=0.55)) == ("block", ["threat"])


def test_block_threshold_is_raised_to_review_threshold():
    policy = Policy.from_heads(_head(), PolicySettings(thresholds={"obscene": 0.95}))
    assert policy.block["obscene"] == 0.95
    assert policy.decide(_scores(obscene=0.92)) == ("allow", [])


def test_explicit_block_below_review_is_an_error():
    with pytest.raises(ValueError, match="below its review threshold"):
        settings = PolicySettings(thresholds={"insult": 0.8}, block_thresholds={"insult": 0.6})
        Policy.from_heads(_head(), settings)


def test_unknown_override_label_names_valid_labels():
    settings = PolicySettings.model_construct(thresholds={"rude": 0.5}, block_thresholds={},
                                              default_threshold=0.5, default_block_threshold=0.9)
    with pytest.raises(ValueError, match=r"unknown labels \['rude'\]; valid labels are \['toxic'"):
        Policy.from_heads(_head(), settings)


def test_out_of_range_threshold_refused():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        Policy(labels=("toxic",), review={"toxic": 1.2}, block={"toxic": 1.2})


def test_needs_the_toxicity_head():
    sentiment = Head(task=Task.SENTIMENT, labels=list(SENTIMENT_LABELS),
                     problem_type=ProblemType.SINGLE_LABEL)
    with pytest.raises(ValueError, match="toxicity head"):
        Policy.from_heads(sentiment, PolicySettings())


def test_scores_must_cover_every_label():
    policy = Policy.from_heads(_head(), PolicySettings())
    with pytest.raises(ValueError, match="lack labels"):
        policy.decide({"toxic": 0.1})
    with pytest.raises(ValueError, match="broken"):
        policy.decide(_scores(toxic=float("nan")))
