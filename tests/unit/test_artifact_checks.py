"""An artifact that is corrupt, breaks the label contract or carries pickles is never served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.artifact import ArtifactError, Manifest, read_manifest, verify_artifact, write_manifest
from models.runtime import TextClassifier

pytestmark = pytest.mark.unit


def test_intact_artifact_verifies(tiny_artifact: Path) -> None:
    manifest = verify_artifact(tiny_artifact)
    assert manifest.ref == "tiny-distilbert@1"
    assert set(manifest.weights) == {"safetensors", "onnx", "onnx_int8"}
    assert manifest.metrics["export"]["onnx"]["agreement"] == 1.0


def test_tampered_weights_are_refused(artifact_copy: Path) -> None:
    onnx = artifact_copy / "model.int8.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    onnx.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch for model.int8.onnx"):
        TextClassifier(artifact_copy, backend="onnx")


def test_wrong_labels_are_refused(artifact_copy: Path) -> None:
    manifest = read_manifest(artifact_copy)
    raw = json.loads(manifest.model_dump_json())
    raw["heads"][1]["labels"] = ["bad", "meh", "good"]  # sentiment under other names
    write_manifest(artifact_copy, Manifest.model_validate(raw))  # checksums fine, contract broken
    with pytest.raises(ArtifactError, match="differ from the contract"):
        TextClassifier(artifact_copy, backend="onnx")


@pytest.mark.parametrize("name", ["extra.pkl", "pytorch_model.bin"])
def test_pickle_files_are_refused(artifact_copy: Path, name: str) -> None:
    (artifact_copy / name).write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    with pytest.raises(ArtifactError, match="pickle"):
        TextClassifier(artifact_copy, backend="onnx")
    with pytest.raises(ArtifactError, match="pickle"):
        write_manifest(artifact_copy, read_manifest(artifact_copy))


def test_unlisted_file_is_refused(artifact_copy: Path) -> None:
    (artifact_copy / "notes.txt").write_text("slipped in after the manifest was written")
    with pytest.raises(ArtifactError, match="not covered by the manifest"):
        verify_artifact(artifact_copy)
