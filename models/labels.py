"""The label contract the pipeline, the models and their users rely on.

toxicity: multi-label (one sigmoid per label), Jigsaw/Detoxify-style categories, then *signals*.
sentiment: single-label (softmax over three classes).

The contract grows additively: labels are only ever appended, so a model trained before a label existed
scores a prefix of today's labels (at least ``BASE_TOXICITY_LABELS``) and stays loadable. A *signal*
describes a text without deciding anything by itself: ``targeted`` (OLID subtask B: the offence is aimed at
a person or group, rather than untargeted profanity) is reported with the scores for policies to use, and
never flags or blocks a message on its own.
"""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    TOXICITY = "toxicity"
    SENTIMENT = "sentiment"


class ProblemType(StrEnum):
    MULTI_LABEL = "multi_label"  # independent sigmoids, thresholds per label
    SINGLE_LABEL = "single_label"  # softmax, argmax is the class


BASE_TOXICITY_LABELS: tuple[str, ...] = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
TOXICITY_SIGNALS: tuple[str, ...] = ("targeted",)
TOXICITY_LABELS: tuple[str, ...] = (*BASE_TOXICITY_LABELS, *TOXICITY_SIGNALS)
DECIDING_LABELS: tuple[str, ...] = tuple(label for label in TOXICITY_LABELS if label not in TOXICITY_SIGNALS)
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

TASK_LABELS: dict[Task, tuple[str, ...]] = {
    Task.TOXICITY: TOXICITY_LABELS,
    Task.SENTIMENT: SENTIMENT_LABELS,
}
TASK_PROBLEM: dict[Task, ProblemType] = {
    Task.TOXICITY: ProblemType.MULTI_LABEL,
    Task.SENTIMENT: ProblemType.SINGLE_LABEL,
}


def accepted_labels(task: Task, labels: list[str] | tuple[str, ...]) -> bool:
    """Whether a model's labels for ``task`` honour the contract: all of today's labels, or (a model trained
    before labels were appended) a prefix of them that holds at least the base labels."""
    contract = TASK_LABELS[task]
    base = BASE_TOXICITY_LABELS if task == Task.TOXICITY else contract
    return len(base) <= len(labels) <= len(contract) and tuple(labels) == contract[: len(labels)]

