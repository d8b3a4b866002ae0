"""De-obfuscation undoes the usual spelling tricks, never rewrites ordinary words into insults, and a result
says when it changed the decision."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from models.deobfuscate import deobfuscate
from pipeline.decisions import EVASION_FLAG, RAW_TOXICITY, SPANS, decide
from pipeline.policy import Policy
from pipeline.serving import serving_for
from pipeline.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.parametrize(("written", "read"), [
    ("k y s", "kill yourself"),  # spaced letters, then the abbreviation spelled out
    ("you should k y s", "you should kill yourself"),
    ("i d i o t", "idiot"),
    ("f.u.c.k you", "fuck you"),
    ("what the f u c k y o u", "what the fuck you"),
    ("u r a l o s e r", "u r a loser"),
    ("s-h-i-t", "shit"),
    ("1d10t", "idiot"),  # leet digits
    ("b!tch please", "bitch please"),  # symbols for letters
    ("a$$hole", "asshole"),
    ("$h1t game", "shit game"),
    ("f*ck off", "fuck off"),  # a starred letter
    ("b**ch", "bitch"),
    ("fuuuuuck", "fuck"),  # stretched letters
    ("LETS GOOOO", "LETS go"),
    ("іdіоt", "idiot"),  # Cyrillic і and о
    ("уоu are stupid", "you are stupid"),
    ("r3t4rd", "retard"),
    ("STFU noob", "shut the fuck up noob"),
    ("sh!t!", "shit!"),
])
def test_tricks_are_undone(written: str, read: str) -> None:
    assert deobfuscate(written).text == read


@pytest.mark.parametrize("text", [
    "Scunthorpe United won 3-1", "assessment of Sky sources", "the cockpit of a Dickens novel",
    "grass is greener in Essex", "shiitake", "therapist", "class assignment", "pass the ball",
    "1v1 me", "gr8 game", "gg wp", "o7", "b4 the raid", "2k mmr", "60000k", "3rd place", "h2o", "mp3 player",
    "covid19", "e-mail me", "co-op campaign", "is...a", "#woke", "@USER thanks", "any% run", "100%",
    "Привет, как дела", "καλημέρα", "good morning", "kill the dragon first", "I murdered them in ranked",
])
def test_ordinary_text_is_never_rewritten(text: str) -> None:
    assert deobfuscate(text).text == text


def test_rewrites_point_at_the_original_characters() -> None:
    text = "ok you 1d10t, k y s"
    result = deobfuscate(text)
    assert [(text[r.start:r.end], r.replacement) for r in result.rewrites] == [
        ("1d10t", "idiot"), ("k y s", "kill yourself")]


def test_the_sample_chat_keeps_its_words() -> None:
    """Real chat: the only rewrites are the stretched cheer, the abbreviation and the demo's one spaced-out
    word (for its term list), never a new insult."""
    lines = (ROOT / "pipeline" / "data" / "sample_chat.txt").read_text(encoding="utf-8").splitlines()
    rewrites = {(r.original, r.replacement) for line in lines for r in deobfuscate(line.split("\t")[-1]).rewrites}
    assert rewrites == {("GOOOO", "go"), ("stfu", "shut the fuck up"), ("i n s t a l l", "install")}


@pytest.mark.skipif(not (DATA / "toxicity" / "conda" / "train.csv").is_file(),
                    reason="needs ../shared/data (CONDA game chat)")
def test_benign_game_chat_rarely_changes_and_never_gains_a_slur() -> None:
    import csv

    from models.deobfuscate import _lexicon

    offensive, _ = _lexicon()
    with open(DATA / "toxicity" / "conda" / "train.csv", encoding="utf-8") as fh:
        benign = [row["utterance"] for row in csv.DictReader(fh) if row["intentClass"] == "O"]
    changed = 0
    for text in benign:
        result = deobfuscate(text)
        changed += result.changed
        for r in result.rewrites:  # a term may appear only where the writer spelled it, disguised
            gained = set(r.replacement.split()) & offensive - {"the", "up", "out"}
            assert not gained or r.original.lower().strip(".!?") != r.replacement, (text, r)
    assert changed / len(benign) < 0.03, f"{changed} of {len(benign)} benign lines rewritten"


def test_decide_flags_evasion_only_when_the_trick_changed_the_decision() -> None:
    labels = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
    policy = Policy(labels=labels, review=dict.fromkeys(labels, 0.5), block=dict.fromkeys(labels, 0.9))
    low, high = dict.fromkeys(labels, 0.1), dict.fromkeys(labels, 0.1) | {"insult": 0.95}
    assert decide({"toxicity": high, RAW_TOXICITY: low}, policy) == ("block", ["insult", EVASION_FLAG])
    assert decide({"toxicity": high, RAW_TOXICITY: high}, policy) == ("block", ["insult"])
    assert decide({"toxicity": high}, policy) == ("block", ["insult"])
    assert decide({"toxicity": low}, policy) == ("allow", [])


def test_serving_reads_the_deobfuscated_text_and_keeps_the_written_one(tiny_artifact: Path) -> None:
    settings = Settings(models={"threads": 1})
    on = serving_for({"toxicity": tiny_artifact, "sentiment": tiny_artifact}, settings)
    off = serving_for({"toxicity": tiny_artifact, "sentiment": tiny_artifact},
                      Settings(models={"threads": 1, "deobfuscate": False}))
    assert on.normaliser == "deobfuscate@1+spans@1:lexicon" and off.normaliser == "none+spans@1:lexicon"
    assert replace(off, explain="off").normaliser == "none"  # what rewrote the text, and how spans are found
    texts = ["you 1d10t", "you idiot", "hello there"]
    scored, plain = on.predict(texts), off.predict(texts)
    assert scored[0]["toxicity"] == plain[1]["toxicity"], "the model read 'you idiot'"
    assert scored[0][RAW_TOXICITY] == plain[0]["toxicity"], "and the text as written, for the evasion flag"
    assert RAW_TOXICITY not in scored[1] and RAW_TOXICITY not in scored[2]
    assert scored[2] == plain[2]
    assert [s[:2] for s in scored[0][SPANS]] == [[4, 9]], "'1d10t' is the span, over the text given"
