"""The worker's cache keys, from the normalised text (``models.normalise``).

Normalising first makes obfuscated variants of one text one text, so the cache serves them all. Keys are
SHA-256 digests, so no message text or id ever sits in Redis key space.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

# Bump when normalisation or key layout changes: old entries then simply miss. Content keys moved to v2
# when the normaliser (de-obfuscation) joined the digest; message keys stay v1, so a message redelivered
# across that upgrade still republishes its first result.
CONTENT_KEY_VERSION = "v2"
MESSAGE_KEY_VERSION = "v1"

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
