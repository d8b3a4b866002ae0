"""Model soups: the weights of fine-tuned models of one shape, averaged (Wortsman et al., 2022).

Rounds warm-started from the same model stay in one basin of the loss, so their weighted mean is a model
too, often better than each of them and never dearer to serve: one model's compute, one artifact. It is
how two rounds that each trade a little of one metric for another (say, templates that mend a behaviour at
some OLID cost) can be kept together without a third training run.

Members are stored models (``NAME@VERSION``; int8 artifacts are rebuilt, their weights dequantised) or
trained model folders. They must share the architecture, every tensor's shape, the heads in the same
order and the tokenizer's vocabulary; anything else is refused with the difference named. The soup is a
trained-model folder with its own ``chatmod_run.json`` (stage ``soup``, the members and their weights),
ready for the same evaluation, export and model card as any student.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from models.artifact import read_manifest

SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "embedding_size", "num_hidden_groups", "inner_group_num", "num_labels")


def soup_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``weights`` normalised to sum to 1 (uniform where None)."""
    if n < 2:
        raise ValueError(f"a soup needs at least two members, got {n}")
    if weights is None or len(weights) == 0:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} members: give one per member, or none (uniform)")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def averaged_state(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float],
                   names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The weighted mean of ``states`` (state dicts with the same keys and shapes); integer buffers (position
    ids, token types) must be equal and are taken as they are."""
    first = states[0]
    for name, state in zip(names[1:], states[1:]):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))[:5]
            raise ValueError(f"{name} has other tensors than {names[0]} (e.g. {diff}): not the same architecture")
        for key, tensor in state.items():
            if tensor.shape != first[key].shape:
                raise ValueError(f"{key} is {tuple(tensor.shape)} in {name}, {tuple(first[key].shape)} in "
                                 f"{names[0]}: the members must have the same shape")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in first.items():
        if not tensor.is_floating_point():
            for name, state in zip(names[1:], states[1:]):
                if not torch.equal(state[key], tensor):
                    raise ValueError(f"the buffer {key} differs between {names[0]} and {name}")
            out[key] = tensor.clone()
            continue
        total = torch.zeros_like(tensor, dtype=torch.float32)
        for w, state in zip(weights, states):
            total += w * state[key].to(torch.float32)  # (same shape as the tensor)
        out[key] = total.to(tensor.dtype)
    return out


def make_soup(folders: Sequence[Path], names: Sequence[str], out: Path, weights: Sequence[float] | None = None,
              heads: Sequence[dict] | None = None, family: str | None = None) -> dict:
    """Average the models in ``folders`` (HF folders; ``names`` say where each came from) into ``out``.

    ``heads``: the members' heads (their records'), where a folder has no ``chatmod_run.json``. Returns the
    soup's record, also written to ``out/chatmod_run.json``."""
    weights = soup_weights(weights, len(folders))
    records = [_record(Path(f)) for f in folders]
    member_heads = [r.get("heads") for r in records]
    heads = list(heads) if heads is not None else next((h for h in member_heads if h), None)
    if heads is None:
        raise ValueError("no member records its heads: pass them (a stored model's manifest has them)")
    for name, theirs in zip(names, member_heads):
        if theirs is not None and [_head_key(h) for h in theirs] != [_head_key(h) for h in heads]:
            raise ValueError(f"{name} has other heads ({[_head_key(h) for h in theirs]}) than the soup "
                             f"({[_head_key(h) for h in heads]})")
    models = [AutoModelForSequenceClassification.from_pretrained(f).eval() for f in folders]
    tokenizers = [AutoTokenizer.from_pretrained(f) for f in folders]
    _check_configs(models, names)
    _check_vocab(tokenizers, names)
    state = averaged_state([m.state_dict() for m in models], weights, names)
    soup = models[0]
    soup.load_state_dict(state)
    first = next((r for r in records if r), {})
    record = {"stage": "soup", "family": family or first.get("family") or soup.config.model_type,
              "members": [{"source": n, "weight": round(w, 6)} for n, w in zip(names, weights)],
              "teacher": first.get("teacher"), "teacher_parameters": first.get("teacher_parameters"),
              "heads": heads, "config": first.get("config", {}), "versions": _versions(),
              "data": first.get("data", {}), "init": {"soup_of": list(names)}, "n_train": first.get("n_train", 0),
              "parameters": sum(p.numel() for p in soup.parameters()),
              "result": {"seconds": 0.0, "steps": 0},
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    soup.save_pretrained(out, safe_serialization=True)
    tokenizers[0].save_pretrained(out)
    (out / "chatmod_run.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def heads_of_artifact(artifact: Path) -> list[dict]:
    """A stored model's heads as a run record lists them (thresholds and metrics are refitted on the soup)."""
    return [h.model_copy(update={"thresholds": {}, "block_thresholds": {}, "metrics": {}, "logit_bias": {}})
            .model_dump(mode="json") for h in read_manifest(Path(artifact)).heads]


def _record(folder: Path) -> dict:
    path = folder / "chatmod_run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _head_key(head: dict) -> tuple:
    return head["task"], tuple(head["labels"])


def _check_configs(models: Sequence, names: Sequence[str]) -> None:
    first = models[0].config
    for name, model in zip(names[1:], models[1:]):
        for key in SHAPE_KEYS:
            mine, theirs = getattr(first, key, None), getattr(model.config, key, None)
            if mine != theirs:
                raise ValueError(f"{key} is {theirs} in {name}, {mine} in {names[0]}: the members must have one "
                                 "architecture")


def _check_vocab(tokenizers: Sequence, names: Sequence[str]) -> None:
    first = tokenizers[0].get_vocab()
    for name, tokenizer in zip(names[1:], tokenizers[1:]):
        if tokenizer.get_vocab() != first:
            raise ValueError(f"{name} has another vocabulary than {names[0]}: its embedding rows mean other pieces")


def _versions() -> dict[str, str]:
    from training.recipe import package_versions

    return package_versions()
