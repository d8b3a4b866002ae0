"""Explanation spans point at the characters the writer typed, through every normalisation step."""

from __future__ import annotations

import pytest

from models.deobfuscate import Deobfuscated, deobfuscate
from models.explain import find_spans, lexicon_word, normalised_offsets, occlude, to_original
from models.normalise import normalise_text
from pipeline.decisions import reasons
from pipeline.schemas import ModerationResult

pytestmark = pytest.mark.unit

SCORES = {"toxicity": {"toxic": 0.97, "insult": 0.9, "threat": 0.01}}


def shown(original: str, flagged: bool = True) -> list[str]:
    """The substrings of ``original`` the served path would highlight (lexicon method)."""
    normalised = normalise_text(original, 500)
    spans = find_spans(deobfuscate(normalised), SCORES, flagged, "lexicon")
    return [original[s["start"]:s["end"]] for s in to_original(spans, original, normalised)]


@pytest.mark.parametrize(("original", "expected"), [
    ("ｙｏｕ ａｒｅ ａｎ ｉｄｉｏｔ", ["ｉｄｉｏｔ"]),  # full-width letters (NFKC)
    ("you are an id\u200biot", ["id\u200biot"]),  # a zero-width space inside the word
    ("you are an i d i o t lol", ["i d i o t"]),  # spaced letters: one span over all of them
    ("you are an i.d.i.o.t", ["i.d.i.o.t"]),  # dotted
    ("u r a 1d10t!!", ["1d10t"]),  # leet, trailing punctuation outside the span
    ("stuріd   bot", ["stuріd"]),  # Cyrillic look-alikes, whitespace runs collapsed
    ("\u00a0 gg  noobs,\tfuckin trash", ["noobs", "fuckin"]),  # inflections; "trash" needs a flag
    ("ﬁne, you m o r o n", ["m o r o n"]),  # a ligature before the span shifts every offset
    ("cafe\u0301 idiot", ["idiot"]),  # a combining accent composed by NFKC
])
def test_spans_map_back_through_every_normalisation_step(original: str, expected: list[str]) -> None:
    assert shown(original, flagged=False) == expected


def test_words_abusive_only_in_context_are_marked_only_in_flagged_texts() -> None:
    assert shown("kill the boss first", flagged=False) == []
    assert shown("i will kill you", flagged=True) == ["kill"]
    assert shown("Scunthorpe assessment at Sky sources", flagged=True) == []  # whole words only


def test_lexicon_entries_and_their_inflections() -> None:
    assert [lexicon_word(w) for w in ("noobs", "fuckin", "retards", "Idiots", "wtf")] == \
        ["noob", "fuck", "retard", "idiots", "wtf"]
    assert [lexicon_word(w) for w in ("assessment", "classic", "dickens", "shoots")] == [None, None, None, "shoot"]


def test_offsets_of_every_normalised_character() -> None:
    original = "  a\u200bb\u3000\u3000ｃ  "
    normalised = normalise_text(original, 100)
    assert normalised == "ab c"
    offsets = normalised_offsets(original, normalised)
    assert [original[s:e] for s, e in offsets] == ["a", "b", "\u3000", "ｃ"]
    assert to_original([(0, 4, "toxic", 0.9)], original, normalised) == [
        {"start": 2, "end": 8, "label": "toxic", "score": 0.9}]  # "a", the invisible, ..., "ｃ"


def test_occlusion_marks_the_words_whose_absence_lowers_the_score_most() -> None:
    calls: list[list[str]] = []

    def score(texts: list[str]) -> list[dict]:  # a scorer that reads "find" and "live" as the threat
        calls.append(texts)
        return [{"toxicity": {"threat": 0.1 + 0.4 * ("find" in t) + 0.4 * ("live" in t)}} for t in texts]

    text = "i will find where you live"
    found = occlude(text, "threat", {"threat": 0.9}, score)
    assert [text[s:e] for s, e, _ in found] == ["find", "live"]
    assert len(calls) == 1, "every variant is scored in one call"
    assert all("you" in t for t in calls[0]), "pronouns are never offered as the offending word"
    read = Deobfuscated(text, ())
    hybrid = find_spans(read, {"toxicity": {"threat": 0.9}}, True, "hybrid", score, "threat")
    assert [(text[s:e], label) for s, e, label, _ in hybrid] == [("find", "threat"), ("live", "threat")]
    assert find_spans(read, {"toxicity": {"threat": 0.9}}, False, "hybrid", score) == []  # allowed: no model call
    with pytest.raises(ValueError, match="span method"):
        find_spans(read, SCORES, True, "saliency")


def test_reason_codes() -> None:
    assert reasons("allow", [], {"toxic": 0.1}) == []
    assert reasons("block", ["toxic", "insult", "evasion"], {"targeted": 0.8}) == \
        ["label:toxic", "label:insult", "severity:high", "target:individual", "evasion"]
    assert reasons("review", ["identity_hate"], {"targeted": 0.9}) == \
        ["label:identity_hate", "severity:medium", "target:group"]


def test_results_validate_their_spans_and_stay_deterministic_bytes() -> None:
    base = dict(id="1", decision="block", toxicity={"toxic": 0.9}, sentiment={}, reasons=["severity:high"])
    result = ModerationResult(**base, spans=[{"start": 0, "end": 5, "label": "toxic", "score": 0.91234}])
    assert result.to_json_bytes() == ModerationResult.from_json_bytes(result.to_json_bytes()).to_json_bytes()
    assert b'"spans":[{"end":5,"label":"toxic","score":0.9123,"start":0}]' in result.to_json_bytes()
    with pytest.raises(ValueError, match="start < end"):
        ModerationResult(**base, spans=[{"start": 3, "end": 3, "label": "toxic", "score": 0.5}])
    assert ModerationResult.model_validate({k: v for k, v in base.items() if k != "reasons"}).spans == []  # additive
