"""Readers map every data set onto the label contract, and splits are deterministic and leak-free.

Synthetic files are laid out like ../shared/data (same paths, same columns); the last tests read the
real folder and skip where it is absent.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from models.labels import BASE_TOXICITY_LABELS, TOXICITY_LABELS
from training.data import (
    CLEAN,
    NOT_ANNOTATED,
    SENT,
    SOURCES,
    TOX,
    Example,
    default_data_root,
    load_splits,
    read_conda,
    read_convabuse,
    read_davidson,
    read_hateval,
    read_kaggle_insults,
    read_olid,
    read_semeval,
    read_sst2,
    stratified_split,
    text_digest,
    tox,
)

pytestmark = pytest.mark.unit

M = NOT_ANNOTATED


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def _convabuse_header() -> list[str]:
    cols = ["example_id", "conv_id", "prev_agent", "prev_user", "agent", "user", "bot"]
    for a in range(1, 4):
        cols += [f"Annotator{a}_is_abuse.{s}" for s in ("1", "0", "-1", "-2", "-3")]
        cols += [f"Annotator{a}_{k}" for k in ("ableist", "homophobic", "intellectual", "racist", "sexist",
                                               "sex_harassment", "transphobic", "target.generalised",
                                               "target.individual", "target.system", "explicit", "implicit")]
    return cols


def _convabuse_row(text: str, votes: list[tuple[str, set[str]]]) -> dict[str, str]:
    row = {c: "" for c in _convabuse_header()}
    row.update(example_id="1", conv_id="1", agent="hi", user=text, bot="E.L.I.Z.A.")
    for a, (severity, flags) in enumerate(votes, start=1):
        for s in ("1", "0", "-1", "-2", "-3"):
            row[f"Annotator{a}_is_abuse.{s}"] = "1" if s == severity else "0"
        for k in ("ableist", "homophobic", "intellectual", "racist", "sexist", "sex_harassment",
                  "transphobic", "target.generalised", "target.individual", "target.system"):
            row[f"Annotator{a}_{k}"] = "1" if k in flags else "0"
    return row


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write_csv(root / "toxicity/olid/train.tsv", ["id", "tweet", "subtask_a", "subtask_b", "subtask_c"], [
        [1, "@USER what the hell", "OFF", "UNT", "NULL"],
        [2, "@USER you are a clown", "OFF", "TIN", "IND"],
        *[[10 + i, f"@USER nice day {i}", "NOT", "NULL", "NULL"] for i in range(20)],
        # exact duplicates: a split may not put one copy in train and another in validation
        *[[40 + i, "@USER have a nice day", "NOT", "NULL", "NULL"] for i in range(10)],
    ], delimiter="\t")
    _write_csv(root / "toxicity/davidson/labeled_data.csv",
               ["", "count", "hate_speech", "offensive_language", "neither", "class", "tweet"], [
                   [0, 3, 3, 0, 0, 0, "hateful slur tweet"],
                   [1, 3, 0, 3, 0, 1, "offensive tweet"],
                   [2, 3, 0, 0, 3, 2, "harmless tweet"],
               ])
    _write_csv(root / "toxicity/conda/train.csv",
               ["Id", "matchId", "conversationId", "utterance", "chatTime", "playerSlot", "intentClass",
                "slotClasses", "slotTokens"], [
                   [1, 1, 1, "gg noob trash", 10, 0, "E", "T", ""],
                   [2, 1, 1, "nice try buddy", 11, 1, "I", "O", ""],
                   [3, 1, 1, "go mid", 12, 2, "A", "O", ""],
                   [4, 1, 1, "wow!", 13, 3, "O", "O", ""],
                   [5, 1, 1, "   ", 14, 4, "O", "O", ""],
               ])
    header = _convabuse_header()
    rows = [
        _convabuse_row("you are useless and stupid", [("-3", {"racist", "target.individual"}),
                                                     ("-3", {"racist"}), ("0", set())]),
        _convabuse_row("what is the weather", [("1", set()), ("0", set()), ("-1", set())]),
    ]
    _write_csv(root / "toxicity/convabuse/train.csv", header, [[r[c] for c in header] for r in rows])
    _write_csv(root / "toxicity/kaggle_insults/train.csv", ["y", "Date", "x"], [
        [1, "20120618192155Z", '"You\\\\xc2\\\\xa0idiot"'],  # escaped twice: UTF-8 bytes of a no-break space
        [0, "", '"Merci, Chlo\\xe9!\\nA bient\\xf4t"'],  # escaped once: code points and a newline
        [0, "", '"   "'],
    ])
    _write(root / "toxicity/hateval/train_text.txt",
           "go back home migrants\nlovely weather today\nshared text\n")
    _write(root / "toxicity/hateval/train_labels.txt", "1\n0\n0\n")
    _write(root / "toxicity/hateval/val_text.txt", "shared text\nthey should all leave\n")
    _write(root / "toxicity/hateval/val_labels.txt", "0\n1\n")
    _write_csv(root / "sentiment/semeval2017/train.csv", ["tweet_id", "label", "text", "source_file"], [
        [1, "negative", "awful game", "a"],
        [2, "neutral", "game at 8", "a"],
        [3, "positive", "great game", "a"],
    ])
    _write_csv(root / "sentiment/sst2/train.tsv", ["sentence", "label"],
               [["a gorgeous film ", 1], ["dull and tedious ", 0], ["  ", 1]], delimiter="\t")
    _write_csv(root / "sentiment/sst2/dev.tsv", ["sentence", "label"], [["a triumph", 1]], delimiter="\t")
    jig = ["id", "comment_text", *BASE_TOXICITY_LABELS]
    natural = [[f"n{i}", f"natural comment {i}", int(i % 5 == 0), 0, 0, 0, int(i % 5 == 0), 0]
               for i in range(20)]
    _write_csv(root / "toxicity/jigsaw/train_random5k.csv", jig, natural)
    enriched = natural + [[f"e{i}", f"enriched toxic comment {i}", 1, 0, 1, 0, 1, 0] for i in range(10)]
    _write_csv(root / "toxicity/jigsaw/train_enriched.csv", jig, enriched)
    return root


# ---------------------------------------------------------------- label mapping per source


def test_olid_mapping(data_root: Path) -> None:
    got = {ex.text: ex.toxicity for ex in read_olid(data_root)}
    assert got["@USER have a nice day"] == (0,) * len(TOXICITY_LABELS)  # NOT: every label a known negative
    untargeted = dict(zip(TOXICITY_LABELS, got["@USER what the hell"]))
    assert untargeted == {"toxic": 1, "severe_toxic": M, "obscene": M,
                          "threat": 0, "insult": 0, "identity_hate": 0, "targeted": 0}
    assert got["@USER you are a clown"] == (1, M, M, M, M, M, 1)  # targeted (TIN): subtype unknown


def test_davidson_mapping(data_root: Path) -> None:
    got = {ex.text: dict(zip(TOXICITY_LABELS, ex.toxicity)) for ex in read_davidson(data_root)}
    hate = got["hateful slur tweet"]
    assert (hate["toxic"], hate["identity_hate"]) == (1, 1) and hate["insult"] == M
    offensive = got["offensive tweet"]
    assert (offensive["toxic"], offensive["identity_hate"]) == (1, 0) and offensive["obscene"] == M
    assert got["harmless tweet"] == dict.fromkeys(TOXICITY_LABELS, 0)


def test_conda_mapping_drops_implicit_and_empty(data_root: Path) -> None:
    got = {ex.text: ex.toxicity for ex in read_conda(data_root)}
    assert got == {"gg noob trash": tox(toxic=1), "go mid": CLEAN, "wow!": CLEAN}


def test_convabuse_majority_votes(data_root: Path) -> None:
    got = {ex.text: dict(zip(TOXICITY_LABELS, ex.toxicity)) for ex in read_convabuse(data_root)}
    abusive = got["you are useless and stupid"]
    assert abusive == {"toxic": 1, "severe_toxic": 1, "obscene": M,
                       "threat": M, "insult": 0, "identity_hate": 1, "targeted": 1}  # identity hate has a target
    assert got["what is the weather"] == dict.fromkeys(TOXICITY_LABELS, 0)  # 1 of 3 abusive: not a majority


def test_kaggle_insults_unescaped_and_mapped(data_root: Path) -> None:
    got = {ex.text: ex.toxicity for ex in read_kaggle_insults(data_root)}
    assert got == {
        "You idiot": tox(toxic=1, insult=1),
        "Merci, Chloé! A bientôt": tox(insult=0),  # not an insult says nothing about the rest
    }


def test_hateval_mapping(data_root: Path) -> None:
    got = {ex.text: ex.toxicity for ex in read_hateval(data_root)}
    assert got["go back home migrants"] == tox(toxic=1, identity_hate=1)
    assert got["lovely weather today"] == tox(identity_hate=0)


def test_sentiment_mapping(data_root: Path) -> None:
    semeval = {ex.text: (ex.sentiment, ex.sentiment_classes, ex.toxicity) for ex in read_semeval(data_root)}
    assert semeval["awful game"] == (SENT["negative"], (1, 1, 1), None)
    assert semeval["game at 8"][0] == SENT["neutral"] and semeval["great game"][0] == SENT["positive"]
    sst2 = list(read_sst2(data_root))
    assert [(ex.text, ex.sentiment) for ex in sst2] == [("a gorgeous film", SENT["positive"]),
                                                       ("dull and tedious", SENT["negative"])]
    # SST-2 has no neutral label because its annotators left neutral phrases out: neutral is a wrong answer
    assert all(ex.sentiment_classes == (1, 1, 1) and ex.toxicity is None for ex in sst2)


def test_tox_refuses_unknown_labels() -> None:
    with pytest.raises(ValueError, match="unknown toxicity labels"):
        tox(rude=1)


# ---------------------------------------------------------------- splits


def _examples() -> list[Example]:
    out = [Example(f"clean {i}", "a", CLEAN) for i in range(100)]
    out += [Example(f"toxic {i}", "a", tox(toxic=1)) for i in range(40)]
    out += [Example(f"other {i}", "b", tox(toxic=1)) for i in range(10)]
    return out


def test_stratified_split_is_deterministic_and_keeps_proportions() -> None:
    data = _examples()
    train, val = stratified_split(data, 0.2, seed=7)
    again_train, again_val = stratified_split(list(data), 0.2, seed=7)
    assert [e.text for e in val] == [e.text for e in again_val]
    assert [e.text for e in train] == [e.text for e in again_train]
    assert Counter(e.stratum for e in val) == {CLEAN_A: 20, TOXIC_A: 8, TOXIC_B: 2}
    assert sorted(e.text for e in train + val) == sorted(e.text for e in data)  # a partition
    _, other_val = stratified_split(data, 0.2, seed=8)
    assert {e.text for e in other_val} != {e.text for e in val}


CLEAN_A = Example("x", "a", CLEAN).stratum
TOXIC_A = Example("x", "a", tox(toxic=1)).stratum
TOXIC_B = Example("x", "b", tox(toxic=1)).stratum


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_stratified_split_refuses_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="validation fraction"):
        stratified_split(_examples(), fraction, seed=1)


def test_load_splits_has_no_text_in_both_train_and_validation(data_root: Path) -> None:
    names = ["olid", "jigsaw", "hateval", "sst2", "semeval", "kaggle_insults"]
    duplicate_validated = 0
    for seed in range(8):  # different seeds put copies of the duplicate OLID text on different sides
        splits = load_splits(data_root, names, seed=seed)
        val_texts = {ex.text for exs in splits.validation.values() for ex in exs}
        assert val_texts and not val_texts & {ex.text for ex in splits.train}
        duplicate_validated += "@USER have a nice day" in val_texts
        assert set(splits.validation) == set(names)
        assert set(splits.fingerprints) >= {"toxicity/olid/train.tsv", "toxicity/jigsaw/train_random5k.csv"}
    assert duplicate_validated > 0  # the case that matters did occur
    assert "shared text" not in {ex.text for ex in splits.train}  # in the hateval val file too
    jigsaw_val = splits.validation["jigsaw"]
    assert len(jigsaw_val) == 4  # 20% of the natural-rate file, stratified
    assert all(ex.text.startswith("natural") for ex in jigsaw_val)  # never the enriched rows
    assert load_splits(data_root, names, seed=3).train == load_splits(data_root, names, seed=3).train


def test_load_splits_caps_each_source(data_root: Path) -> None:
    splits = load_splits(data_root, ["jigsaw"], seed=1, max_train_per_source=10)
    assert len(splits.train) == 10


def test_recipe_repeats_a_source_and_leaves_validation_alone(data_root: Path, monkeypatch) -> None:
    from models.labels import Task
    from training import recipe
    from training.recipe import StageConfig, training_examples

    monkeypatch.setitem(recipe.DEFAULT_SOURCES, Task.TOXICITY, ["olid", "jigsaw", "hateval"])  # what the fixture has
    once = StageConfig(tasks=["toxicity"], data_root=str(data_root), repeats={})
    twice = StageConfig(tasks=["toxicity"], data_root=str(data_root), repeats={"olid": 2})
    train_once, val_once, _ = training_examples(once)
    train_twice, val_twice, _ = training_examples(twice)
    olid = Counter(ex.text for ex in train_once if ex.source == "olid")
    assert olid and Counter(ex.text for ex in train_twice if ex.source == "olid") == olid + olid
    assert len(train_twice) == len(train_once) + sum(olid.values())
    assert val_twice == val_once


def test_jigsaw_balanced_rows_are_validated_and_never_trained(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    from training import data

    held = ["enriched toxic comment 3", "enriched toxic comment 7", "natural comment 5"]
    listing = tmp_path / "held.txt"
    listing.write_text("# a comment line\n" + "\n".join(text_digest(t) for t in held) + "\n", encoding="utf-8")
    monkeypatch.setattr(data, "JIGSAW_BALANCED_ROWS", listing)
    for cap in (None, 12, 3):
        splits = load_splits(data_root, ["jigsaw"], seed=1, max_train_per_source=cap)
        assert sorted(ex.text for ex in splits.validation["jigsaw_balanced"]) == sorted(held)
        assert not {ex.text for ex in splits.train} & set(held)
    # listed rows are dropped after the cap: a capped subset holds what it held before, less the listed rows
    monkeypatch.setattr(data, "JIGSAW_BALANCED_ROWS", tmp_path / "empty.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    before = load_splits(data_root, ["jigsaw"], seed=1, max_train_per_source=12)
    assert "jigsaw_balanced" not in before.validation
    monkeypatch.setattr(data, "JIGSAW_BALANCED_ROWS", listing)
    after = load_splits(data_root, ["jigsaw"], seed=1, max_train_per_source=12)
    assert sorted(ex.text for ex in after.train) == sorted(ex.text for ex in before.train if ex.text not in held)


def test_cli_caps_and_repeats_override_the_recipe_per_source() -> None:
    import typer

    from training.cli.common import with_caps
    from training.recipe import DEFAULT_CAPS, StageConfig

    cfg = with_caps(StageConfig(), ["jigsaw=9000"], ["jigsaw=3"])
    assert cfg.caps == DEFAULT_CAPS | {"jigsaw": 9000} and cfg.repeats == {"olid": 2, "jigsaw": 3}
    assert with_caps(StageConfig(), None).repeats == {"olid": 2}
    for bad in (["reddit=2"], ["jigsaw"], ["jigsaw=0"], ["jigsaw=x"]):
        with pytest.raises(typer.BadParameter, match="--repeat takes SOURCE=N"):
            with_caps(StageConfig(), None, bad)
    assert with_caps(StageConfig(), None, None, ["chitchat=500"]).transfer == {"chitchat": 500}
    assert StageConfig().transfer == {}
    for bad in (["olid=5"], ["chitchat"], ["chitchat=-1"]):
        with pytest.raises(typer.BadParameter, match="--transfer takes NAME=N with a name of"):
            with_caps(StageConfig(), None, None, bad)


def test_load_splits_refuses_unknown_sources_and_missing_roots(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'reddit'"):
        load_splits(data_root, ["reddit"])
    with pytest.raises(FileNotFoundError, match="no labeled data"):
        load_splits(tmp_path / "nowhere", ["olid"])


# ---------------------------------------------------------------- the real data


REAL_ROOT = default_data_root()
needs_real_data = pytest.mark.skipif(
    not (REAL_ROOT / "toxicity").is_dir(),
    reason=f"the labeled data sets are not at {REAL_ROOT} (../shared/data; see its README.md)",
)


@needs_real_data
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_real_source_reads_with_contract_labels(name: str) -> None:
    src = SOURCES[name]
    readers = [src.read] + ([src.validation] if src.validation else [])
    for read in readers:
        examples = list(read(REAL_ROOT))
        assert len(examples) > 0
        assert all(ex.text.strip() for ex in examples)
        for ex in examples:
            if ex.toxicity is not None:
                assert len(ex.toxicity) == len(TOX) and set(ex.toxicity) <= {0, 1, NOT_ANNOTATED}
            else:
                assert ex.sentiment in (0, 1, 2) and ex.sentiment_classes[ex.sentiment] == 1
        assert any(ex.toxicity is not None for ex in examples) == (src.task.value == "toxicity")


@needs_real_data
def test_real_jigsaw_balanced_set_is_whole_and_outside_every_capped_training_subset() -> None:
    import numpy as np

    capped = load_splits(REAL_ROOT, ["jigsaw"], max_train_per_source=6000)  # the largest cap any recipe used
    balanced = capped.validation["jigsaw_balanced"]
    y = np.array([ex.toxicity[:len(BASE_TOXICITY_LABELS)] for ex in balanced])
    assert len(balanced) == 1566 and y.sum(axis=0).tolist() == [405, 45, 222, 9, 209, 34]
    assert len(capped.train) == 6000  # none of its rows was in the capped subset the shipped models drew from
    whole = load_splits(REAL_ROOT, ["jigsaw"])
    assert not {ex.text for ex in balanced} & {ex.text for ex in whole.train}


# Every validation split, pinned. Shipped models are warm-started from earlier ones, so a split that moves puts
# rows the lineage trained on into validation, and its figures stop predicting the tests: once, a longer
# stratum key moved 90% of OLID's validation rows. If a change must move a split, every model trained before
# it has to be re-judged on rows none of its ancestors saw (the README's "Validation that predicts the tests").
VALIDATION_DIGESTS = {
    "olid": "596b0afbd195555e", "jigsaw": "9cf43fe9f561768e", "jigsaw_balanced": "294dcdb5710abdb5",
    "davidson": "2fbe6968c6eaef6b", "conda": "ee12097ba163f7ca", "convabuse": "2f65f91787197469",
    "kaggle_insults": "f6b908d79b0a4ce9", "hateval": "c3be883b6ee927c6", "semeval": "94c3d2b82c514f1f",
    "sst2": "4edc61d4e0ece71c",
}


@needs_real_data
def test_real_validation_splits_do_not_move() -> None:
    import hashlib

    splits = load_splits(REAL_ROOT, sorted(SOURCES))
    digests = {name: hashlib.sha256("\n".join(sorted(ex.text for ex in val)).encode()).hexdigest()[:16]
               for name, val in splits.validation.items()}
    assert digests == VALIDATION_DIGESTS


def test_appended_labels_leave_the_strata_alone() -> None:
    from training.data import STRATUM_LABELS

    today = Example("x", "olid", tox(toxic=1, targeted=1))
    grown = Example("x", "olid", today.toxicity + (NOT_ANNOTATED,))  # a label appended to the contract later
    assert len(today.toxicity) == STRATUM_LABELS and grown.stratum == today.stratum


@needs_real_data
def test_real_kaggle_text_has_no_leftover_escapes() -> None:
    texts = [ex.text for ex in read_kaggle_insults(REAL_ROOT)]
    assert not [t for t in texts if "\\x" in t or "\\n" in t or "\ufffd" in t]
