"""Toxicity scores -> allow / review / block, with a review and a block threshold per label.

Thresholds come, in order of precedence, from the operator (``settings.policy``), from the model
manifest (calibrated at training time, ``Head.thresholds`` / ``Head.block_thresholds``), then from the
policy defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from models.artifact import Head
from models.labels import TOXICITY_SIGNALS, ProblemType, Task
from pipeline.schemas import Decision
from pipeline.settings import PolicySettings


def _check_table(name: str, table: Mapping[str, float], labels: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(labels))
    if unknown:
        raise ValueError(f"{name}: unknown labels {unknown}; valid labels are {list(labels)}")
    bad = {k: v for k, v in table.items() if not (isinstance(v, int | float) and 0.0 <= v <= 1.0)}
    if bad:
        raise ValueError(f"{name}: thresholds must lie in [0, 1], got {bad}")


@dataclass(frozen=True)
class Policy:
    """Per-label thresholds over the toxicity labels that decide (not the signals), in the model's order."""

    labels: tuple[str, ...]
    review: Mapping[str, float]
    block: Mapping[str, float]
    # the signals' calibrated thresholds (``targeted``: at or over it, the offence is aimed at someone)
    signals: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, table in (("review thresholds", self.review), ("block thresholds", self.block)):
            _check_table(name, table, self.labels)
            missing = [label for label in self.labels if label not in table]
            if missing:
                raise ValueError(f"{name}: no threshold for {missing}")
        below = {k: (self.block[k], self.review[k]) for k in self.labels if self.block[k] < self.review[k]}
        if below:
            raise ValueError(f"block thresholds below their review thresholds (block, review): {below}")

    @classmethod
    def from_heads(cls, toxicity_head: Head, settings: PolicySettings) -> Policy:
        """Combine the manifest's toxicity head with operator overrides.

        review = override > head.thresholds > default_threshold;
        block = override > head.block_thresholds > default_block_threshold, raised to the review
        threshold when it would fall below it. An explicit block override below the review
        threshold is a configuration error, not something to fix silently.
        """
        if toxicity_head.task != Task.TOXICITY or toxicity_head.problem_type != ProblemType.MULTI_LABEL:
            raise ValueError(
                "policy needs the multi-label toxicity head, "
                f"got {toxicity_head.task} ({toxicity_head.problem_type})"
            )
        labels = tuple(label for label in toxicity_head.labels if label not in TOXICITY_SIGNALS)  # signals decide nothing
        _check_table("CHATMOD_POLICY_THRESHOLDS", settings.thresholds, labels)
        _check_table("CHATMOD_POLICY_BLOCK_THRESHOLDS", settings.block_thresholds, labels)
        review: dict[str, float] = {}
        block: dict[str, float] = {}
        for label in labels:
            review[label] = settings.thresholds.get(
                label, toxicity_head.thresholds.get(label, settings.default_threshold)
            )
            if label in settings.block_thresholds:
                block[label] = settings.block_thresholds[label]
                if block[label] < review[label]:
                    raise ValueError(
                        f"CHATMOD_POLICY_BLOCK_THRESHOLDS sets {label} to {block[label]}, below its review "
                        f"threshold {review[label]}; a message must be flagged before it can be blocked"
                    )
            else:
                shipped = toxicity_head.block_thresholds.get(label, settings.default_block_threshold)
                block[label] = max(shipped, review[label])
        signals = {label: toxicity_head.thresholds.get(label, 0.5)
                   for label in toxicity_head.labels if label in TOXICITY_SIGNALS}
        return cls(labels=labels, review=review, block=block, signals=signals)

    def decide(self, toxicity_scores: Mapping[str, float]) -> tuple[Decision, list[str]]:
        """``(decision, flags)``: flags are the labels at or over their review threshold, in label order;
        block if any label reaches its block threshold, review if anything is flagged, else allow."""
        missing = [label for label in self.labels if label not in toxicity_scores]
        if missing:
            raise ValueError(
                f"toxicity scores lack labels {missing}; the model must score {list(self.labels)}"
            )
        flags: list[str] = []
        blocked = False
        for label in self.labels:
            score = toxicity_scores[label]
            if not math.isfinite(score):
                raise ValueError(f"toxicity score for {label} is {score}; the model output is broken")
            if score >= self.review[label]:
                flags.append(label)
                blocked = blocked or score >= self.block[label]
        if blocked:
            return "block", flags
        return ("review" if flags else "allow"), flags
