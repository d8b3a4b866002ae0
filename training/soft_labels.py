"""A teacher's soft labels, stored once and distilled from many times.

The strong teacher (all-mpnet-base-v2, 110M parameters) costs about 20 ms per text forward on two CPU
cores. Running it inside every student's training loop would pay that again for every student and every
epoch; instead ``label`` runs it once over the recipe's training texts and stores its logits. The file is
small enough to commit (texts' SHA-256 prefixes and float16 logits: about 26 bytes a text), so a later
session, or a machine without the teacher, distils students from it: ``train(..., soft_targets=...)``.
It is also the way to distil across tokenizers: the teacher reads each text with its own.

Format: ``<name>.npz`` with ``keys`` (n, 8) uint8 (the first 8 bytes of sha256(text)) and ``logits``
(n, num_logits) float16, and ``<name>.json`` beside it: teacher, heads, data fingerprints, recipe.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

KEY_BYTES = 8


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:KEY_BYTES]


def label_texts(model_dir: Path, texts: Sequence[str], max_length: int = 96, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None, precision: str = "fp32") -> np.ndarray:
    """The teacher's logits ``(len(texts), num_labels)`` (float32), length-sorted batches, input order.
    ``precision="bf16"`` (or "auto" where it is native) runs the matmuls in bfloat16."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.distill import TrainConfig, autocast

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    pad = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for done, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (batch, seq)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            with autocast(TrainConfig(precision=precision), device.type):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits.float().cpu().numpy()
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    return out


def save(path: Path, texts: Sequence[str], logits: np.ndarray, meta: dict) -> Path:
    """Write ``path`` (.npz) and its ``.json`` description; duplicate texts are stored once."""
    path = Path(path)
    if len(texts) != len(logits):
        raise ValueError(f"{len(texts)} texts but {len(logits)} rows of logits")
    keys: dict[bytes, int] = {}
    for i, text in enumerate(texts):
        keys.setdefault(text_key(text), i)
    rows = list(keys.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES),
                        logits=logits[rows].astype(np.float16))
    meta = meta | {"texts": len(rows), "num_logits": int(logits.shape[1]),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
    return path


class SoftLabels:
    """A stored teacher's logits, looked up by text."""

    def __init__(self, path: Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no soft labels at {path}; make them with `chatmod train label`")
        data = np.load(path)
        keys, logits = data["keys"], data["logits"]
        if keys.shape[0] != logits.shape[0] or keys.shape[1] != KEY_BYTES:
            raise ValueError(f"{path}: {keys.shape} keys for {logits.shape} logits")
        self.meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
        self._rows = {bytes(k): i for i, k in enumerate(keys)}
        self._logits = logits.astype(np.float32)
        self.num_logits = int(logits.shape[1])

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, text: str) -> np.ndarray | None:
        row = self._rows.get(text_key(text))
        return None if row is None else self._logits[row]

    def for_texts(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        return [self.get(t) for t in texts]
