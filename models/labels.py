"""The label contract the pipeline, the models and their users rely on.

toxicity: multi-label (one sigmoid per label), Jigsaw/Detoxify-style categories.
sentiment: single-label (softmax over three classes).
"""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    TOXICITY = "toxicity"
    SENTIMENT = "sentiment"


class ProblemType(StrEnum):
    MULTI_LABEL = "multi_label"  # independent sigmoids, thresholds per label
    SINGLE_LABEL = "single_label"  # softmax, argmax is the class


TOXICITY_LABELS: tuple[str, ...] = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

TASK_LABELS: dict[Task, tuple[str, ...]] = {
    Task.TOXICITY: TOXICITY_LABELS,
    Task.SENTIMENT: SENTIMENT_LABELS,
}
TASK_PROBLEM: dict[Task, ProblemType] = {
    Task.TOXICITY: ProblemType.MULTI_LABEL,
    Task.SENTIMENT: ProblemType.SINGLE_LABEL,
}


def parse_task(value: str) -> Task:
    """Task from its name, with an error that lists the valid ones."""
    try:
        return Task(value)
    except ValueError:
        raise ValueError(f"unknown task {value!r}; expected one of {[t.value for t in Task]}") from None
