"""Undo the usual spelling tricks, so that the model reads what the writer meant.

Evaders space or dot the letters of a word ("k y s", "i.d.i.o.t"), swap letters for digits and symbols
("1d10t", "b!tch", "a$$"), star a vowel ("f*ck"), stretch letters ("fuuuuck"), or borrow look-alike letters
from other scripts (Cyrillic "іdіоt"). NFKC (``pipeline.textnorm``) already folds full-width letters and
ligatures; this module does the rest.

The guard against the Scunthorpe problem is structural: a token is only rewritten when it carries a sign of
obfuscation (a digit or symbol among its letters, letters of two scripts, a letter three times in a row, or
single letters spaced apart), and only into a real word: an entry of the offensive list (preferred) or of
the English word list (``models/lexicon``). Ordinary words ("Scunthorpe", "assessment", "Sky sources") carry
no such sign and are never touched; "gr8" or "1v1" have no reading that is a word and stay as written.

Five abbreviations of abuse ("kys", "stfu", ...) are spelled out wherever they stand as a word.

The output is lower case where something changed (every shipped tokenizer lower-cases). ``Deobfuscated``
lists each rewrite with its character span in the input, for explanations that point at the original text.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from importlib import resources

# Bump when the rules or the word lists change what a text becomes: it is part of the content cache key.
DEOBFUSCATION_VERSION = 1

# Digits and symbols that stand for letters; the first reading is the likelier one.
LEET: dict[str, str] = {
    "0": "o", "1": "il", "2": "z", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g",
    "@": "a", "$": "s", "!": "i", "|": "li", "+": "t", "€": "e", "£": "l", "¡": "i",
}
# A starred or hashed letter: any vowel, or nothing ("f*ck", "sh#t", "b**ch" needs two).
WILDCARDS = "*#%"
VOWELS = "aeiou"
# Cyrillic and Greek letters that look like Latin ones (lower case; input is lower-cased first).
LOOKALIKES: dict[str, str] = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "һ": "h",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "ѵ": "v", "ԛ": "q", "ԝ": "w",
}
# Abbreviations of abuse that a model trained on Wikipedia comments and tweets has rarely seen: spelled
# out wherever they stand as a word, disguised or not ("kys", "k y s", "k.y.s").
EXPANSIONS: dict[str, str] = {
    "kys": "kill yourself", "stfu": "shut the fuck up", "gtfo": "get the fuck out",
    "foad": "fuck off and die", "diaf": "die in a fire",
}
MAX_CANDIDATES = 256  # readings tried per token; an obfuscated chat word has a handful of ambiguous signs

_TOKEN = re.compile(r"\S+")
# Three or more single characters with light separators between them: "k y s", "f.u.c.k", "i-d-i-o-t".
_SEP = r"[ .\-_*·•/]{1,3}"
_SINGLE = re.compile(r"[^\s.\-_*·•/]")
_SPACED = re.compile(rf"(?<!\S)[^\s.\-_*·•/](?:{_SEP}[^\s.\-_*·•/]){{2,}}(?!\S)")
_EDGE_PUNCT = "\"'“”‘’()[]{}<>,;:?!.…~%*"
_RUN = re.compile(r"(.)\1{2,}")


@dataclass(frozen=True)
class Rewrite:
    start: int  # character offsets in the input text
    end: int
    original: str
    replacement: str


@dataclass(frozen=True)
class Deobfuscated:
    text: str
    rewrites: tuple[Rewrite, ...]

    @property
    def changed(self) -> bool:
        return bool(self.rewrites)


@functools.lru_cache(maxsize=1)
def _lexicon() -> tuple[frozenset[str], dict[str, int]]:
    """(offensive terms, English words -> rank: the more common, the lower)."""
    def read(name: str) -> list[str]:
        text = resources.files("models").joinpath(f"lexicon/{name}").read_text(encoding="utf-8")
        return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]

    offensive = read("offensive.txt")
    ranks = {w: i for i, w in enumerate(read("words.txt"))}
    for word in offensive:
        ranks.setdefault(word, len(ranks))
    return frozenset(offensive), ranks


def deobfuscate(text: str) -> Deobfuscated:
    """``text`` with obfuscated words rewritten to the words they stand for (see the module docstring)."""
    rewrites: list[Rewrite] = []
    for match in _SPACED.finditer(text):
        chars = [(match.start() + m.start(), m.group()) for m in _SINGLE.finditer(match.group(0))]
        free = [True] * len(chars)
        for split in (False, True):  # whole words first ("u r a l o s e r": "loser"), then two run together
            i = 0
            while i <= len(chars) - 3:  # the longest run of free single letters that spells a word
                for j in range(len(chars), i + 2, -1):
                    if not all(free[i:j]):
                        continue
                    word = _resolve("".join(c for _, c in chars[i:j]).lower(), spaced=split)
                    if word is not None:
                        word = " ".join(EXPANSIONS.get(w, w) for w in word.split())
                        start, end = chars[i][0], chars[j - 1][0] + 1
                        rewrites.append(Rewrite(start, end, text[start:end], word))
                        free[i:j] = [False] * (j - i)
                        i = j
                        break
                else:
                    i += 1
    taken = [(r.start, r.end) for r in rewrites]
    for match in _TOKEN.finditer(text):
        if any(s <= match.start() < e for s, e in taken):
            continue
        token = match.group(0)
        lead = len(token) - len(token.lstrip(_EDGE_PUNCT))
        core = token.strip(_EDGE_PUNCT)
        if not core:
            continue
        # trailing "!" or "$" may be part of the word ("b!tch" is inside; "idiot!" is punctuation)
        start = match.start() + lead
        word = core.lower() if core.lower() in EXPANSIONS else None
        if word is None and _obfuscated(core):
            word = _resolve(core.lower(), spaced=False)
        if word is not None:
            word = EXPANSIONS.get(word, word)
            if word != core.lower():
                rewrites.append(Rewrite(start, start + len(core), core, word))
    rewrites.sort(key=lambda r: r.start)
    out, last = [], 0
    for r in rewrites:
        out += [text[last : r.start], r.replacement]
        last = r.end
    out.append(text[last:])
    return Deobfuscated("".join(out), tuple(rewrites))


_NUMBERISH = re.compile(r"\d{3,}|^\d+(?:k|m|mb|gb|ms|s|h|min|st|nd|rd|th|x|v\d+)$|^[#@]", re.IGNORECASE)


def _obfuscated(core: str) -> bool:
    """Whether a token carries a sign of obfuscation: letters mixed with digits or symbols, two scripts,
    or a letter three times in a row. Numbers with units ("60000k", "3rd"), runs of three digits, hashtags
    and mentions are not obfuscation."""
    letters = [ch for ch in core if ch.isalpha()]
    if not letters or len(core) < 3 or _NUMBERISH.search(core):  # "o7", "b4": too short to tell
        return False
    lowered = core.lower()
    if any(ch in LEET or ch in WILDCARDS for ch in lowered) and any(ch.isascii() and ch.isalpha() for ch in lowered):
        return True
    if any(ch in LOOKALIKES for ch in lowered) and any(ch.isascii() and ch.isalpha() for ch in lowered):
        return True
    if any(ch in ".-_" for ch in core.strip(".-_")):  # "s.h.i.t": three or more parts of one or two letters
        parts = [p for p in re.split(r"[.\-_]+", core) if p]
        return len(parts) >= 3 and all(len(p) <= 2 for p in parts)
    return _RUN.search(lowered) is not None


def _resolve(token: str, spaced: bool) -> str | None:
    """The word ``token`` most likely stands for: an offensive term first, then any English word; with
    ``spaced``, only two words run together, one of them offensive ("fuckyou" -> "fuck you", the spaces
    between the writer's words having been collapsed); ``None`` when no reading is a word."""
    offensive, words = _lexicon()
    readings = list(_readings(token))
    if spaced:
        return next((split for r in readings if (split := _split_two(r, offensive, words))), None)
    pattern = _pattern(token)
    hit = next((w for w in sorted(offensive, key=len) if pattern.fullmatch(w)), None)
    if hit is not None:
        return hit
    known = [reading for reading in readings if reading in words]
    return min(known, key=words.__getitem__) if known else None  # "gooo": "go" before "goo"


def _pattern(token: str) -> re.Pattern[str]:
    """A regex for the offensive terms ``token`` may spell: a starred letter is any one letter (or none),
    a leet sign any of its letters, a stretched letter one or more of it."""
    parts = []
    base = "".join(LOOKALIKES.get(ch, ch) for ch in token if ch not in ".-_")
    for k, ch in enumerate(base):
        if ch in WILDCARDS:
            parts.append("[a-z]?" if 0 < k < len(base) - 1 else "")
        elif ch in LEET and not ch.isalpha():
            parts.append(f"[{re.escape(LEET[ch])}]")
        elif ch.isalpha():
            parts.append(re.escape(ch))
    collapsed = []
    for part in parts:  # "fuuuck": a run of one letter matches one or more of it
        if collapsed and part == collapsed[-1].rstrip("+") and len(part) == 1:
            collapsed[-1] = part + "+"
        else:
            collapsed.append(part)
    return re.compile("".join(collapsed))


def _split_two(text: str, offensive: frozenset[str], words: dict[str, int]) -> str | None:
    for cut in range(2, len(text) - 1):
        head, tail = text[:cut], text[cut:]
        if head in words and tail in words and (head in offensive or tail in offensive):
            return f"{head} {tail}"
    return None


def _readings(token: str):  # -> Iterator[str]
    """Candidate spellings of an obfuscated token, likeliest first, at most ``MAX_CANDIDATES``."""
    base = "".join(LOOKALIKES.get(ch, ch) for ch in token if ch not in ".-_")
    options: list[str | tuple[str, ...]] = []
    for k, ch in enumerate(base):
        if ch in WILDCARDS and not 0 < k < len(base) - 1:
            options.append(("",))  # a star at an edge is punctuation, not a hidden letter
        elif ch in WILDCARDS:
            options.append(tuple(VOWELS) + ("",))
        elif ch in LEET and not ch.isalpha():
            options.append(tuple(LEET[ch]))
        elif ch.isalpha():
            options.append((ch,))
        else:
            options.append(("",))  # another symbol inside a word: drop it
    seen: set[str] = set()
    for combo in itertools.islice(itertools.product(*options), MAX_CANDIDATES):
        spelled = "".join(combo)
        for variant in (spelled, _RUN.sub(r"\1\1", spelled), _RUN.sub(r"\1", spelled),
                        re.sub(r"(.)\1+", r"\1", spelled)):
            if variant and variant not in seen:
                seen.add(variant)
                yield variant
