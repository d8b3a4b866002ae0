"""Re-export a registered model with the current export: same weights, today's int8 graph.

An artifact built before per-token activation scales scores a text differently in different batches.
Retraining is not needed to fix that: its weights are rebuilt (from its safetensors, or from its ONNX
file, where per-channel int8 weights dequantise exactly and quantise back to the same codes), exported
again, verified against those weights, and stored as a new version with the source's heads and
thresholds. The served model is re-evaluated on the validation sets when they are available.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from models.artifact import Manifest, read_manifest, verify_artifact, write_manifest
from training.export import DEFAULT_VERIFY_TEXTS, SAFETENSORS_NAME, TOKENIZER_FILES, build_artifact

log = logging.getLogger(__name__)


def rebuild_hf_folder(artifact: Path, out: Path) -> Path:
    """A Hugging Face model folder (config, safetensors, tokenizer) holding the artifact's weights."""
    artifact, out = Path(artifact), Path(out)
    manifest = verify_artifact(artifact)
    out.mkdir(parents=True, exist_ok=True)
    if "safetensors" in manifest.weights:
        shutil.copy2(artifact / manifest.weights["safetensors"], out / SAFETENSORS_NAME)
        shutil.copy2(artifact / "config.json", out / "config.json")
    else:
        from models.torch_from_onnx import torch_model_from_artifact

        torch_model_from_artifact(artifact).save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (artifact / name).is_file():
            shutil.copy2(artifact / name, out / name)
    return out


def model_folder(source: str | Path, store: Path, tmp: Path) -> tuple[Path, str | None]:
    """``(Hugging Face folder, family)`` for ``NAME@VERSION`` in ``store``, an artifact folder (its weights
    rebuilt into ``tmp``) or a model folder (as it is; family unknown)."""
    path = Path(source)
    if not path.is_dir():
        from models.registry import ModelRegistry

        path = ModelRegistry(store).get(str(source))[1]
    if not (path / "manifest.json").is_file():
        return path, None
    return rebuild_hf_folder(path, Path(tmp) / "hf"), read_manifest(path).family


def requantize_artifact(
    artifact: Path,
    out: Path,
    version: str,
    *,
    verify_texts: Sequence[str] = DEFAULT_VERIFY_TEXTS,
    evaluate: Callable[[Path, Manifest], dict] | None = None,
) -> Manifest:
    """Build ``name@version`` at ``out`` from ``artifact``'s weights with the current int8 export.

    ``evaluate(folder, manifest)``, when given, returns the served model's validation headline metrics,
    recorded as ``metrics.validation`` (the source's figures are kept as ``metrics.validation_source``).
    """
    source = verify_artifact(Path(artifact))
    if str(version) == source.version:
        raise ValueError(f"{source.ref} already has version {version}; pick a new version for the re-export")
    with tempfile.TemporaryDirectory(prefix="chatmod-requantize-") as tmp:
        hf = rebuild_hf_folder(Path(artifact), Path(tmp) / "hf")
        manifest = build_artifact(
            hf, Path(out), name=source.name, version=str(version), heads=source.heads, family=source.family,
            max_length=source.max_length, lowercase=source.lowercase, base_model=source.base_model,
            training=source.training | {"requantized_from": source.ref},
            metrics={k: v for k, v in source.metrics.items() if k != "export"},
            formats=("onnx_int8",), verify_texts=list(verify_texts),
        )
    if evaluate is not None:
        headline = evaluate(Path(out), manifest)
        metrics = manifest.metrics | {"validation": headline,
                                      "validation_source": source.metrics.get("validation", {})}
        heads = [h.model_copy(update={"metrics": headline}) for h in manifest.heads]
        manifest = write_manifest(Path(out), read_manifest(Path(out)).model_copy(
            update={"metrics": metrics, "heads": heads}))
    log.info("re-exported %s as %s", source.ref, manifest.ref)
    return manifest
