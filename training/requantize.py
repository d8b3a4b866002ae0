"""New versions of a registered model without retraining: re-exported with today's int8 graph
(``requantize_artifact``), or with its decision rules fitted again as served (``recalibrate_artifact``).

An artifact built before per-token activation scales scores a text differently in different batches.
Retraining is not needed to fix that: its weights are rebuilt (from its safetensors, or from its ONNX
file, where per-channel int8 weights dequantise exactly and quantise back to the same codes), exported
again, verified against those weights, and stored as a new version with the source's heads and
thresholds. The served model is re-evaluated on the validation sets when they are available.

A model's decision rules (toxicity thresholds, the sentiment head's logit offsets) live in its manifest:
fitting them again on the served int8 model changes no weight, so the files are copied as they are.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from models.artifact import FORMAT_VERSION, Manifest, read_manifest, verify_artifact, write_manifest
from models.labels import Task
from models.registry import ModelRegistry
from training.export import SAFETENSORS_NAME, TOKENIZER_FILES, build_artifact
from training.export_check import DEFAULT_VERIFY_TEXTS

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

    ``evaluate(folder, manifest)``, when given, returns the served model's evaluation report, whose headline
    metrics are recorded as ``metrics.validation`` (the source's figures are kept as
    ``metrics.validation_source``).
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
        headline = evaluate(Path(out), manifest)["headline"]
        metrics = manifest.metrics | {"validation": headline,
                                      "validation_source": source.metrics.get("validation", {})}
        heads = [h.model_copy(update={"metrics": headline}) for h in manifest.heads]
        manifest = write_manifest(Path(out), read_manifest(Path(out)).model_copy(
            update={"metrics": metrics, "heads": heads}))
    log.info("re-exported %s as %s", source.ref, manifest.ref)
    return manifest


def recalibrate_artifact(artifact: Path, out: Path, version: str, validation: dict, *,
                         thresholds: bool = False) -> tuple[Manifest, dict]:
    """``name@version`` at ``out``: ``artifact``'s files as they are, with the sentiment head's logit offsets
    fitted on ``validation`` (``{source: [Example]}``) through the served runtime, and, with ``thresholds``,
    the toxicity thresholds too (otherwise they are kept; a head that has none gets them fitted). The
    metrics recorded are the served model's with the rules it ships (the source's are kept as
    ``metrics.validation_source``). Returns the manifest and the served evaluation report (headline and
    per-set figures), for the model card."""
    from models.runtime import TextClassifier
    from training.evaluate import evaluate

    artifact, out = Path(artifact), Path(out)
    source = verify_artifact(artifact)
    if str(version) == source.version:
        raise ValueError(f"{source.ref} already has version {version}; pick a new version for the recalibration")
    clf = TextClassifier(artifact, backend="onnx")
    logits: dict[tuple[str, ...], object] = {}

    def predict(texts: list[str]):  # each set scored once, for the fit and the verdict
        key = tuple(texts)
        if key not in logits:
            logits[key] = clf.predict_logits(texts)
        return logits[key]

    fitted = evaluate(predict, source.heads, validation)
    heads = []
    for head in source.heads:
        if head.task == Task.SENTIMENT and "logit_bias" in fitted:
            head = head.model_copy(update={"logit_bias": fitted["logit_bias"]})
        if head.task == Task.TOXICITY and (thresholds or not head.thresholds):  # none to keep: fitted
            head = head.model_copy(update={"thresholds": fitted["thresholds"],
                                           "block_thresholds": fitted["block_thresholds"]})
        heads.append(head)
    tox = next((h for h in heads if h.task == Task.TOXICITY), None)
    served = evaluate(predict, heads, validation, (tox.thresholds, tox.block_thresholds) if tox else ({}, {}))
    headline = served["headline"]
    with tempfile.TemporaryDirectory(prefix="chatmod-recalibrate-", dir=out.parent) as tmp:
        staging = Path(tmp) / "artifact"
        shutil.copytree(artifact, staging, ignore=shutil.ignore_patterns("manifest.json"))
        manifest = write_manifest(staging, source.model_copy(update={
            "format_version": FORMAT_VERSION, "version": str(version),
            "heads": [h.model_copy(update={"metrics": headline}) for h in heads],
            "created_at": Manifest.model_fields["created_at"].default_factory(),
            "training": source.training | {"recalibrated_from": source.ref},
            "metrics": source.metrics | {"validation": headline,
                                         "validation_source": source.metrics.get("validation", {})}}))
        verify_artifact(staging)
        staging.rename(out)
    log.info("recalibrated %s as %s", source.ref, manifest.ref, extra={"validation": headline})
    return manifest, served


def recalibration_card(artifact: Path, served: dict, latency_texts: list[str], threads: int | None = None) -> dict:
    """The model card of a recalibrated or re-exported artifact: its served figures (``served``: the
    evaluation report, headline and per set), the rules it ships, its size and latency, the functional
    suite, and the model whose weights it keeps (the card's "weights of" line)."""
    from training.recipe import served_facts

    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    tox = next((h for h in manifest.heads if h.task == Task.TOXICITY), None)
    sentiment = next((h for h in manifest.heads if h.task == Task.SENTIMENT), None)
    return {
        "name": manifest.ref, "family": manifest.family, "parameters": manifest.num_parameters,
        **served_facts(artifact, latency_texts, manifest.tasks, threads),
        "headline": served["headline"], "sets": served["sets"],
        "thresholds": tox.thresholds if tox else {}, "block_thresholds": tox.block_thresholds if tox else {},
        "logit_bias": sentiment.logit_bias if sentiment else {},
        "recalibrated_from": manifest.training.get("recalibrated_from"),
        "requantized_from": manifest.training.get("requantized_from"),
        "int8_weights": manifest.metrics.get("export", {}).get("onnx_int8", {}).get("weights"),
        "base_model": manifest.base_model,
        "versions": manifest.training.get("versions", {}), "data": manifest.training.get("data", {}),
    }
