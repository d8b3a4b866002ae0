"""chatmod's own functional test suite: behaviours a moderator expects, read as a moderator reads a decision.

The suite (``tests/functional/suite.json``, built from the team's templates by ``build_suite.py``) holds
behaviours such as "threats are flagged", "counter-speech is allowed", "leet spellings are caught", each
with at least 20 cases and one expectation: ``flag`` (review or block), ``allow``, or ``label:<name>``
(that toxicity label is flagged). A model is run exactly as the worker serves it: de-obfuscation, the
served runtime, the policy with the manifest's thresholds. ``chatmod train evaluate`` reports it per
behaviour in the model card, and the retraining gate refuses a candidate that regresses a behaviour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.artifact import read_manifest
from models.normalise import normalise_text
from pipeline.decisions import decide
from pipeline.settings import Settings

DEFAULT_SUITE = Path(__file__).resolve().parents[1] / "tests" / "functional" / "suite.json"
MAX_FAILURES_SHOWN = 5


@dataclass(frozen=True)
class Behaviour:
    name: str
    group: str
    expect: str  # "flag" | "allow" | "label:<toxicity label>"
    cases: tuple[str, ...]

    def passes(self, decision: str, flags: list[str]) -> bool:
        if self.expect == "flag":
            return decision != "allow"
        if self.expect == "allow":
            return decision == "allow"
        return self.expect.removeprefix("label:") in flags


def load_suite(path: Path = DEFAULT_SUITE) -> list[Behaviour]:
    """The behaviours of a suite file; ValueError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no functional suite at {path}; build it with tests/functional/build_suite.py")
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for raw in data.get("behaviours", []):
        beh = Behaviour(raw["name"], raw.get("group", ""), raw["expect"], tuple(raw["cases"]))
        if beh.expect not in ("flag", "allow") and not beh.expect.startswith("label:"):
            raise ValueError(f"{path}: behaviour {beh.name} expects {beh.expect!r}; use flag, allow or label:<name>")
        if not beh.cases:
            raise ValueError(f"{path}: behaviour {beh.name} has no cases")
        out.append(beh)
    if not out:
        raise ValueError(f"{path} holds no behaviours")
    return out


def _judged(serving, suite: list[Behaviour]) -> list[list[tuple[str, str, list[str], bool]]]:
    """Per behaviour, each case's (text, decision, flags, passed), decided as the worker decides."""
    texts = [normalise_text(case, 2000) for beh in suite for case in beh.cases]
    scores = iter(serving.predict(texts))
    out = []
    for beh in suite:
        rows = []
        for case in beh.cases:
            decision, flags = decide(next(scores), serving.policy)
            rows.append((case, decision, flags, beh.passes(decision, flags)))
        out.append(rows)
    return out


def run_suite(serving, suite: list[Behaviour]) -> dict:  # serving: pipeline.serving.Serving
    """Pass rate per behaviour and overall (the mean over behaviours, so each counts the same)."""
    behaviours = {}
    for beh, rows in zip(suite, _judged(serving, suite), strict=True):
        failures = [{"case": case, "decision": decision, "flags": flags}
                    for case, decision, flags, passed in rows if not passed][:MAX_FAILURES_SHOWN]
        passed = sum(row[3] for row in rows)
        behaviours[beh.name] = {"group": beh.group, "expect": beh.expect, "n": len(beh.cases),
                                "pass_rate": round(passed / len(beh.cases), 4), "failures": failures}
    rates = [b["pass_rate"] for b in behaviours.values()]
    worst = min(behaviours, key=lambda name: behaviours[name]["pass_rate"])
    return {"overall": round(sum(rates) / len(rates), 4), "worst": {"name": worst, "pass_rate": behaviours[worst]["pass_rate"]},
            "cases": sum(b["n"] for b in behaviours.values()), "behaviours": behaviours}


def _serving(folder: Path, threads: int | None):
    from pipeline.serving import serving_for

    manifest = read_manifest(Path(folder))
    return serving_for(dict.fromkeys(manifest.tasks, Path(folder)), Settings(models={"threads": threads}))


def case_passes(folder: Path, suite_path: Path = DEFAULT_SUITE, threads: int | None = None) -> dict[str, list[bool]]:
    """Whether each case of each behaviour passes, for an artifact served as the worker serves it (for a
    paired comparison of two models case by case)."""
    suite = load_suite(suite_path)
    judged = _judged(_serving(folder, threads), suite)
    return {beh.name: [row[3] for row in rows] for beh, rows in zip(suite, judged, strict=True)}


def evaluate_artifact(folder: Path, suite_path: Path = DEFAULT_SUITE, threads: int | None = None) -> dict:
    """The functional report of an artifact, served as the worker serves it (default settings)."""
    return run_suite(_serving(folder, threads), load_suite(suite_path))


def evaluate_if_available(folder: Path, tasks, threads: int | None = None) -> dict | None:
    """The functional report of an artifact that serves toxicity, when the suite file is there; else None."""
    if "toxicity" not in [str(t) for t in tasks] or not DEFAULT_SUITE.is_file():
        return None
    return evaluate_artifact(folder, threads=threads)


def regressions(current: dict, candidate: dict, tolerance: float = 0.05) -> list[str]:
    """Behaviours the candidate passes less often than the current model by more than ``tolerance``."""
    out = []
    for name, cur in current.get("behaviours", {}).items():
        cand = candidate.get("behaviours", {}).get(name)
        if cand is not None and cand["pass_rate"] < cur["pass_rate"] - tolerance:
            out.append(f"functional {name}: {cand['pass_rate']:.2f} < {cur['pass_rate']:.2f} - {tolerance}")
    return out


def render(report: dict) -> str:
    """A plain table: behaviour, expectation, pass rate."""
    lines = [f"functional suite: {report['overall']:.1%} over {len(report['behaviours'])} behaviours "
             f"({report['cases']} cases); worst {report['worst']['name']} {report['worst']['pass_rate']:.0%}"]
    for name, beh in sorted(report["behaviours"].items(), key=lambda kv: (kv[1]["group"], kv[0])):
        lines.append(f"  {beh['group']:10s} {name:26s} {beh['expect']:20s} {beh['pass_rate']:6.1%}")
    return "\n".join(lines)
