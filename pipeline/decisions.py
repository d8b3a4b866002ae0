"""One text's scores to its decision and result: the policy's decision with the evasion flag, reason codes,
the profile's rules, the result record, and the shadow model's agreement. Pure functions, no I/O: the
worker (``pipeline.moderation``), ``chatmod classify``, replay and the functional suite share them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from models.explain import to_original
from models.labels import DECIDING_LABELS, Task
from pipeline.enforcement import Outcome
from pipeline.policy import Policy
from pipeline.profiles import CompiledProfile, Verdict
from pipeline.schemas import ChatMessage, ModerationResult

EVASION_FLAG = "evasion"
RAW_TOXICITY = "raw_toxicity"  # in a scores dict: toxicity of the text as written, when de-obfuscation changed it
SPANS = "spans"  # in a scores dict: [start, end, label, score] over the normalised text (models/explain.py)
TASKS = frozenset(t.value for t in Task)


@dataclass
class ShadowStats:
    """The shadow model beside the serving one on this batch's classified texts."""

    compared: int = 0
    agreements: dict[str, int] = field(default_factory=dict)  # task -> texts where both decide the same
    drift: dict[str, list[float]] = field(default_factory=dict)  # task -> mean |p_shadow - p_serving| per text


def compare_shadow(serving: list[dict], shadow: list[dict], policy: Policy, shadow_policy: Policy) -> ShadowStats:
    """Toxicity: the same decision (each model under its own thresholds); sentiment: the same class."""
    stats = ShadowStats(compared=len(serving))
    for main, other in zip(serving, shadow, strict=True):
        for task, scores in other.items():
            if task not in main or task not in TASKS:
                continue
            if task == Task.TOXICITY.value:
                same = policy.decide(main[task])[0] == shadow_policy.decide(scores)[0]
            else:
                same = max(main[task], key=main[task].get) == max(scores, key=scores.get)
            stats.agreements[task] = stats.agreements.get(task, 0) + int(same)
            drift = sum(abs(scores[k] - main[task][k]) for k in scores) / max(1, len(scores))
            stats.drift.setdefault(task, []).append(drift)
    return stats


def with_text(result: bytes, text: str) -> bytes:
    """A serialised result with the message's ``text`` appended: the flagged topic's record."""
    return result[:-1] + b',"text":' + json.dumps(text, ensure_ascii=False).encode() + b"}"


def decide(scores: dict[str, dict[str, float]], policy: Policy) -> tuple[str, list[str]]:
    """``(decision, flags)`` from one text's scores: the policy's decision on the toxicity scores (of the
    de-obfuscated text), plus the flag ``evasion`` when the text as written would have been decided
    otherwise."""
    tox = scores.get(Task.TOXICITY.value, {})
    decision, flags = policy.decide(tox) if tox else ("allow", [])
    as_written = scores.get(RAW_TOXICITY)
    if as_written is not None and policy.decide(as_written)[0] != decision:
        flags = [*flags, EVASION_FLAG]  # de-obfuscation changed the decision: the writer disguised it
    return decision, flags


def reasons(decision: str, flags: list[str], tox: dict[str, float], targeted_at: float = 0.5) -> list[str]:
    """Stable, machine-readable reason codes for a decision (documented in the README's wire contract):
    ``label:<label>`` per flagged label, ``severity:high`` (block) or ``severity:medium`` (review),
    ``target:group`` (identity hate) or ``target:individual`` (the ``targeted`` signal at or over its
    calibrated threshold, ``targeted_at``), and
    ``evasion``. An allowed message has none."""
    if decision == "allow":
        return []
    out = [f"label:{flag}" for flag in flags if flag in DECIDING_LABELS]
    out.append("severity:high" if decision == "block" else "severity:medium")
    if "identity_hate" in flags:
        out.append("target:group")
    elif tox.get("targeted", 0.0) >= targeted_at:
        out.append("target:individual")
    if EVASION_FLAG in flags:
        out.append(EVASION_FLAG)
    return out


def judge(scores: dict, policy: Policy, profile: CompiledProfile | None = None, text: str = "") -> Verdict:
    """The decision on one text: the policy's (or the profile's thresholds'), then the profile's rules
    (``pipeline/profiles.py``) on ``text``, the normalised message."""
    decision, flags = decide(scores, profile.policy if profile is not None else policy)
    if profile is None:
        return Verdict(decision, flags)
    return profile.decide(decision, flags, scores.get(Task.TOXICITY.value, {}), text)


def build_result(message: ChatMessage, scores: dict, policy: Policy, refs: dict[str, str], cached: bool,
                 latency_ms: float, normalised: str | None = None, profile: CompiledProfile | None = None,
                 verdict: Verdict | None = None, outcome: Outcome | None = None) -> ModerationResult:
    """The result for one message from its scores: the verdict (:func:`judge`, unless given), then what the
    user's ledger and the channel's windows add (``outcome``, ``pipeline/enforcement.py``). ``normalised``:
    the text the scores were computed for, to map their spans onto the message as written."""
    text = normalised if normalised is not None else message.text
    verdict = verdict or judge(scores, policy, profile, text)
    decision, flags, extra, actions = verdict.decision, verdict.flags, list(verdict.reasons), []
    if outcome is not None:
        decision, flags, extra, actions = outcome.apply(decision, flags, extra)
    tox = scores.get(Task.TOXICITY.value, {})
    codes = [*reasons(decision, flags, tox, policy.signals.get("targeted", 0.5)), *extra]
    if profile is not None and codes:
        codes.append(f"profile:{profile.ref}")
    return ModerationResult(id=message.id, channel=message.channel, user=message.user, decision=decision,
                            toxicity=tox, sentiment=scores.get(Task.SENTIMENT.value, {}),
                            flags=flags, models=refs, cached=cached, latency_ms=latency_ms,
                            spans=to_original(scores.get(SPANS) or [], message.text, text), reasons=codes,
                            profile=profile.ref if profile is not None else None, actions=actions)
