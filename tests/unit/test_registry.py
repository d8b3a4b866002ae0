"""ModelRegistry: add, promote, roll back, seed a fresh store, survive two writers at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.artifact import ArtifactError, read_manifest, verify_artifact
from models.labels import Task
from models.registry import DEFAULT_SEED, ModelRegistry, RegistryError
from models.runtime import ModelSet

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_add_promote_rollback_round_trip(
    tiny_artifact: Path, tiny_albert_artifact: Path, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "store")
    with pytest.raises(RegistryError, match="no model is current for toxicity"):
        reg.current_path(Task.TOXICITY)

    first = reg.add(tiny_artifact)  # auto version per name: 1, 2, ...
    second = reg.add(tiny_artifact, candidate=True)
    albert = reg.add(tiny_albert_artifact, version="2024-06-01")
    assert (first.ref, second.ref, albert.ref) == (
        "tiny-distilbert@1",
        "tiny-distilbert@2",
        "tiny-albert@2024-06-01",
    )
    assert read_manifest(reg.get(second.ref)[1]).version == "2"  # manifest rewritten, checksums still valid
    verify_artifact(reg.get(second.ref)[1])
    assert [m.ref for m in reg.manifests()] == ["tiny-albert@2024-06-01", "tiny-distilbert@1", "tiny-distilbert@2"]
    assert reg.candidates() == ["tiny-distilbert@2"]
    with pytest.raises(RegistryError, match="already in the store"):
        reg.add(tiny_artifact, version="1")

    assert reg.promote(first.ref) == [Task.TOXICITY, Task.SENTIMENT]  # every head it has
    reg.promote(second.ref, tasks=["toxicity"])
    reg.promote(albert.ref, tasks=["sentiment"])
    assert reg.candidates() == []
    assert reg.current("toxicity") == "tiny-distilbert@2"
    assert reg.history("sentiment") == ["tiny-distilbert@1", "tiny-albert@2024-06-01"]

    # The pointers are what the worker loads.
    ms = ModelSet(reg.current_paths(), threads=1)
    assert ms.refs == {Task.TOXICITY: "tiny-distilbert@2", Task.SENTIMENT: "tiny-albert@2024-06-01"}

    assert reg.rollback("toxicity") == "tiny-distilbert@1"
    assert reg.current("toxicity") == "tiny-distilbert@1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback("toxicity")
    # A second registry object (another process) sees the same state.
    assert ModelRegistry(tmp_path / "store").current("sentiment") == "tiny-albert@2024-06-01"


def test_promote_refuses_a_corrupted_artifact(tiny_artifact: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "store")
    ref = reg.add(tiny_artifact).ref
    path = reg.get(ref)[1]
    (path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        reg.promote(ref)
    assert reg.current("toxicity") is None


def test_add_refuses_a_corrupted_artifact(artifact_copy: Path, tmp_path: Path) -> None:
    (artifact_copy / "tokenizer.json").write_text("{}")
    reg = ModelRegistry(tmp_path / "store")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        reg.add(artifact_copy)
    assert reg.manifests() == []


def test_seed_copies_artifacts_and_pointers(tiny_artifact: Path, tmp_path: Path) -> None:
    bundled = ModelRegistry(tmp_path / "bundled")
    ref = bundled.add(tiny_artifact).ref
    bundled.promote(ref)

    user = ModelRegistry(tmp_path / "user", seed=tmp_path / "bundled")
    assert user.current("toxicity") == user.current("sentiment") == ref
    assert user.current_path("toxicity").is_relative_to(tmp_path / "user")
    verify_artifact(user.current_path("toxicity"))

    # Seeding happens once: a later start with a seed leaves the user's own choices alone.
    user.add(tiny_artifact)
    user.promote("tiny-distilbert@2", tasks=["toxicity"])
    again = ModelRegistry(tmp_path / "user", seed=tmp_path / "bundled")
    assert again.current("toxicity") == "tiny-distilbert@2"


def test_an_empty_seed_store_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty-seed").mkdir()
    reg = ModelRegistry(tmp_path / "store", seed=tmp_path / "empty-seed")
    with pytest.raises(RegistryError, match=r"no default models came with it.*promote"):
        reg.current_path("sentiment")


def test_the_bundled_defaults_seed_a_new_store_with_verified_models_for_both_tasks(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "store", seed=DEFAULT_SEED)
    for task in ("toxicity", "sentiment"):
        manifest = verify_artifact(reg.current_path(task))  # checksums and the label contract
        assert task in [t.value for t in manifest.tasks]
        assert "onnx_int8" in manifest.weights


def test_bad_refs_are_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "store")
    for ref in ["nope", "a@", "@1", "../x@1", "a@.."]:
        with pytest.raises(RegistryError):
            reg.get(ref)
    with pytest.raises(RegistryError, match="not in"):
        reg.get("missing@1")


def test_two_processes_promoting_at_once_lose_nothing(tiny_artifact: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    reg = ModelRegistry(store)
    refs = [reg.add(tiny_artifact).ref, reg.add(tiny_artifact).ref]
    rounds = 15
    script = textwrap.dedent(
        """
        import sys
        from models.registry import ModelRegistry
        store, task, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
        reg = ModelRegistry(store)
        refs = sys.argv[4:]
        for i in range(rounds):
            reg.promote(refs[i % 2], tasks=[task])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(store), task, str(rounds), *refs], env=env)
        for task in ("toxicity", "sentiment")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]

    state = json.loads((store / "registry.json").read_text())  # parses: never half-written
    for task in ("toxicity", "sentiment"):
        # every promotion of each writer is there: no update lost to the other writer
        assert state["history"][task] == [refs[i % 2] for i in range(rounds)]
        assert state["current"][task] == refs[(rounds - 1) % 2]
