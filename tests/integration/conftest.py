"""Integration fixtures: a model store holding a tiny two-head model, current for both tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.tiny_models import build_tiny_artifact


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    build_tiny_artifact(root / "build" / "tiny", family="distilbert", seed=0, formats=("onnx_int8",))
    registry = ModelRegistry(root / "store")
    manifest = registry.add(root / "build" / "tiny")
    registry.promote(manifest.ref)
    return root / "store"
