"""Unlabeled transfer sets: texts a teacher labels and students learn from, with no annotation of their own.

DistilBERT's students were distilled on a large unlabeled transfer set: whatever the teacher answers on
ordinary text is a target, so a student learns how the teacher behaves on the traffic it will serve and not
only on the labeled sets' few (and oddly chosen) texts. Here that traffic is chat. A transfer example has no
hard labels (``Example.toxicity`` and ``sentiment`` are None), so it teaches only through the soft loss: it
needs a teacher, or stored soft labels that cover it (``chatmod train label --transfer ... --transfer-only``).

``chitchat``: the BYU PCC lab's Chit-Chat Challenge corpus (MIT; the ``chitchat-dataset`` package of the
``train`` extra): 258,145 messages of open-domain chat between people, 223,062 of them distinct, 9.6 words
on average. It carries no moderation labels and is never used for validation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from training.data import Example

_SPACE = re.compile(r"\s+")
MIN_CHARS, MAX_CHARS = 2, 400  # a lone character teaches nothing; chat lines, not essays


@dataclass(frozen=True)
class TransferSet:
    name: str
    texts: Callable[[], Sequence[str]]  # every distinct usable text, in a fixed order
    fingerprint: Callable[[], str]


def _chitchat_file() -> Path:
    try:
        return Path(str(resources.files("chitchat_dataset") / "dataset.json"))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the chitchat transfer set needs the chitchat-dataset package: install the project's train extra "
            "(make install, or pip install -e '.[train]')"
        ) from None


def read_chitchat(path: Path) -> list[str]:
    """Every message of a Chit-Chat Challenge ``dataset.json`` (conversations -> turns -> messages), with
    whitespace collapsed, too short or too long ones left out, and duplicates kept once (first seen)."""
    conversations = json.loads(Path(path).read_text(encoding="utf-8"))
    seen: dict[str, None] = {}
    for conversation in conversations.values():
        for turn in conversation["messages"]:
            for message in turn:
                text = _SPACE.sub(" ", message["text"]).strip()
                if MIN_CHARS <= len(text) <= MAX_CHARS:
                    seen.setdefault(text, None)
    return list(seen)


@functools.cache
def _chitchat_texts() -> tuple[str, ...]:  # read once per process (258k messages, about a second)
    return tuple(read_chitchat(_chitchat_file()))


def _chitchat_fingerprint() -> str:
    digest = hashlib.sha256(_chitchat_file().read_bytes()).hexdigest()[:16]
    return f"chitchat-dataset {metadata.version('chitchat-dataset')} {digest}"


TRANSFER_SETS: dict[str, TransferSet] = {
    "chitchat": TransferSet("chitchat", _chitchat_texts, _chitchat_fingerprint),  # see the module docstring
}


def transfer_examples(sizes: Mapping[str, int], seed: int,
                      exclude: frozenset[str] = frozenset()) -> tuple[list[Example], dict[str, str]]:
    """``(examples, fingerprints)``: ``sizes[name]`` texts of each transfer set, drawn with ``seed``, less any
    in ``exclude`` (the labeled sets' texts: those have their own labels). The draw does not depend on
    ``exclude``, so texts labeled for one recipe's caps cover any other's."""
    examples: list[Example] = []
    fingerprints: dict[str, str] = {}
    for name, n in sizes.items():
        if name not in TRANSFER_SETS:
            raise ValueError(f"unknown transfer set {name!r}; known: {sorted(TRANSFER_SETS)}")
        if n < 1:
            raise ValueError(f"transfer set {name}: size must be >= 1, got {n}")
        pool = TRANSFER_SETS[name].texts()
        chosen = pool if n >= len(pool) else random.Random(f"{seed}:{name}").sample(pool, n)
        examples.extend(Example(text=t, source=name) for t in chosen if t not in exclude)
        fingerprints[f"transfer/{name}"] = TRANSFER_SETS[name].fingerprint()
    return examples, fingerprints
