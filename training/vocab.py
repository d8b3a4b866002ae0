"""A chat vocabulary: WordPiece pruned to the pieces a student's training texts use.

An ALBERT student's embedding table is half its parameters (30,522 pieces x 64 of its 3.9M), and chat
uses a fraction of BERT's WordPiece vocabulary. Pruning the pieces the training texts never or rarely use
frees that budget for a wider feed-forward block or a second layer group (``reshape_albert``) at the same
size.

The pieces of one character (``a`` and ``##a``) of every character the texts use are kept, so any word
made of those still segments into pieces (a greedy longest-match WordPiece falls back to shorter ones)
rather than becoming ``[UNK]``; so are the special tokens. (Look-alike letters from other scripts are
folded to ASCII before the model, by ``pipeline/textnorm.py``.) The rest are kept by how often the training texts use them. Kept pieces keep their order,
so ``[PAD]`` stays 0. A pruned model ships its own ``tokenizer.json``; the runtime reads it as any other.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


def piece_counts(tokenizer, texts: Sequence[str], batch_size: int = 2048) -> np.ndarray:
    """How often each piece of ``tokenizer`` (a ``tokenizers.Tokenizer``) occurs in ``texts``."""
    counts = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        for enc in tokenizer.encode_batch(list(texts[start:start + batch_size]), add_special_tokens=False):
            np.add.at(counts, enc.ids, 1)
    return counts


def chat_vocabulary(tokenizer, texts: Sequence[str], size: int, counts: np.ndarray | None = None) -> list[int]:
    """The ids (old numbering, ascending) of at most ``size`` pieces to keep (pieces the texts never use are
    not): the special tokens, the pieces of one
    character (alone and continuing) for every character of ``texts`` and of printable ASCII, then the pieces
    ``texts`` use most (``counts``: their ``piece_counts``, where already known). A word with a character
    none of the texts has becomes ``[UNK]``, as a word with a character outside the original vocabulary
    always did."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    prefix = json.loads(tokenizer.to_str())["model"].get("continuing_subword_prefix", "##")
    normalize = tokenizer.normalizer.normalize_str if tokenizer.normalizer is not None else str
    chars = {c for text in texts for c in normalize(text)} | {chr(c) for c in range(33, 127)}
    must = {i for tok, i in vocab.items() if tok.removeprefix(prefix) in chars and len(tok.removeprefix(prefix)) == 1}
    must |= {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    if size < len(must):
        raise ValueError(f"a vocabulary of {size} cannot hold the {len(must)} special and one-character pieces")
    counts = piece_counts(tokenizer, texts) if counts is None else counts
    order = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0 and i not in must]
    return sorted(must | {int(i) for i in order[:size - len(must)]})


def pruned_tokenizer(tokenizer, keep: Sequence[int]):
    """A copy of ``tokenizer`` (a ``tokenizers.Tokenizer`` with a WordPiece model) holding only the pieces
    ``keep`` (old ids), renumbered in order; the post-processor's and added tokens' ids follow."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.to_str())
    if spec["model"]["type"] != "WordPiece":
        raise ValueError(f"only a WordPiece vocabulary can be pruned, not {spec['model']['type']}")
    new_id = {old: new for new, old in enumerate(keep)}
    old_vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = {tok: new_id[i] for tok, i in sorted(old_vocab.items(), key=lambda kv: kv[1])
                              if i in new_id}
    for added in spec.get("added_tokens") or []:
        if added["id"] not in new_id:
            raise ValueError(f"added token {added['content']!r} (id {added['id']}) must be kept")
        added["id"] = new_id[added["id"]]
    _renumber(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    return Tokenizer.from_str(json.dumps(spec))


def _renumber(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    if processor.get("type") == "Sequence":
        for step in processor["processors"]:
            _renumber(step, new_id)
    for special in (processor.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if key in processor:
            processor[key] = [processor[key][0], new_id[processor[key][1]]]


@torch.no_grad()
def prune_embeddings(model, keep: Sequence[int]) -> None:
    """Keep only the rows ``keep`` of ``model``'s word embeddings (in place; config ids follow)."""
    emb = model.get_input_embeddings()
    index = torch.tensor(list(keep))
    pruned = nn.Embedding(len(keep), emb.embedding_dim)
    pruned.weight.copy_(emb.weight[index])
    model.set_input_embeddings(pruned)
    new_id = {old: new for new, old in enumerate(keep)}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):  # an id the vocabulary no longer holds (ALBERT's default bos 2): none
            setattr(model.config, name, new_id.get(value))
    model.config.vocab_size = len(keep)


@torch.no_grad()
def reshape_albert(model, *, groups: int | None = None, ffn: int | None = None, noise: float = 0.01) -> dict:
    """Give an ALBERT ``model`` ``groups`` layer groups (the ALBERT paper's ``num_hidden_groups``), each a copy
    of its shared layer, and/or ``ffn`` feed-forward units in each shared layer, so the model computes what
    it did and the groups or new units then learn. Returns what changed (for the run's record).

    The paper's ablation (its table 4) finds sharing the feed-forward block costs the most of what sharing
    costs, which makes a wider one the place to spend a pruned table's budget (on our data it fitted the
    labels no better, ALBERT v56 to v59 in the README). New units are made as
    Net2WiderNet makes them (Chen et al., 2016): each is a copy of an old unit (the strongest, by the norm of
    its output weights, first), the copied unit's output weights are shared out evenly between it and its
    copies, and a copy's input weights get Gaussian noise of ``noise`` times their unit's own spread, so the
    copies learn apart. (Silent new units, output weights zero, stayed silent: one epoch at 5e-5 left their
    output weights at 2% of the old ones' norm, ALBERT v56.)"""
    cfg = model.config
    if cfg.model_type != "albert":
        raise ValueError(f"layer groups and feed-forward width are ALBERT settings, not {cfg.model_type}'s")
    if groups is not None and groups != cfg.num_hidden_groups and (
            cfg.num_hidden_groups != 1 or not 1 <= groups <= cfg.num_hidden_layers):
        raise ValueError(f"groups must be 1..{cfg.num_hidden_layers} (passes), from one shared group; "
                         f"got {groups} from {cfg.num_hidden_groups}")
    if ffn is not None and ffn < cfg.intermediate_size:
        raise ValueError(f"ffn can only widen the feed-forward block ({cfg.intermediate_size} units), not narrow "
                         f"it to {ffn}: that would change what the model computes")
    changed: dict = {}
    encoder = model.albert.encoder
    if ffn is not None and ffn != cfg.intermediate_size:
        for group in encoder.albert_layer_groups:
            for layer in group.albert_layers:
                layer.ffn, layer.ffn_output = _split_units(layer.ffn, layer.ffn_output, ffn, noise)
        changed["ffn"] = {"from": cfg.intermediate_size, "to": ffn, "noise": noise}
        cfg.intermediate_size = ffn
    if groups is not None and groups != cfg.num_hidden_groups:
        first = encoder.albert_layer_groups[0]
        encoder.albert_layer_groups = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(groups - 1)])
        changed["groups"] = {"from": cfg.num_hidden_groups, "to": groups}
        cfg.num_hidden_groups = groups
    return changed


def _split_units(inward: nn.Linear, outward: nn.Linear, width: int, noise: float) -> tuple[nn.Linear, nn.Linear]:
    """A feed-forward block (``inward``: hidden -> units, ``outward``: units -> hidden) widened to ``width``
    units by copying old ones (``reshape_albert``)."""
    old = inward.out_features
    source = torch.argsort(outward.weight.norm(dim=0), descending=True)[torch.arange(width - old) % old]
    copies = torch.ones(old).index_add_(0, source, torch.ones(width - old))  # each old unit and its copies
    wide_in = nn.Linear(inward.in_features, width, dtype=inward.weight.dtype)
    spread = inward.weight[source].std(dim=1, keepdim=True)
    wide_in.weight.copy_(torch.cat([inward.weight, inward.weight[source]
                                    + noise * spread * torch.randn_like(inward.weight[source])]))
    wide_in.bias.copy_(torch.cat([inward.bias, inward.bias[source]]))
    shared = outward.weight / copies  # (hidden, old): what each copy of a unit contributes
    wide_out = nn.Linear(width, outward.out_features, dtype=outward.weight.dtype)
    wide_out.weight.copy_(torch.cat([shared, shared[:, source]], dim=1))
    wide_out.bias.copy_(outward.bias)
    return wide_in, wide_out


def reshape_for_chat(model, tokenizer_folder: Path, texts: Sequence[str], *, vocab_size: int | None = None,
                     groups: int | None = None, ffn: int | None = None) -> tuple[dict, object | None]:
    """Prune ``model``'s vocabulary to ``vocab_size`` pieces of ``texts`` and/or give an ALBERT ``groups``
    layer groups or ``ffn`` feed-forward units. Returns (what changed, the pruned ``tokenizers.Tokenizer`` or
    None)."""
    from tokenizers import Tokenizer

    changed: dict = {}
    pruned = None
    if vocab_size is not None:
        tokenizer = Tokenizer.from_file(str(Path(tokenizer_folder) / "tokenizer.json"))
        before = tokenizer.get_vocab_size(with_added_tokens=True)
        if vocab_size < before:
            counts = piece_counts(tokenizer, texts)  # the texts tokenised once, for the choice and the share
            keep = chat_vocabulary(tokenizer, texts, vocab_size, counts)
            pruned = pruned_tokenizer(tokenizer, keep)
            prune_embeddings(model, keep)
            changed["vocab"] = {"from": before, "to": len(keep),
                                "kept_share_of_pieces": round(float(counts[keep].sum() / max(1, counts.sum())), 5)}
    if groups is not None or ffn is not None:
        changed |= reshape_albert(model, groups=groups, ffn=ffn)
    return changed, pruned
