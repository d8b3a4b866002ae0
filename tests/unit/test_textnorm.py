"""Normalisation defeats obfuscation; cache keys depend on the right things and reveal nothing."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from models.normalise import INVISIBLE, normalise_text
from pipeline.textnorm import content_key, message_key

pytestmark = pytest.mark.unit

REFS = {"toxicity": "tox@3", "sentiment": "sent@1"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ｙｏｕ ａｒｅ ａｎ ｉｄｉｏｔ", "you are an idiot"),  # full-width
        ("ﬁne ﬂower", "fine flower"),  # ligatures
        ("id\u200biot", "idiot"),  # zero-width space
        ("i\u00addiot", "idiot"),  # soft hyphen
        ("bad\u202eword", "badword"),  # bidi override
        ("a\x00b\x07c", "abc"),  # control characters
        ("  hello \t\n\r  world\u3000!  ", "hello world !"),  # whitespace runs, ideographic space
        ("non\u00a0breaking", "non breaking"),
        ("", ""),
    ],
)
def test_normalise_text(raw, expected):
    assert normalise_text(raw, 2000) == expected


def test_long_text_is_truncated_not_rejected():
    out = normalise_text("word " * 1000, 50)
    assert len(out) <= 50 and out.startswith("word word") and out == out.strip()


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError, match="max_chars"):
        normalise_text("x", 0)


def test_invisible_class_matches_this_pythons_unicode_database():
    """If Python's Unicode version adds format characters, update INVISIBLE in models/normalise.py."""
    missed = []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        category = unicodedata.category(ch)
        should_drop = category in ("Cf", "Cs") or (category == "Cc" and not ch.isspace())
        if should_drop != bool(INVISIBLE.fullmatch(ch)):
            missed.append(hex(cp))
    assert missed == []


def test_key_never_contains_the_text_and_is_versioned():
    key = content_key("you are an idiot", REFS, casefold=False, prefix="chatmod")
    assert key.startswith("chatmod:v2:res:") and len(key.rsplit(":", 1)[1]) == 64
    assert "idiot" not in key
    assert content_key("you are an idiot", REFS, casefold=False, prefix="chatmod", normaliser="deobfuscate@1") != key
    msg = message_key("chatmod", "user-message-77")
    assert msg.startswith("chatmod:v1:msg:") and "77" not in msg


def test_casefold_only_when_asked():
    upper = content_key("HELLO there", REFS, casefold=True, prefix="p")
    lower = content_key("hello there", REFS, casefold=True, prefix="p")
    assert upper == lower
    assert content_key("HELLO there", REFS, casefold=False, prefix="p") != content_key(
        "hello there", REFS, casefold=False, prefix="p"
    )


def test_model_refs_change_the_key_but_their_order_does_not():
    base = content_key("hi", REFS, casefold=False, prefix="p")
    assert content_key("hi", {"sentiment": "sent@1", "toxicity": "tox@3"}, casefold=False, prefix="p") == base
    assert content_key("hi", {**REFS, "toxicity": "tox@4"}, casefold=False, prefix="p") != base
    assert content_key("hi", REFS, casefold=False, prefix="q") != base


def test_obfuscated_variants_share_one_key():
    variants = ["ｉｄｉｏｔ", "id\u200biot", "  idiot  ", "idiot"]
    keys = {content_key(normalise_text(v, 100), REFS, casefold=True, prefix="p") for v in variants}
    assert len(keys) == 1
