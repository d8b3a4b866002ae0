"""Term lists that are hard to evade and never over-match.

A profile's block and allow terms are matched against the normalised message, word by word:
- **whole words only**: "Scunthorpe", "assessment" and "Sky sources" hold "cunt", "ass" and "sky s" but
  no term *word*, so they never hit;
- **evasive spellings hit**: a word that carries a sign of obfuscation (a digit or symbol among letters,
  look-alike letters from another script, a letter three times in a row; see ``models/deobfuscate.py``) is
  also tried in each of its readings ("b4dw0rd" -> "badword"), and single letters spaced or dotted apart
  ("b a d w o r d") are joined first;
- **wildcards** as Discord offers them: ``word*`` (starts with), ``*word`` (ends with), ``*word*``
  (contains), within one word;
- **phrases**: a term of several words matches those words in a row.

Plain words, phrases, and wildcards at one end are dictionary lookups (per prefix or suffix length in
use), so a list of thousands of terms costs a few lookups per word; "contains" wildcards, rarer, are one
compiled pattern. A term is reported by a stable id (the first 8 hex digits
of its SHA-256), never by its text, so logs and reason codes never repeat the words a community bans.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from models.deobfuscate import _EDGE_PUNCT, _SINGLE, _SPACED, _obfuscated, _readings

_CHUNK = re.compile(r"\S+")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_TRAILING = re.compile(r"[!?,;:…~]+(?=\s|$)")
_TERM_WORD = re.compile(r"^[\w'*]+$", re.UNICODE)


def term_id(term: str) -> str:
    return hashlib.sha256(" ".join(term.lower().split()).encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class TermHit:
    term_id: str
    start: int  # character offsets in the text matched
    end: int


class TermList:
    """A compiled list of terms (see the module docstring); ``find`` returns every hit in a text."""

    def __init__(self, terms: Iterable[str]):
        self.words: dict[str, str] = {}  # word -> id
        self.phrases: dict[str, list[tuple[tuple[str, ...], str]]] = {}  # first word -> [(words, id)]
        self.prefixes: dict[str, str] = {}  # "noob*": a word starting with "noob"
        self.suffixes: dict[str, str] = {}  # "*tard"
        contains: list[tuple[str, str]] = []  # "*rekt*"
        self.size = 0
        for raw in terms:
            term = " ".join(raw.strip().lower().split())
            if not term:
                continue
            parts = term.split(" ")
            bad = [p for p in parts if not _TERM_WORD.match(p)]
            if bad:
                raise ValueError(f"term {raw!r}: words are letters, digits and apostrophes, with * as a wildcard")
            self.size += 1
            if "*" in term:
                if len(parts) > 1:
                    raise ValueError(f"term {raw!r}: a wildcard term is one word")
                core = term.strip("*")
                if not core or "*" in core:
                    raise ValueError(f"term {raw!r}: a wildcard stands at the start or the end of a word")
                if term.startswith("*") and term.endswith("*"):
                    contains.append((core, term_id(term)))
                elif term.endswith("*"):
                    self.prefixes.setdefault(core, term_id(term))
                else:
                    self.suffixes.setdefault(core, term_id(term))
            elif len(parts) == 1:
                self.words[term] = term_id(term)
            else:
                self.phrases.setdefault(parts[0], []).append((tuple(parts), term_id(term)))
        # a prefix or suffix is a dictionary lookup per length in use; "contains" terms, rarer, one pattern
        self._prefix_lengths = sorted({len(p) for p in self.prefixes})
        self._suffix_lengths = sorted({len(p) for p in self.suffixes})
        self._contains_ids = [tid for _, tid in contains]
        self._contains = (re.compile("|".join(f"(?P<w{i}>{re.escape(c)})" for i, (c, _) in enumerate(contains)))
                          if contains else None)

    def __len__(self) -> int:
        return self.size

    def _word_id(self, word: str) -> str | None:
        tid = self.words.get(word)
        if tid is not None:
            return tid
        for k in self._prefix_lengths:
            if k > len(word):
                break
            if (tid := self.prefixes.get(word[:k])) is not None:
                return tid
        for k in self._suffix_lengths:
            if k > len(word):
                break
            if (tid := self.suffixes.get(word[-k:])) is not None:
                return tid
        if self._contains is not None and (match := self._contains.search(word)) is not None:
            return self._contains_ids[int(match.lastgroup[1:])]
        return None

    def _lookup(self, token: str) -> tuple[str, str] | None:
        """``(reading, id)`` of the term a token is, as written or in one of its de-obfuscated readings."""
        tid = self._word_id(token)
        if tid is not None:
            return token, tid
        if _obfuscated(token):
            for reading in _readings(token):
                tid = self._word_id(reading)
                if tid is not None:
                    return reading, tid
        return None

    def find(self, text: str) -> list[TermHit]:
        if not self.size:
            return []
        lowered = text.lower()
        hits: list[TermHit] = []
        taken: list[tuple[int, int]] = []
        # "b a d w o r d!": the letters joined, as one word (trailing punctuation blanked, offsets kept)
        for match in _SPACED.finditer(_TRAILING.sub(lambda m: " " * len(m.group()), lowered)):
            joined = "".join(m.group() for m in _SINGLE.finditer(match.group(0)))
            found = self._lookup(joined)
            if found is not None:
                hits.append(TermHit(found[1], match.start(), match.end()))
                taken.append(match.span())
        tokens = [span for span in _tokens(lowered) if not any(s <= span[0] < e for s, e in taken)]
        readings: list[str] = []
        for start, end in tokens:
            found = self._lookup(lowered[start:end])
            readings.append(found[0] if found else lowered[start:end].strip("'’"))
            if found is not None:
                hits.append(TermHit(found[1], start, end))
        if self.phrases:
            for i, first in enumerate(readings):
                for words, tid in self.phrases.get(first, ()):
                    if tuple(readings[i : i + len(words)]) == words:
                        hits.append(TermHit(tid, tokens[i][0], tokens[i + len(words) - 1][1]))
        return sorted(hits, key=lambda h: (h.start, h.end))


def _tokens(text: str) -> list[tuple[int, int]]:
    """Word spans: a whitespace-separated chunk with a sign of obfuscation is one word ("a$$hole", "@sshole"),
    trimmed of edge punctuation; any other chunk is split into its words ("idiot,you" is two)."""
    out = []
    for chunk in _CHUNK.finditer(text):
        raw = chunk.group()
        core = raw.strip(_EDGE_PUNCT)
        if core and _obfuscated(core):
            start = chunk.start() + raw.index(core)
            out.append((start, start + len(core)))
        else:
            out += [(chunk.start() + m.start(), chunk.start() + m.end()) for m in _WORD.finditer(raw)]
    return out
