"""Session-wide tiny artifacts: built once (a few seconds), read-only for every test that uses them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_artifact


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DistilBERT with both heads (toxicity 0..5, sentiment 6..8); safetensors, ONNX, int8."""
    out = tmp_path_factory.mktemp("artifacts") / "tiny-distilbert"
    build_tiny_artifact(out, family="distilbert", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_albert_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ALBERT (factorised embeddings, token_type_ids input) with both heads."""
    out = tmp_path_factory.mktemp("artifacts") / "tiny-albert"
    build_tiny_artifact(out, family="albert", seed=1)
    return out


@pytest.fixture
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the DistilBERT artifact that a test may tamper with."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))
