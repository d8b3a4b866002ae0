"""Text normalisation before classification, and the cache keys derived from it.

Normalising first makes obfuscated variants of one text (full-width letters, ligatures, zero-width
characters, odd spacing) one text: the model sees what a reader sees, and the cache serves them all.
Keys are SHA-256 digests, so no message text or id ever sits in Redis key space.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping

# Bump when normalisation or key layout changes: old entries then simply miss. Content keys moved to v2
# when the normaliser (de-obfuscation) joined the digest; message keys stay v1, so a message redelivered
# across that upgrade still republishes its first result.
CONTENT_KEY_VERSION = "v2"
MESSAGE_KEY_VERSION = "v1"

# Characters that are invisible or control codes: Cc (minus whitespace, which becomes a space),
# Cf (zero-width space/joiners, soft hyphen, bidi controls, tags: the usual obfuscation tools) and
# lone surrogates (Cs), as of Unicode 14 (Python 3.11); a unit test checks this against unicodedata.
_INVISIBLE = re.compile(
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
    text = _INVISIBLE.sub("", text)
    text = " ".join(text.split())  # every Unicode whitespace run -> one space; strips the ends
    return text[:max_chars].rstrip() if len(text) > max_chars else text


def _sha256(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def content_key(normalised_text: str, model_refs: Mapping[str, str], casefold: bool, prefix: str,
                normaliser: str = "none") -> str:
    """Cache key for the scores of ``normalised_text`` under these models: ``{prefix}:v2:res:{sha256}``.

    ``model_refs`` (task -> ``name@version``) and ``normaliser`` (what rewrote the text before the model
    read it, e.g. ``deobfuscate@1``) are part of the digest, so a new model or a new normaliser never
    serves an old one's scores. ``casefold`` (set it when every model's tokenizer lower-cases) makes "HELLO"
    and "hello" one entry; it uses ``str.lower``, the tokenizers' own folding, rather than
    ``str.casefold``, which would also merge texts they tell apart ("straße" / "strasse").
    """
    if not prefix:
        raise ValueError("cache key prefix must be non-empty")
    text = normalised_text.lower() if casefold else normalised_text
    # JSON of (sorted refs, normaliser, text) is unambiguous: no choice of text can mimic other refs.
    payload = json.dumps([sorted(model_refs.items()), normaliser, text], ensure_ascii=False, separators=(",", ":"))
    return f"{prefix}:{CONTENT_KEY_VERSION}:res:{_sha256(payload)}"


def message_key(prefix: str, message_id: str) -> str:
    """Key of the per-message result record (idempotent re-delivery): ``{prefix}:v1:msg:{sha256(id)}``."""
    if not prefix:
        raise ValueError("cache key prefix must be non-empty")
    return f"{prefix}:{MESSAGE_KEY_VERSION}:msg:{_sha256(message_id)}"
