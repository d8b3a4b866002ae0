"""The span evaluation's word-level F1 and its CONDA reader, on hand-made rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.spans import Utterance, _utterance, conda_validation, word_f1

pytestmark = pytest.mark.unit


def test_conda_rows_become_words_with_their_toxic_slots() -> None:
    u = _utterance("gg [SEPA] fuck u noob", "O SEPA T P T", "E")
    assert u.text == "gg | fuck u noob"
    assert [u.text[s:e] for s, e in u.words] == ["gg", "fuck", "u", "noob"]
    assert u.toxic == (False, True, False, True)
    assert _utterance("two words", "O", "O") is None  # slots that do not align are skipped


def test_word_f1_counts_a_word_hit_by_any_overlapping_span() -> None:
    u = Utterance("you fucking noob lol", ((0, 3), (4, 11), (12, 16), (17, 20)), (False, True, True, False), "E")
    spans = [[{"start": 4, "end": 9, "label": "toxic", "score": 0.9}, {"start": 17, "end": 20, "label": "toxic", "score": 0.5}]]
    got = word_f1([u], spans)
    assert (got["precision"], got["recall"], got["f1"]) == (0.5, 0.5, 0.5)
    assert word_f1([u], [[]])["f1"] == 0.0


def test_the_validation_split_is_a_seeded_tenth_of_each_intent(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "toxicity/conda").mkdir(parents=True)
    with open(root / "toxicity/conda/train.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Id", "matchId", "conversationId", "utterance", "chatTime", "playerSlot", "intentClass",
                    "slotClasses", "slotTokens"])
        for i in range(100):
            w.writerow([i, 0, 0, f"line {i}", 0, 0, "E" if i % 2 else "O", "O O", ""])
    val = conda_validation(root)
    assert len(val) == 10 and sum(u.intent == "E" for u in val) == 5
    assert [u.text for u in val] == [u.text for u in conda_validation(root)]  # deterministic
