"""The models a worker serves, loaded from the registry, and swapped whole on a reload.

A reload builds the new model set completely (checksums and label contract verified) before it
replaces the old one; if anything fails, the previous models keep serving and the error is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from models.artifact import ArtifactError
from models.deobfuscate import DEOBFUSCATION_VERSION, Deobfuscated, deobfuscate
from models.explain import EXPLAIN_VERSION, find_spans
from models.labels import Task
from models.registry import ModelRegistry, open_store
from models.runtime import ModelSet
from pipeline.decisions import RAW_TOXICITY, SPANS
from pipeline.policy import Policy
from pipeline.settings import Settings

log = logging.getLogger("chatmod.serving")


@dataclass(frozen=True)
class Serving:
    """An immutable pairing of models and the policy derived from their thresholds."""

    models: ModelSet
    policy: Policy
    casefold: bool
    shadow: Serving | None = None  # a candidate compared on live traffic; never decides
    deobfuscate: bool = True
    explain: str = "lexicon"  # span method (models/explain.py) or "off"

    @property
    def normaliser(self) -> str:
        """What rewrites a text before the model reads it, and how its spans are found; part of the content
        cache key, so cached scores always carry the spans this worker would compute."""
        read = f"deobfuscate@{DEOBFUSCATION_VERSION}" if self.deobfuscate else "none"
        return read if self.explain == "off" else f"{read}+spans@{EXPLAIN_VERSION}:{self.explain}"

    @property
    def shadow_refs(self) -> dict[str, str]:
        return self.shadow.refs if self.shadow is not None else {}

    @property
    def refs(self) -> dict[str, str]:
        return {str(k): v for k, v in self.models.refs.items()}

    def predict(self, texts: list[str]) -> list[dict]:
        """Scores per text, of the text as de-obfuscated; where that changed the text, the toxicity of the
        text as written too (``RAW_TOXICITY``), so a result can say whether the trick changed the decision;
        and, unless explanations are off, ``SPANS``: ``[start, end, label, score]`` over the text given.
        All are pure functions of the text: whatever else is in the batch, the same bits."""
        reads = [deobfuscate(t) if self.deobfuscate else Deobfuscated(t, ()) for t in texts]
        changed = [i for i, (t, r) in enumerate(zip(texts, reads, strict=True)) if t != r.text]
        scores = self.models.predict([r.text for r in reads] + [texts[i] for i in changed])
        out, raw = scores[: len(texts)], scores[len(texts):]
        for i, as_written in zip(changed, raw, strict=True):
            if Task.TOXICITY.value in as_written:
                out[i][RAW_TOXICITY] = as_written[Task.TOXICITY.value]
        if self.explain != "off":
            for read, result in zip(reads, out, strict=True):
                result[SPANS] = [list(span) for span in self._spans(read, result)]
        return out

    def _spans(self, read: Deobfuscated, scores: dict) -> list:
        tox = scores.get(Task.TOXICITY.value)
        if not tox:
            return []
        decision, flags = self.policy.decide(tox)
        deciding = max(flags, key=tox.__getitem__) if flags else None
        return find_spans(read, scores, decision != "allow", self.explain, self.models.predict, deciding)


def load_serving(settings: Settings, registry: ModelRegistry | None = None) -> Serving:
    registry = registry or open_store(settings.models.store)
    tasks = [Task(t) for t in settings.models.tasks]
    if Task.TOXICITY not in tasks:
        raise ValueError("the toxicity task is required: decisions are made from its scores")
    serving = serving_for({task: registry.current_path(task) for task in tasks}, settings)
    if settings.models.shadow:
        manifest, folder = registry.get(settings.models.shadow)
        shadow_tasks = [t for t in tasks if t in manifest.tasks]
        if Task.TOXICITY not in shadow_tasks:
            raise ValueError(f"shadow model {settings.models.shadow} has no toxicity head to compare decisions")
        serving = replace(serving, shadow=serving_for(dict.fromkeys(shadow_tasks, folder), settings))
    return serving


def serving_for(paths: dict[Task, Path], settings: Settings) -> Serving:
    """Models from these artifact folders, with the policy the worker derives from them and ``settings``."""
    model_set = ModelSet(paths, backend=settings.models.backend, threads=settings.models.threads,
                         spin=settings.models.spin)
    manifests = model_set.manifests
    policy = Policy.from_heads(manifests[Task.TOXICITY].head(Task.TOXICITY), settings.policy)
    return Serving(model_set, policy, casefold=all(m.lowercase for m in manifests.values()),
                   deobfuscate=settings.models.deobfuscate, explain=settings.models.explain)


class ServingHolder:
    """Holds the current ``Serving``; readers take a reference, reloads replace it atomically."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None):
        self.settings = settings
        self.registry = registry or open_store(settings.models.store)
        self._current = load_serving(settings, self.registry)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[dict[str, str]], None]] = []

    def on_reload(self, listener: Callable[[dict[str, str]], None]) -> None:
        """Call ``listener(refs)`` ({task: "name@version"}) after every reload that swapped models.

        Listeners run in the reloading thread; one that raises is logged and does not undo the swap.
        """
        self._listeners.append(listener)

    @property
    def current(self) -> Serving:
        return self._current

    def reload(self) -> str:
        """Load what the registry names as current; keep the old models on any failure.

        Returns ``"swapped"``, ``"unchanged"`` (the registry names what is serving), or ``"refused"``
        (the new artifact failed its checksums, its label contract or loading; the error is logged).
        """
        with self._lock:
            try:
                wanted = {str(t): self.registry.current(Task(t)) for t in self.settings.models.tasks}
                if wanted == self._current.refs:
                    return "unchanged"
                fresh = load_serving(self.settings, self.registry)
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                log.error("model reload refused; previous models keep serving",
                          extra={"error": str(exc), "serving": self._current.refs})
                return "refused"
            old = self._current.refs
            self._current = fresh
            log.info("models reloaded", extra={"from": old, "to": fresh.refs})
            for listener in self._listeners:
                try:
                    listener(fresh.refs)
                except Exception as exc:  # noqa: BLE001 - an observer must not fail a good reload
                    log.error("reload listener failed",
                              extra={"listener": repr(listener), "error": repr(exc)})
            return "swapped"
