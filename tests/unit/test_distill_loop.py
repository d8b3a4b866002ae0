"""The training loop on tiny models: finite losses, one logged term each, and it really learns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from models.artifact import contract_heads
from models.labels import Task
from tests.tiny_models import N_LOGITS, minilm_dir
from training.data import SENT, Example, tox
from training.distill import TrainConfig, bucketed_batches, collate, hard_label_loss, train
from training.students import distilbert_from_teacher

pytestmark = pytest.mark.unit

HEADS = contract_heads([Task.TOXICITY, Task.SENTIMENT])
WORDS = ["chat", "game", "team", "play", "win", "map", "mid", "push", "gank", "ward", "heal", "tower"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def tiny_teacher(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=N_LOGITS)
    return BertForSequenceClassification(cfg).eval()


def learnable_examples(n: int, seed: int = 0) -> list[Example]:
    """Texts containing "bad" are toxic, others not; every fourth row is a sentiment row instead."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(2, 6))
        if i % 4 == 3:
            positive = i % 8 == 3
            words.insert(rng.randrange(len(words) + 1), "great" if positive else "awful")
            out.append(Example(" ".join(words), "s", sentiment=SENT["positive" if positive else "negative"],
                               sentiment_classes=(1, 0, 1)))
            continue
        toxic = i % 2 == 0
        if toxic:
            words.insert(rng.randrange(len(words) + 1), "bad")
        out.append(Example(" ".join(words), "t", tox(toxic=int(toxic))))
    return out


def dataset_hard_loss(model, tokenizer, examples: list[Example]) -> float:
    encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=32)["input_ids"]
    batch = collate(encoded, examples, tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return float(hard_label_loss(logits, HEADS, batch))


def test_distillation_logs_each_term_and_stays_finite(tokenizer, tmp_path: Path) -> None:
    teacher = tiny_teacher()
    student = distilbert_from_teacher(teacher, n_layers=2)
    steps: list[int] = []
    cfg = TrainConfig(batch_size=8, epochs=2, max_steps=10, log_every=5, max_length=32, lr=1e-3)
    result = train(student, HEADS, learnable_examples(64), tokenizer, cfg, teacher=teacher,
                   log_path=tmp_path / "log.jsonl", on_step=lambda step, total, _: steps.append(step))
    assert result.steps == 10 and steps == list(range(1, 11))
    assert [h["step"] for h in result.history] == [5, 10]
    for record in result.history:
        assert {"loss_soft", "loss_hard", "loss_cos", "loss_total"} <= set(record)
        losses = [record[k] for k in ("loss_soft", "loss_hard", "loss_cos", "loss_total")]
        assert all(torch.isfinite(torch.tensor(v)) and v >= 0 for v in losses)
        weighted_sum = record["loss_soft"] + record["loss_hard"] + record["loss_cos"]  # all weights 1
        assert record["loss_total"] == pytest.approx(weighted_sum, abs=1e-4)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == result.history
    assert not student.training  # handed back in eval mode


def test_without_a_teacher_only_the_hard_loss_is_logged(tokenizer) -> None:
    teacher = tiny_teacher()
    cfg = TrainConfig(batch_size=8, max_steps=4, log_every=2, max_length=32)
    result = train(teacher, HEADS, learnable_examples(32), tokenizer, cfg)
    assert len(result.history) == 2
    for record in result.history:
        assert "loss_hard" in record and "loss_soft" not in record and "loss_cos" not in record
        assert record["loss_total"] == pytest.approx(record["loss_hard"])


def test_no_cosine_term_when_its_weight_is_zero(tokenizer) -> None:
    teacher = tiny_teacher()
    student = distilbert_from_teacher(teacher, n_layers=2)
    cfg = TrainConfig(batch_size=8, max_steps=2, log_every=2, max_length=32, alpha_cos=0.0)
    record = train(student, HEADS, learnable_examples(16), tokenizer, cfg, teacher=teacher).history[-1]
    assert "loss_soft" in record and "loss_hard" in record and "loss_cos" not in record


def tiny_albert(seed: int = 0, hidden: int = 32, heads: int = 2, passes: int = 2):
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(seed)
    cfg = AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=hidden, num_hidden_layers=passes,
                       num_attention_heads=heads, intermediate_size=64, max_position_embeddings=64,
                       num_labels=N_LOGITS)
    return AlbertForSequenceClassification(cfg).eval()


def teacher_attention_kl(student, teacher, tokenizer, examples: list[Example], layer_map: str = "depth") -> float:
    """The layer-wise attention KL of ``student`` to ``teacher`` over ``examples`` (eval mode, eager), over the
    layers ``layer_map`` pairs."""
    from training.distill import _eager_attention, layer_pairs
    from training.losses import attention_kl_loss

    encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=32)["input_ids"]
    batch = collate(encoded, examples, tokenizer.pad_token_id)
    restore = _eager_attention([student, teacher])
    student.eval()
    with torch.no_grad():
        s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
        t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    for m, impl in restore:
        m.set_attn_implementation(impl)
    pairs = layer_pairs(len(s.attentions), len(t.attentions), layer_map)
    return sum(float(attention_kl_loss(s.attentions[a - 1], t.attentions[b - 1], batch.attention_mask))
               for a, b in pairs) / len(pairs)


def test_a_layer_teacher_teaches_an_albert_student_its_attention(tokenizer) -> None:
    """Beside stored soft targets, a BERT of the student's width and heads (4 layers against 2 passes of a
    shared layer) teaches layer by layer: both terms are logged, and the student's attention moves to the
    teacher's (the KL falls by more than half); the student is handed back with its own attention kernel."""
    import numpy as np

    examples = learnable_examples(64)
    teacher, student = tiny_teacher(seed=3), tiny_albert(seed=4)
    impl = student.config._attn_implementation
    before = teacher_attention_kl(student, teacher, tokenizer, examples)
    soft = [np.zeros(N_LOGITS, dtype=np.float32) for _ in examples]
    cfg = TrainConfig(batch_size=16, max_steps=60, epochs=100, log_every=10, max_length=32, lr=3e-3,
                      alpha_hard=0.0, alpha_soft=0.0, alpha_hidden=1.0, alpha_attn=1.0)
    result = train(student, HEADS, examples, tokenizer, cfg, soft_targets=soft, layer_teacher=teacher)
    assert {"loss_hidden", "loss_attn"} <= set(result.history[-1])
    assert result.history[-1]["loss_total"] == pytest.approx(
        result.history[-1]["loss_hidden"] + result.history[-1]["loss_attn"], abs=1e-4)
    after = teacher_attention_kl(student, teacher, tokenizer, examples)
    assert after < 0.5 * before, (before, after)
    assert student.config._attn_implementation == impl


def test_a_layer_teacher_must_match_the_students_width_and_heads(tokenizer) -> None:
    import numpy as np

    examples = learnable_examples(8)
    soft = [np.zeros(N_LOGITS, dtype=np.float32) for _ in examples]
    cfg = TrainConfig(batch_size=8, max_steps=1, max_length=32, alpha_attn=1.0)
    with pytest.raises(ValueError, match=r"same width and attention heads.*\(32, 4\).*\(32, 2\)"):
        train(tiny_albert(heads=4), HEADS, examples, tokenizer, cfg, soft_targets=soft, layer_teacher=tiny_teacher())
    with pytest.raises(ValueError, match="needs alpha_hidden or alpha_attn"):
        train(tiny_albert(), HEADS, examples, tokenizer, TrainConfig(max_length=32), soft_targets=soft,
              layer_teacher=tiny_teacher())


def test_layer_pairs_spread_the_student_over_the_teacher() -> None:
    from training.distill import layer_pairs

    assert layer_pairs(3, 3) == [(1, 1), (2, 2), (3, 3)]
    assert layer_pairs(2, 4) == [(1, 2), (2, 4)]
    assert layer_pairs(4, 2)[-1] == (4, 2) and layer_pairs(4, 2)[0] == (1, 1)


def test_a_tiny_model_learns_a_trivial_task(tokenizer) -> None:
    examples = learnable_examples(64)
    model = tiny_teacher(seed=1)
    before = dataset_hard_loss(model, tokenizer, examples)
    cfg = TrainConfig(batch_size=16, max_steps=100, epochs=100, log_every=10, max_length=32, lr=1e-2,
                      warmup_fraction=0.1)
    result = train(model, HEADS, examples, tokenizer, cfg)
    after = dataset_hard_loss(model, tokenizer, examples)
    assert result.steps == 100
    assert before > 1.0 and after < 0.2 * before, (before, after)  # two heads at chance: ~ln 2 each
    assert result.history[-1]["loss_hard"] < 0.2 * result.history[0]["loss_hard"]


def test_a_run_resumes_from_its_last_epoch_checkpoint(tokenizer, tmp_path: Path) -> None:
    """A run killed in its third epoch, started again with the same checkpoint folder, goes on after the
    second and ends where a straight run ends: the same steps and the same weights."""
    examples = learnable_examples(32)
    cfg = TrainConfig(batch_size=8, epochs=3, log_every=1, max_length=32, lr=1e-3)  # 4 steps an epoch
    straight = tiny_teacher(seed=2)
    done = train(straight, HEADS, examples, tokenizer, cfg)

    class Killed(Exception):
        pass

    def kill_in_third_epoch(step: int, total: int, losses: dict) -> None:
        if step == 10:
            raise Killed

    crashed = tiny_teacher(seed=2)
    with pytest.raises(Killed):
        train(crashed, HEADS, examples, tokenizer, cfg, on_step=kill_in_third_epoch, checkpoint=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
    resumed_model = tiny_teacher(seed=99)  # weights come from the checkpoint, not from here
    resumed = train(resumed_model, HEADS, examples, tokenizer, cfg, checkpoint=tmp_path / "ckpt")
    assert resumed.steps == done.steps == 12
    assert [r["step"] for r in resumed.history] == [9, 10, 11, 12]  # only the third epoch ran again
    assert not (tmp_path / "ckpt").exists()  # removed once the run is complete
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed_model.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_a_loss_that_is_not_a_number_stops_the_run(tokenizer) -> None:
    from training.distill import TrainingDiverged

    model = tiny_teacher()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        train(model, HEADS, learnable_examples(16), tokenizer, TrainConfig(batch_size=8, max_length=32))


def test_train_refuses_bad_configs(tokenizer) -> None:
    model = tiny_teacher()
    with pytest.raises(ValueError, match="no training examples"):
        train(model, HEADS, [], tokenizer, TrainConfig())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        train(model, HEADS, learnable_examples(4), tokenizer, TrainConfig(temperature=0))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0).validate()


def test_bucketed_batches_cover_every_index_once() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(3, 90) for _ in range(1003)]
    batches = bucketed_batches(lengths, batch_size=16, rng=random.Random(1), chunk=5)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 16 for b in batches)
    # similar lengths share a batch: far less padding than batches drawn at random
    def spread(groups: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in groups) / len(groups)

    shuffled = list(range(len(lengths)))
    random.Random(2).shuffle(shuffled)
    at_random = [shuffled[i : i + 16] for i in range(0, len(shuffled), 16)]
    assert spread(batches) < 0.35 * spread(at_random)
    again = bucketed_batches(lengths, batch_size=16, rng=random.Random(1), chunk=5)
    assert again == batches  # deterministic for a seed


def test_contract_heads_lays_columns_out_in_order() -> None:
    tox_head, sent_head = HEADS
    assert (tox_head.offset, tox_head.width, sent_head.offset, sent_head.width) == (0, 7, 7, 3)
    only_sentiment = contract_heads([Task.SENTIMENT])
    assert only_sentiment[0].offset == 0 and only_sentiment[0].labels == ["negative", "neutral", "positive"]


def test_layer_map_last_pairs_only_the_last_layers_and_teaches_them(tokenizer) -> None:
    """``layer_map="last"`` (MiniLM's choice) pairs the student's last layer with the teacher's alone: the
    student's last attention moves to the teacher's last, and an unknown map is refused."""
    import numpy as np

    from training.distill import layer_pairs

    assert layer_pairs(9, 6, "last") == [(9, 6)]
    assert layer_pairs(2, 4, "last") == [(2, 4)]
    with pytest.raises(ValueError, match="layer_map must be one of"):
        TrainConfig(layer_map="first").validate()

    examples = learnable_examples(64)
    teacher, student = tiny_teacher(seed=3), tiny_albert(seed=4)

    before = teacher_attention_kl(student, teacher, tokenizer, examples, "last")
    soft = [np.zeros(N_LOGITS, dtype=np.float32) for _ in examples]
    cfg = TrainConfig(batch_size=16, max_steps=60, epochs=100, log_every=10, max_length=32, lr=3e-3,
                      alpha_hard=0.0, alpha_soft=0.0, alpha_hidden=1.0, alpha_attn=1.0, layer_map="last")
    result = train(student, HEADS, examples, tokenizer, cfg, soft_targets=soft, layer_teacher=teacher)
    assert {"loss_hidden", "loss_attn"} <= set(result.history[-1])
    assert teacher_attention_kl(student, teacher, tokenizer, examples, "last") < 0.5 * before
