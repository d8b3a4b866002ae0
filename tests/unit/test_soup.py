"""Model soups (`chatmod train soup`): weights averaged exactly, members of another shape refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from models.registry import ModelRegistry
from tests.tiny_models import N_LOGITS, build_tiny_artifact, save_tiny_hf_model
from training.requantize import model_folder
from training.soup import averaged_state, heads_of_artifact, make_soup, soup_weights

pytestmark = pytest.mark.unit
TEXTS = ["you are a clown", "great game everyone", "i will find where you live"]


def _logits(folder: Path) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits  # (texts, logits)


def _heads() -> list[dict]:
    from models.artifact import contract_heads

    return [h.model_dump(mode="json") for h in contract_heads(["toxicity", "sentiment"])]


def test_the_soup_is_the_weighted_mean_of_its_members(tmp_path: Path) -> None:
    a = save_tiny_hf_model(tmp_path / "a", seed=0)
    b = save_tiny_hf_model(tmp_path / "b", seed=1)
    record = make_soup([a, b], ["a", "b"], tmp_path / "soup", weights=[1, 3], heads=_heads(), family="distilbert")
    assert record["members"] == [{"source": "a", "weight": 0.25}, {"source": "b", "weight": 0.75}]
    assert json.loads((tmp_path / "soup" / "chatmod_run.json").read_text())["stage"] == "soup"
    ma, mb, ms = (AutoModelForSequenceClassification.from_pretrained(p).state_dict() for p in (a, b, tmp_path / "soup"))
    for key, tensor in ms.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.25 * ma[key] + 0.75 * mb[key])
    # a member weighted 1 is that member, logit for logit; an even soup is neither member
    make_soup([a, b], ["a", "b"], tmp_path / "only-b", weights=[0, 1], heads=_heads())
    torch.testing.assert_close(_logits(tmp_path / "only-b"), _logits(b))
    make_soup([a, b], ["a", "b"], tmp_path / "even", heads=_heads())
    even = _logits(tmp_path / "even")
    assert not torch.allclose(even, _logits(a)) and not torch.allclose(even, _logits(b))


def test_stored_int8_models_are_rebuilt_and_their_heads_kept(tmp_path: Path) -> None:
    store = ModelRegistry(tmp_path / "store")
    for version, seed in (("1", 0), ("2", 1)):
        build_tiny_artifact(tmp_path / f"d{version}", name="tiny-d", version=version, seed=seed, formats=("onnx_int8",))
        store.add(tmp_path / f"d{version}")
    folders = [model_folder(ref, store.store, tmp_path / ref)[0] for ref in ("tiny-d@1", "tiny-d@2")]
    heads = heads_of_artifact(store.get("tiny-d@1")[1])
    assert all(not h["thresholds"] for h in heads)  # refitted on the soup, not inherited
    record = make_soup(folders, ["tiny-d@1", "tiny-d@2"], tmp_path / "soup", heads=heads, family="distilbert")
    assert record["heads"] == heads and record["family"] == "distilbert" and record["parameters"] > 0
    assert _logits(tmp_path / "soup").shape == (len(TEXTS), N_LOGITS)


def test_members_of_another_shape_are_refused(tmp_path: Path) -> None:
    d = save_tiny_hf_model(tmp_path / "d", family="distilbert")
    with pytest.raises(ValueError, match="model_type is albert in al, distilbert in d"):
        make_soup([d, save_tiny_hf_model(tmp_path / "al", family="albert")], ["d", "al"], tmp_path / "x",
                  heads=_heads())
    with pytest.raises(ValueError, match=f"num_labels is {N_LOGITS - 1} in n"):
        make_soup([d, save_tiny_hf_model(tmp_path / "n", num_labels=N_LOGITS - 1)], ["d", "n"], tmp_path / "y",
                  heads=_heads())
    a, b = {"w": torch.ones(2, 2)}, {"w": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=r"w is \(2, 3\) in b, \(2, 2\) in a"):
        averaged_state([a, b], [0.5, 0.5], ["a", "b"])
    with pytest.raises(ValueError, match="other tensors"):
        averaged_state([a, {"v": torch.ones(2, 2)}], [0.5, 0.5], ["a", "c"])
    with pytest.raises(ValueError, match="2 weights for 3 members"):
        soup_weights([1, 2], 3)
    with pytest.raises(ValueError, match="at least two members"):
        soup_weights(None, 1)
    with pytest.raises(ValueError, match="not all 0"):
        soup_weights([0, 0], 2)
