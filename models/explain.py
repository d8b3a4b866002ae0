"""Explanations: the words that drove a decision, as character spans of the message as it was written.

Two methods, measured side by side on CONDA's toxic-word labels (``chatmod train spans``):
- **lexicon**: words of the offensive lexicon (``models/lexicon``), read after de-obfuscation, with their
  inflections ("noobs", "fuckin"). Profanity, slurs and insults are marked in every result; words that are
  only abusive in context ("kill", "trash", "die") only in a flagged one, so "kill the boss" shows nothing.
- **occlusion**: each word of a flagged text left out in turn, all variants scored in one batched call; the
  words whose absence lowers the deciding label most are the span. It finds what no list holds ("i will
  find where you live"), at one model call per word.

``hybrid`` is the lexicon everywhere (a set lookup per word), and occlusion only for a flagged text in
which the lexicon found nothing. Measured (README "Explanations"), the lexicon has the best F1 on CONDA and
costs no model call, so it is the default; hybrid explains more flagged results, at a model call per word
of each flagged text the lexicon cannot explain.

Coordinates: spans are found in the text the model read (normalised, then de-obfuscated), mapped back
through de-obfuscation (``Deobfuscated.rewrites``: "i d i o t" is one span over all its letters) to the
normalised text, which is what the score cache holds; ``to_original`` maps them through normalisation
(NFKC, invisible characters, whitespace) to the message as written, per message.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from importlib import resources

from models.deobfuscate import Deobfuscated
from models.normalise import INVISIBLE

EXPLAIN_VERSION = 1  # part of the content cache key: cached spans of another version are not reused
METHODS = ("lexicon", "occlusion", "hybrid")

# Words abusive only in context: marked in a flagged text, never in an allowed one ("kill the boss").
CONTEXTUAL = frozenset({"die", "hang", "kill", "murder", "shoot", "stab", "fat", "ugly", "garbage", "trash", "crap",
                        "damn", "cracker", "pathetic", "dumb", "loser"})
_SUFFIXES = ("s", "es", "ers", "er", "ing", "in", "ign", "ed", "d", "y", "ty", "est")
_WORD = re.compile(r"[\w']+|[^\w\s]+\w[\w']*", re.UNICODE)
OCCLUSION_MIN_DROP = 0.1  # a word whose absence moves the deciding score less than this explains nothing
OCCLUSION_SHARE = 0.5  # ... and a span is any word within this share of the largest drop
MAX_OCCLUDED_WORDS = 24  # longer texts: only their first words are tried (chat is short)
# Words that can move a score (leaving out "your" makes an insult less targeted) but are never the
# offending word a moderator or a user should be shown.
STOPWORDS = frozenset("""a an the and or but so to of in on at for with is are am was were be been it its it's
this that these those i i'm im me my we us our you your you're youre yours ur u he him his she her they them
their just what who whos who's how why when where there here not no do does did""".split())

Span = tuple[int, int, str, float]  # start, end, label, score


@functools.lru_cache(maxsize=1)
def _lexicon() -> frozenset[str]:
    words = set()
    for name in ("offensive.txt", "spans.txt"):
        text = resources.files("models").joinpath(f"lexicon/{name}").read_text(encoding="utf-8")
        words.update(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))
    return frozenset(words)


def lexicon_word(word: str) -> str | None:
    """The lexicon entry ``word`` is (or inflects: "noobs", "fuckin", "retards"), else None."""
    lexicon = _lexicon()
    word = word.lower().strip("'")
    if word in lexicon:
        return word
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            for base in (stem, stem + "e", stem[:-1] if len(stem) > 3 and stem[-1] == stem[-2] else stem):
                if base in lexicon:
                    return base
    return None


def words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def to_read_input(deob: Deobfuscated, start: int, end: int) -> tuple[int, int]:
    """Map ``[start, end)`` of the de-obfuscated text to the text it was made from: a span touching a
    rewrite covers all of what the writer typed for it ("i d i o t", "1d10t")."""
    def back(pos: int, is_end: bool) -> int:
        shift = 0  # read offset - input offset, before the current rewrite
        for r in deob.rewrites:
            read_start = r.start + shift
            read_end = read_start + len(r.replacement)
            if pos < read_start or (is_end and pos == read_start):
                break
            if pos < read_end or (is_end and pos == read_end):
                return r.end if is_end else r.start
            shift += len(r.replacement) - (r.end - r.start)
        return pos - shift

    return back(start, False), back(end, True)


def find_spans(read: Deobfuscated, scores: Mapping[str, Mapping[str, float]], flagged: bool, method: str,
               predict: Callable[[list[str]], list[dict[str, dict[str, float]]]] | None = None,
               label: str | None = None) -> list[Span]:
    """Spans, in the coordinates of the text ``read`` was made from (the normalised text).

    ``scores``: the text's scores; ``flagged``: whether its decision is not allow; ``label``: the label
    that decided it (default: its highest toxicity score); ``predict`` scores texts (for occlusion).
    """
    if method not in METHODS:
        raise ValueError(f"span method must be one of {METHODS}, got {method!r}")
    tox = scores.get("toxicity", {})
    label = label or (max(tox, key=tox.get) if tox else "toxic")
    text = read.text
    found: list[Span] = []
    if method in ("lexicon", "hybrid"):
        for start, end in words(text):
            entry = lexicon_word(text[start:end])
            if entry is not None and (flagged or entry not in CONTEXTUAL):
                found.append((*to_read_input(read, start, end), label, round(float(tox.get(label, 0.0)), 4)))
    if flagged and predict is not None and (method == "occlusion" or (method == "hybrid" and not found)):
        found = [(*to_read_input(read, s, e), label, drop) for s, e, drop in occlude(text, label, tox, predict)]
    return _merge(found)


def occlude(text: str, label: str, tox: Mapping[str, float],
            predict: Callable[[list[str]], list[dict[str, dict[str, float]]]]) -> list[tuple[int, int, float]]:
    """``(start, end, drop)`` of the words whose absence lowers ``label``'s score most: one batched call."""
    spans = [(s, e) for s, e in words(text) if text[s:e].lower() not in STOPWORDS][:MAX_OCCLUDED_WORDS]
    if not spans:
        return []
    variants = [" ".join((text[:s] + text[e:]).split()) for s, e in spans]
    base = float(tox.get(label, 0.0))
    drops = [base - float(v.get("toxicity", {}).get(label, base)) for v in predict(variants)]
    top = max(drops)
    if top < OCCLUSION_MIN_DROP:
        return []
    return [(s, e, round(d, 4)) for (s, e), d in zip(spans, drops) if d >= max(OCCLUSION_MIN_DROP, OCCLUSION_SHARE * top)]


def _merge(spans: Sequence[Span]) -> list[Span]:
    """Sorted, one span per character range (a rewrite covering two found words is one span)."""
    out: list[Span] = []
    for span in sorted(spans):
        if out and span[0] < out[-1][1]:
            prev = out[-1]
            out[-1] = (prev[0], max(prev[1], span[1]), prev[2], max(prev[3], span[3]))
        else:
            out.append(span)
    return out


# ---------------------------------------------------------------- normalised -> original offsets


def normalised_offsets(original: str, normalised: str) -> list[tuple[int, int]] | None:
    """For each character of ``normalised`` (``models.normalise.normalise_text(original)``), the range of
    ``original`` it came from; None where the normaliser's output cannot be reproduced piecewise."""
    pieces: list[tuple[str, int, int]] = []
    i = 0
    while i < len(original):  # a base character and the combining marks after it normalise together
        j = i + 1
        while j < len(original) and unicodedata.combining(original[j]):
            j += 1
        pieces.append((unicodedata.normalize("NFKC", original[i:j]), i, j))
        i = j
    chars: list[tuple[str, int, int]] = []
    for out, s, e in pieces:
        for ch in out:
            if not INVISIBLE.fullmatch(ch):
                chars.append((ch, s, e))
    collapsed: list[tuple[int, int]] = []
    text: list[str] = []
    for ch, s, e in chars:
        if ch.isspace():
            if text and text[-1] != " ":
                text.append(" ")
                collapsed.append((s, e))
            continue
        text.append(ch)
        collapsed.append((s, e))
    while text and text[-1] == " ":
        text.pop()
        collapsed.pop()
    rebuilt = "".join(text)
    if not rebuilt.startswith(normalised.rstrip()) and rebuilt != normalised:
        return None
    return collapsed[: len(normalised)]


def to_original(spans: Sequence[Span], original: str, normalised: str) -> list[dict]:
    """``spans`` over the normalised text as ``{start, end, label, score}`` over ``original``."""
    if not spans:
        return []
    if original == normalised:
        return [{"start": s, "end": e, "label": label, "score": score} for s, e, label, score in spans]
    offsets = normalised_offsets(original, normalised)
    if offsets is None:  # cannot be mapped exactly: say nothing rather than point at the wrong characters
        return []
    out = []
    for s, e, label, score in spans:
        if s < e <= len(offsets):
            out.append({"start": offsets[s][0], "end": offsets[e - 1][1], "label": label, "score": score})
    return out
