"""Students built from a teacher start where the teacher is: same embeddings, same chosen layers."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from tests.tiny_models import N_LOGITS
from training.students import albert_from_teacher, count_parameters, distilbert_from_teacher, select_layers

pytestmark = pytest.mark.unit

VOCAB = 30522


def tiny_bert(seed: int = 0, vocab: int = VOCAB) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=N_LOGITS)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a non-zero segment-0 embedding, so folding it into positions is really tested
        model.bert.embeddings.token_type_embeddings.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return tiny_bert()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(1000, 2000, (3, 11), generator=torch.Generator().manual_seed(1))  # (batch, seq)


def test_distilbert_student_reproduces_chosen_teacher_layers(teacher, ids) -> None:
    student = distilbert_from_teacher(teacher, layers=[0, 2]).eval()
    with torch.no_grad():
        zeros = torch.zeros_like(ids)
        t = teacher(input_ids=ids, token_type_ids=zeros, output_hidden_states=True).hidden_states
        s = student(input_ids=ids, output_hidden_states=True).hidden_states
        # t[0] embeddings, t[i+1] output of teacher layer i; s likewise for the student's two layers
        torch.testing.assert_close(s[0], t[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(s[1], t[1], atol=1e-5, rtol=0)  # student layer 0 == teacher layer 0
        second = student.distilbert.transformer.layer[1](t[2])  # teacher layer 1 output -> student layer 1
        second = second[0] if isinstance(second, tuple) else second
        torch.testing.assert_close(second, t[3], atol=1e-5, rtol=0)  # == teacher layer 2
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.classifier.bias, teacher.classifier.bias)
    assert torch.equal(student.pre_classifier.weight, teacher.bert.pooler.dense.weight)
    assert student.config.n_layers == 2 and student.config.num_labels == N_LOGITS
    assert student.config.chatmod_init == {"from_layers": [0, 2]}


def test_distilbert_default_layers_are_every_other(teacher) -> None:
    student = distilbert_from_teacher(teacher, n_layers=2)
    assert student.config.chatmod_init["from_layers"] == [0, 2]
    assert count_parameters(student) < count_parameters(teacher)


def test_albert_student_is_smaller_and_shares_the_chosen_layer(teacher) -> None:
    distil = distilbert_from_teacher(teacher, n_layers=2)
    albert, _ = albert_from_teacher(teacher, embedding_size=16, repetitions=3, shared_from=1)
    assert count_parameters(albert) < count_parameters(distil)
    assert albert.config.num_hidden_groups == 1 and albert.config.num_hidden_layers == 3
    assert len(albert.albert.encoder.albert_layer_groups) == 1
    shared = albert.albert.encoder.albert_layer_groups[0].albert_layers[0]
    src = teacher.bert.encoder.layer[1]
    pairs = [
        (shared.attention.query, src.attention.self.query),
        (shared.attention.key, src.attention.self.key),
        (shared.attention.value, src.attention.self.value),
        (shared.attention.dense, src.attention.output.dense),
        (shared.attention.LayerNorm, src.attention.output.LayerNorm),
        (shared.ffn, src.intermediate.dense),
        (shared.ffn_output, src.output.dense),
        (shared.full_layer_layer_norm, src.output.LayerNorm),
    ]
    for dst, ref in pairs:
        assert torch.equal(dst.weight, ref.weight) and torch.equal(dst.bias, ref.bias)
    assert torch.equal(albert.classifier.weight, teacher.classifier.weight)
    assert albert.config.chatmod_init["shared_from"] == 1


def test_albert_svd_error_falls_as_embedding_size_grows(teacher) -> None:
    errors = [albert_from_teacher(teacher, embedding_size=k)[1] for k in (4, 8, 16, 24, 31)]
    assert all(0.0 < e < 1.0 for e in errors)
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] - 0.2


def test_albert_embedding_size_must_factorise(teacher) -> None:
    with pytest.raises(ValueError, match="embedding_size"):
        albert_from_teacher(teacher, embedding_size=32)
    with pytest.raises(ValueError, match="embedding_size"):
        albert_from_teacher(teacher, embedding_size=0)


def test_albert_shared_layer_must_exist(teacher) -> None:
    with pytest.raises(ValueError, match="shared_from"):
        albert_from_teacher(teacher, embedding_size=16, shared_from=4)


def test_select_layers() -> None:
    assert select_layers(6, 3) == [0, 2, 4]
    assert select_layers(4, 2) == [0, 2]
    assert select_layers(6, 6) == list(range(6))
    assert select_layers(12, 4) == [0, 3, 6, 9]
    for bad in ((6, 0), (6, 7), (4, -1)):
        with pytest.raises(ValueError, match="student layers"):
            select_layers(*bad)


def test_unsupported_teacher_family_is_refused() -> None:
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, num_labels=2)
    roberta = RobertaForSequenceClassification(cfg)
    with pytest.raises(ValueError, match="BERT or DistilBERT teachers; got model_type 'roberta'"):
        distilbert_from_teacher(roberta)
    with pytest.raises(ValueError, match="model_type 'roberta'"):
        albert_from_teacher(roberta, embedding_size=8)


def test_a_model_trained_before_a_label_was_appended_is_laid_out_again(ids) -> None:
    from models.artifact import Head, contract_heads
    from models.labels import BASE_TOXICITY_LABELS, ProblemType, Task
    from training.students import fit_heads

    old_heads = [Head(task=Task.TOXICITY, labels=list(BASE_TOXICITY_LABELS), problem_type=ProblemType.MULTI_LABEL),
                 Head(task=Task.SENTIMENT, labels=["negative", "neutral", "positive"],
                      problem_type=ProblemType.SINGLE_LABEL, offset=6)]
    torch.manual_seed(3)
    old = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64, num_labels=9)).eval()
    with torch.no_grad():
        before = old(input_ids=ids).logits
    new_heads = contract_heads([Task.TOXICITY, Task.SENTIMENT])
    assert fit_heads(old, old_heads, new_heads) == ["targeted"]
    with torch.no_grad():
        after = old(input_ids=ids).logits
    assert after.shape == (3, N_LOGITS) and old.config.num_labels == N_LOGITS
    torch.testing.assert_close(after[:, :6], before[:, :6])  # every label keeps its own row
    torch.testing.assert_close(after[:, 7:], before[:, 6:])  # sentiment moved one column right
    torch.testing.assert_close(after[:, 6], before[:, 4])  # targeted starts as insult
    assert old.config.id2label[6] == "targeted"
    sentiment_first = [h.model_copy(update={"offset": 3 if h.task == Task.TOXICITY else 0}) for h in old_heads[::-1]]
    with pytest.raises(ValueError, match="no donor"):
        fit_heads(old, sentiment_first, [Head(task=Task.SENTIMENT, labels=["mixed"],
                                              problem_type=ProblemType.SINGLE_LABEL)])
