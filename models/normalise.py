"""The text a model reads: NFKC, invisible and control characters dropped, whitespace collapsed, bounded.

Normalising first makes obfuscated variants of one text (full-width letters, ligatures, zero-width
characters, odd spacing) one text: the model sees what a reader sees. The worker's cache keys
(``pipeline.textnorm``) and the explanations' offset mapping (``models.explain``) build on it.
"""

from __future__ import annotations

import re
import unicodedata

# Characters that are invisible or control codes: Cc (minus whitespace, which becomes a space),
# Cf (zero-width space/joiners, soft hyphen, bidi controls, tags: the usual obfuscation tools) and
# lone surrogates (Cs), as of Unicode 14 (Python 3.11); a unit test checks this against unicodedata.
INVISIBLE = re.compile(
    "["
    "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f"  # Cc except \t \n \v \f \r \x1c-\x1f \x85 (whitespace)
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
    "\ud800-\udfff"
    "]+"
)


def normalise_text(text: str, max_chars: int) -> str:
    """NFKC, drop invisible/control characters, collapse whitespace to one space, strip, truncate.

    Texts longer than ``max_chars`` (after normalisation) are cut, never rejected: the classifier
    reads a bounded prefix anyway.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    text = unicodedata.normalize("NFKC", text)
    text = INVISIBLE.sub("", text)
    text = " ".join(text.split())  # every Unicode whitespace run -> one space; strips the ends
    return text[:max_chars].rstrip() if len(text) > max_chars else text
