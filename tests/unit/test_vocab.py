"""A chat vocabulary: WordPiece pruned to the pieces training texts use, and ALBERT layer groups and a wider
feed-forward block; the reshaped model computes what it did, exports to int8 and rebuilds from its artifact."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AlbertForSequenceClassification, AutoTokenizer

from models.artifact import contract_heads
from models.runtime import TextClassifier
from models.torch_from_onnx import torch_model_from_artifact
from tests.tiny_models import minilm_dir, save_tiny_hf_model
from training.export import build_artifact
from training.students import count_parameters
from training.vocab import chat_vocabulary, piece_counts, pruned_tokenizer, reshape_albert, reshape_for_chat

pytestmark = pytest.mark.unit

CHAT = ["gg wp everyone", "you absolute idiot, uninstall", "nice shot!", "who wants to duo later",
        "that was a close game", "thanks for the carry lol", "u r such a loser", "love this map"] * 5


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's file pads to 128
    return tokenizer


def test_the_pruned_vocabulary_keeps_specials_single_characters_and_the_used_pieces(wordpiece) -> None:
    keep = chat_vocabulary(wordpiece, CHAT, 2000)
    assert keep == sorted(keep) and keep[0] == 0  # [PAD] stays 0
    used = {i for text in CHAT for i in wordpiece.encode(text).ids}
    assert used <= set(keep) and len(keep) < 2000  # every used piece, no unused ones beyond single characters
    pruned = pruned_tokenizer(wordpiece, keep)
    assert pruned.get_vocab_size() == len(keep) and pruned.padding is None
    for text in CHAT:  # the texts it was built from segment exactly as before, only renumbered
        old, new = wordpiece.encode(text), pruned.encode(text)
        assert new.tokens == old.tokens and new.ids == [keep.index(i) for i in old.ids]
    # a word whose piece was pruned still segments into pieces, never [UNK]
    rare = "photosynthesis"
    tokens = pruned.encode(rare, add_special_tokens=False).tokens
    assert tokens != wordpiece.encode(rare, add_special_tokens=False).tokens  # its pieces were pruned
    assert "[UNK]" not in tokens and "".join(t.removeprefix("##") for t in tokens) == rare
    assert pruned.encode("hi").tokens[0] == "[CLS]" and pruned.encode("hi").ids[0] == keep.index(101)
    with pytest.raises(ValueError, match="cannot hold"):
        chat_vocabulary(wordpiece, CHAT, 100)
    floor = set(chat_vocabulary(wordpiece, [], 2000))  # specials and printable ASCII's single characters
    tight = set(chat_vocabulary(wordpiece, CHAT, len(floor) + 3)) - floor
    counts = piece_counts(wordpiece, CHAT)
    counts[list(floor)] = -1
    assert tight == set(np.argsort(-counts, kind="stable")[:3].tolist())  # then the most used pieces


def test_piece_counts_count_every_occurrence(wordpiece) -> None:
    counts = piece_counts(wordpiece, ["good good good", "good"])
    assert counts[wordpiece.token_to_id("good")] == 4 and counts.sum() == 4


def _tiny_albert(tmp_path: Path, seed: int):
    """A tiny ALBERT of three passes, saved, with a batch of chat and its logits: (folder, model, batch, logits)."""
    folder = save_tiny_hf_model(tmp_path / "hf", family="albert", seed=seed)
    model = AlbertForSequenceClassification.from_pretrained(folder).eval()
    model.config.num_hidden_layers = 3
    batch = AutoTokenizer.from_pretrained(folder)(CHAT[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        return folder, model, batch, model(**batch).logits


def test_an_albert_reshaped_for_chat_computes_what_it_did_and_survives_int8_export(tmp_path: Path) -> None:
    folder, model, batch, before = _tiny_albert(tmp_path, seed=3)
    params = count_parameters(model)
    changed, pruned = reshape_for_chat(model, folder, CHAT, vocab_size=3000, groups=2)
    kept = changed["vocab"]["to"]
    assert changed["vocab"]["from"] == 30522 and kept < 3000 and model.config.vocab_size == kept
    assert changed["vocab"]["kept_share_of_pieces"] == 1.0  # every piece of these texts is kept
    assert changed["groups"] == {"from": 1, "to": 2} and len(model.albert.encoder.albert_layer_groups) == 2
    # the table shrank by (30,522 - kept) rows of 16; the second group added one layer's parameters
    layer = count_parameters(model.albert.encoder.albert_layer_groups[0])
    assert count_parameters(model) == params - (30522 - kept) * 16 + layer
    pruned.no_padding()  # MiniLM's file pads to 128, and so does its pruned copy
    enc = [pruned.encode(t) for t in CHAT[:8]]
    width = max(len(e.ids) for e in enc)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in enc])
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    # the groups then learn apart: they are copies, not one module
    first, second = model.albert.encoder.albert_layer_groups
    assert first.albert_layers[0].ffn.weight is not second.albert_layers[0].ffn.weight
    with torch.no_grad():  # as training moves them (the exporter would fold two equal tensors into one)
        for param in second.parameters():
            param.add_(0.01 * torch.randn_like(param))
        before = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits

    hf = tmp_path / "reshaped"
    model.save_pretrained(hf)
    pruned.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text())
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == kept
    artifact = tmp_path / "artifact"
    build_artifact(hf, artifact, name="tiny-chat", version="1", heads=contract_heads(["toxicity", "sentiment"]),
                   max_length=64, formats=("onnx", "onnx_int8"), base_model="random-init", training={})
    served = TextClassifier(artifact, backend="onnx", threads=1).predict(CHAT[:8])
    assert len(served) == 8
    rebuilt = torch_model_from_artifact(artifact)  # what a later warm start reads
    assert rebuilt.config.num_hidden_groups == 2 and rebuilt.config.vocab_size == kept
    with torch.no_grad():
        again = rebuilt(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(again, before, atol=1e-4, rtol=1e-4)  # from the fp32 ONNX weights


def test_a_wider_feed_forward_block_computes_what_it_did_and_exports(tmp_path: Path) -> None:
    folder, model, batch, before = _tiny_albert(tmp_path, seed=5)
    params = count_parameters(model)
    with pytest.raises(ValueError, match="only widen"):
        reshape_albert(model, ffn=32)
    exact = copy.deepcopy(model)
    old = model.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn_output.weight.clone()
    assert reshape_albert(exact, ffn=96, noise=0.0)["ffn"] == {"from": 64, "to": 96, "noise": 0.0}
    assert reshape_albert(model, ffn=96, groups=2) == {"ffn": {"from": 64, "to": 96, "noise": 0.01},
                                                        "groups": {"from": 1, "to": 2}}
    layer = model.albert.encoder.albert_layer_groups[1].albert_layers[0]
    assert model.config.intermediate_size == 96 and layer.ffn.out_features == 96 and layer.ffn_output.in_features == 96
    # 32 new units (32 inputs and a bias in, 32 outputs out), then the second group: a whole wide layer more
    assert count_parameters(model) == params + 32 * (32 + 1 + 32) + count_parameters(
        model.albert.encoder.albert_layer_groups[0])
    with torch.no_grad():
        torch.testing.assert_close(exact(**batch).logits, before, atol=1e-5, rtol=1e-5)  # copies share the work
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-2, rtol=1e-2)  # and noise moves it little
    # each new unit copies one of the 32 strongest old ones, which gives it half its voice
    wide = exact.albert.encoder.albert_layer_groups[0].albert_layers[0]
    strongest = set(torch.argsort(old.norm(dim=0), descending=True)[:32].tolist())
    for unit in range(64, 96):
        twin = next(i for i in range(64) if torch.equal(wide.ffn.weight[i], wide.ffn.weight[unit]))
        assert twin in strongest and torch.equal(wide.ffn_output.weight[:, unit], old[:, twin] / 2)
        assert torch.equal(wide.ffn_output.weight[:, twin], wide.ffn_output.weight[:, unit])
    assert not torch.equal(layer.ffn.weight[64:], exact.albert.encoder.albert_layer_groups[0].albert_layers[0]
                           .ffn.weight[64:])  # with noise, copies differ from the start and learn apart

    model.train()  # training moves the copies apart
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(**batch, labels=torch.rand(8, model.config.num_labels)).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits

    hf = tmp_path / "wide"
    model.save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_bytes((folder / name).read_bytes())
    artifact = tmp_path / "artifact"
    build_artifact(hf, artifact, name="tiny-wide", version="1", heads=contract_heads(["toxicity", "sentiment"]),
                   max_length=64, formats=("onnx", "onnx_int8"), base_model="random-init", training={})
    assert len(TextClassifier(artifact, backend="onnx", threads=1).predict(CHAT[:8])) == 8
    rebuilt = torch_model_from_artifact(artifact)  # what a later warm start reads
    assert rebuilt.config.intermediate_size == 96 and rebuilt.config.num_hidden_groups == 2
    with torch.no_grad():
        again = rebuilt(**batch).logits
    torch.testing.assert_close(again, before, atol=1e-4, rtol=1e-4)


def test_groups_are_an_albert_setting_from_one_shared_layer(tmp_path: Path) -> None:
    albert = AlbertForSequenceClassification.from_pretrained(save_tiny_hf_model(tmp_path / "a", family="albert"))
    with pytest.raises(ValueError, match="groups must be"):
        reshape_albert(albert, groups=5)  # more groups than passes
    from transformers import DistilBertForSequenceClassification
    distil = DistilBertForSequenceClassification.from_pretrained(save_tiny_hf_model(tmp_path / "d"))
    with pytest.raises(ValueError, match="ALBERT settings"):
        reshape_albert(distil, groups=2)
    assert len(albert.albert.encoder.albert_layer_groups) == 1  # a refused reshape changes nothing


def test_a_layer_teacher_must_read_the_students_token_ids(tmp_path: Path, wordpiece) -> None:
    """A student on a pruned vocabulary numbers its pieces anew: a teacher on the full one cannot follow it."""
    from transformers import PreTrainedTokenizerFast

    from training.recipe import _layer_teacher

    teacher = save_tiny_hf_model(tmp_path / "teacher", family="distilbert")
    full = AutoTokenizer.from_pretrained(minilm_dir())
    assert _layer_teacher(teacher, full).config.dim == 32
    keep = chat_vocabulary(wordpiece, CHAT, 2000)
    pruned = PreTrainedTokenizerFast(tokenizer_object=pruned_tokenizer(wordpiece, keep))
    with pytest.raises(ValueError, match="another vocabulary"):
        _layer_teacher(teacher, pruned)
