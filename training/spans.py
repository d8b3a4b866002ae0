"""How well explanations point at toxic words: word-level F1 on CONDA's toxic-word slot (``T``).

CONDA (Dota 2 chat) labels every word of an utterance with a slot; ``T`` marks toxic words. The official
validation file is withheld, so a validation split is made from ``conda/train.csv`` (10%, stratified by
intent, seed 13), shaped like it: whole utterances, all intents, as chat arrives. Each utterance goes
through the served path (normalise, de-obfuscate, score, decide, spans mapped to the text as written), and
a word counts as predicted toxic when a span overlaps it. The score is F1 of the ``T`` class over words.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.normalise import normalise_text
from pipeline.decisions import build_result
from pipeline.schemas import ChatMessage
from training.data import _rows, require_data_root

SEPARATOR = "[SEPA]"  # CONDA joins a player's consecutive lines with it
_SLOT_TOKEN = re.compile(r"(\S+) \((\w+)\), ")


@dataclass(frozen=True)
class Utterance:
    text: str  # the lines as a player typed them, joined by " | "
    words: tuple[tuple[int, int], ...]  # character ranges of the labeled words in ``text``
    toxic: tuple[bool, ...]  # CONDA's T slot per word
    intent: str


def _utterance(raw: str, slots: str, intent: str) -> Utterance | None:
    tokens = raw.split()
    classes = slots.split()
    if len(tokens) != len(classes):  # a few rows' slot strings do not align with their text: skipped
        return None
    parts, words, toxic, pos = [], [], [], 0
    for token, cls in zip(tokens, classes):
        if token == SEPARATOR:
            parts.append("|")
            pos += 2
            continue
        words.append((pos, pos + len(token)))
        toxic.append(cls == "T")
        parts.append(token)
        pos += len(token) + 1
    text = " ".join(parts)
    return Utterance(text, tuple(words), tuple(toxic), intent) if words else None


def conda_validation(root: Path | None, fraction: float = 0.1, seed: int = 13) -> list[Utterance]:
    """The validation split of CONDA's train file, with its word labels: ``fraction`` of each intent's rows,
    chosen by a seeded shuffle."""
    root = require_data_root(root)
    by_intent: dict[str, list[dict[str, str]]] = {}
    for row in _rows(root / "toxicity/conda/train.csv"):
        by_intent.setdefault(row["intentClass"], []).append(row)
    out = []
    for intent in sorted(by_intent):
        rows = by_intent[intent]
        order = list(range(len(rows)))
        random.Random(f"{seed}:{intent}").shuffle(order)
        for i in sorted(order[: round(len(rows) * fraction)]):
            u = _utterance(rows[i]["utterance"], rows[i]["slotClasses"], intent)
            if u is not None:
                out.append(u)
    return out


def word_f1(utterances: Sequence[Utterance], spans: Sequence[Sequence[dict]]) -> dict[str, float]:
    """Precision, recall and F1 of the toxic words, a word predicted toxic when a span overlaps it."""
    tp = fp = fn = 0
    for u, found in zip(utterances, spans, strict=True):
        for (start, end), gold in zip(u.words, u.toxic):
            hit = any(s["start"] < end and start < s["end"] for s in found)
            tp += hit and gold
            fp += hit and not gold
            fn += gold and not hit
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "toxic_words": tp + fn, "words": sum(len(u.words) for u in utterances)}


def evaluate_spans(serving_for_method: Callable[[str], object], utterances: Sequence[Utterance],
                   methods: Sequence[str] = ("lexicon", "occlusion", "hybrid"), batch: int = 64,
                   progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
    """Word-level F1 and cost per span method, the same utterances through the served path; ``off`` is
    measured too, as the cost baseline (seconds for the whole split, and the ratio to ``off``). ``explained``:
    the share of flagged results with at least one span (a moderator's question: does it say why?)."""
    report: dict[str, dict] = {}
    texts = [u.text for u in utterances]
    normalised = [normalise_text(t, 2000) for t in texts]
    serving_for_method("off").predict(normalised[:batch])  # warm-up: the first timed method pays no start-up
    for method in ("off", *methods):
        serving = serving_for_method(method)
        found: list[list[dict]] = []
        flagged = explained = 0
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            chunk = slice(i, i + batch)
            for text, norm, scores in zip(texts[chunk], normalised[chunk], serving.predict(normalised[chunk])):
                result = build_result(ChatMessage(id="conda", text=text), scores, serving.policy, serving.refs,
                                      False, 0.0, norm)
                found.append(result.spans)
                flagged += result.decision != "allow"
                explained += result.decision != "allow" and bool(result.spans)
            if progress:
                progress(method, min(i + batch, len(texts)), len(texts))
        seconds = time.perf_counter() - started
        report[method] = {"seconds": round(seconds, 2), "flagged": flagged, "utterances": len(texts)}
        if method != "off":  # explained: the share of flagged results that point at a word at all
            report[method].update(word_f1(utterances, found), explained=round(explained / max(1, flagged), 4))
    for method in methods:
        report[method]["cost_vs_off"] = round(report[method]["seconds"] / max(report["off"]["seconds"], 1e-9), 3)
    return report
