"""A model store on disk: artifact versions, which one serves each task, promotion and rollback.

Layout::

    <store>/artifacts/<name>/<version>/     artifact folders (models.artifact format)
    <store>/registry.json                   {"current": {task: ref},
                                             "history": {task: [ref, ... newest last]},
                                             "candidates": [ref, ...]}
    <store>/.registry.lock                  fcntl lock held around every read-modify-write

Artifacts are immutable once added: a new model is a new version. ``registry.json`` is replaced
atomically under the lock, so concurrent CLIs and workers never see or write half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from models.artifact import (
    Manifest,
    atomic_write_text,
    read_manifest,
    staged_folder,
    verify_artifact,
    write_manifest,
)
from models.labels import Task

log = logging.getLogger(__name__)

REGISTRY_NAME = "registry.json"
LOCK_NAME = ".registry.lock"
ARTIFACTS_DIR = "artifacts"
DEFAULT_SEED = Path(__file__).parent / "defaults"  # the bundled default models, a store folder


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked; the message says what to do instead."""


def parse_ref(ref: str) -> tuple[str, str]:
    """``"name@version"`` -> ``(name, version)``."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise RegistryError(f"a model ref looks like 'name@version', got {ref!r}")
    for part in (name, version):
        if "/" in part or "@" in part or part.startswith("."):
            raise RegistryError(
                f"invalid model ref {ref!r}: names and versions may not contain '/', '@' or start with '.'"
            )
    return name, version


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)  # integers first, in numeric order


def _empty_state() -> dict[str, Any]:
    return {"current": {}, "history": {}, "candidates": []}


class ModelRegistry:
    """Versions of model artifacts in a store folder and the pointers that say which one serves a task."""

    def __init__(self, store: Path, seed: Path | None = None) -> None:
        self.store = Path(store)
        self.artifacts = self.store / ARTIFACTS_DIR
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._registry_file = self.store / REGISTRY_NAME
        self._seed_note: str | None = None
        if seed is not None:
            self._seed_from(Path(seed))

    # ------------------------------------------------------------------ state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.store / LOCK_NAME, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self._registry_file.is_file():
            return _empty_state()
        try:
            state = json.loads(self._registry_file.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(
                f"{self._registry_file} is not valid JSON ({exc}); restore it from a backup"
            ) from exc
        return _empty_state() | state

    def _write(self, state: dict[str, Any]) -> None:
        atomic_write_text(self._registry_file, json.dumps(state, indent=2, sort_keys=True))

    def _path(self, ref: str) -> Path:
        name, version = parse_ref(ref)
        return self.artifacts / name / version

    # ------------------------------------------------------------------ artifacts

    def add(self, folder: Path, *, version: str | None = None, candidate: bool = False) -> Manifest:
        """Verify an artifact and copy it into the store; returns the stored manifest.

        ``version=None`` gives the next integer version for the model's name ("1", "2", ...); a string
        sets the version. Either way, if it differs from the manifest's, the stored manifest is rewritten.
        An existing ref is never overwritten.
        """
        folder = Path(folder)
        manifest = verify_artifact(folder)
        parse_ref(f"{manifest.name}@{version or '1'}")
        with self._locked():
            if version is None:
                versions = [p.name for p in self._versions_dir(manifest.name) if p.name.isdigit()]
                version = str(max((int(v) for v in versions), default=0) + 1)
            ref = f"{manifest.name}@{version}"
            target = self._path(ref)
            if target.exists():
                raise RegistryError(f"{ref} is already in the store; add the new model under another version")
            with staged_folder(target) as staging:
                shutil.copytree(folder, staging, dirs_exist_ok=True)
                staging.chmod(0o755)
                if manifest.version != version:
                    write_manifest(staging, manifest.model_copy(update={"version": version}))
                stored = verify_artifact(staging)  # the copy, not the source, is what will be served
            if candidate:
                state = self._read()
                state["candidates"] = [r for r in state["candidates"] if r != ref] + [ref]
                self._write(state)
        log.info("added %s to %s", ref, self.store)
        return stored

    def _versions_dir(self, name: str) -> list[Path]:
        folder = self.artifacts / name
        return (
            [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if folder.is_dir()
            else []
        )

    def manifests(self) -> list[Manifest]:
        """Manifests of every stored artifact, by name, then version (integers in numeric order)."""
        found = []
        if self.artifacts.is_dir():
            for name_dir in sorted(
                p for p in self.artifacts.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                for version_dir in sorted(
                    self._versions_dir(name_dir.name), key=lambda p: _version_key(p.name)
                ):
                    found.append(read_manifest(version_dir))
        return found

    def get(self, ref: str) -> tuple[Manifest, Path]:
        """The manifest and folder of a stored artifact (not checksummed; the runtime does that at load)."""
        path = self._path(ref)
        if not path.is_dir():
            known = [m.ref for m in self.manifests()]
            raise RegistryError(f"{ref} is not in {self.store}; stored: {known or 'nothing yet'}")
        return read_manifest(path), path

    # ------------------------------------------------------------------ pointers

    def current(self, task: Task | str) -> str | None:
        return self._read()["current"].get(Task(task).value)

    def current_path(self, task: Task | str) -> Path:
        """Folder of the artifact serving ``task``; a clear error if none does."""
        task = Task(task)
        ref = self.current(task)
        if ref is None:
            hint = f" ({self._seed_note})" if self._seed_note else ""
            raise RegistryError(
                f"no model is current for {task.value} in {self.store}{hint}; add an artifact to the store "
                f"and promote it for {task.value} (ModelRegistry.add, then ModelRegistry.promote)"
            )
        return self.get(ref)[1]

    def current_paths(self, tasks: Sequence[Task | str] = tuple(Task)) -> dict[Task, Path]:
        """``{task: folder}`` for each task, ready for ``models.runtime.ModelSet``."""
        return {Task(t): self.current_path(t) for t in tasks}

    def history(self, task: Task | str) -> list[str]:
        return list(self._read()["history"].get(Task(task).value, []))

    def candidates(self) -> list[str]:
        return list(self._read()["candidates"])

    def promote(self, ref: str, tasks: Sequence[Task | str] | None = None) -> list[Task]:
        """Make ``ref`` current for ``tasks`` (default: every head it has); returns the tasks promoted.

        The artifact is verified first, checksums and label contract included.
        """
        _, path = self.get(ref)
        manifest = verify_artifact(path, check_contract=True)
        chosen = manifest.tasks if tasks is None else [Task(t) for t in tasks]
        for task in chosen:
            manifest.head(task)  # raises if the artifact has no head for it
        with self._locked():
            state = self._read()
            for task in chosen:
                history = state["history"].setdefault(task.value, [])
                if not history or history[-1] != ref:
                    history.append(ref)
                state["current"][task.value] = ref
            state["candidates"] = [r for r in state["candidates"] if r != ref]
            self._write(state)
        log.info("promoted %s for %s", ref, [t.value for t in chosen])
        return chosen

    def rollback(self, task: Task | str) -> str:
        """Serve the previous ref in ``task``'s history again; returns it."""
        task = Task(task)
        with self._locked():
            state = self._read()
            history = state["history"].get(task.value, [])
            if len(history) < 2:
                raise RegistryError(f"nothing to roll back to for {task.value}: history is {history}")
            previous = history[-2]
            verify_artifact(self._path(previous))  # never roll back onto a corrupt artifact
            history.pop()
            state["current"][task.value] = previous
            self._write(state)
        log.info("rolled %s back to %s", task.value, previous)
        return previous

    # ------------------------------------------------------------------ seeding

    def _seed_from(self, seed: Path) -> None:
        """Copy a seed store's artifacts and current pointers into an empty store (bundled defaults)."""
        with self._locked():
            if self._registry_file.exists():
                return
            seed_file = seed / REGISTRY_NAME
            if not seed_file.is_file():
                self._seed_note = (
                    f"the seed store {seed} holds no {REGISTRY_NAME}, so no default models came with it"
                )
                log.warning("not seeding %s: %s", self.store, self._seed_note)
                return
            seed_state = _empty_state() | json.loads(seed_file.read_text())
            seed_artifacts = seed / ARTIFACTS_DIR
            refs = {
                f"{p.parent.name}@{p.name}"
                for p in seed_artifacts.glob("*/*")
                if (p / "manifest.json").is_file()
                and not (p.name.startswith(".") or p.parent.name.startswith("."))
            }
            missing = set(seed_state["current"].values()) - refs
            if missing:
                raise RegistryError(
                    f"the seed store {seed} points at artifacts it does not hold: {sorted(missing)}"
                )
            for ref in sorted(refs):
                self._copy_seed_artifact(seed_artifacts / Path(*parse_ref(ref)), self._path(ref))
            state = _empty_state()
            for task, ref in seed_state["current"].items():
                state["current"][Task(task).value] = ref
                state["history"][Task(task).value] = [ref]
            if not state["current"]:
                self._seed_note = f"the seed store {seed} makes no model current"
            self._write(state)  # last, so an interrupted seed is redone on the next start
            log.info("seeded %s from %s: %s", self.store, seed, state["current"])

    @staticmethod
    def _copy_seed_artifact(source: Path, target: Path) -> None:
        verify_artifact(source)
        if target.exists():
            if read_manifest(target).files != read_manifest(source).files:
                raise RegistryError(f"{target} exists and differs from the seed's copy; remove one of them")
            return
        with staged_folder(target) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            staging.chmod(0o755)


def bundled_store() -> Path:
    """The default models shipped inside the ``models`` package (a store to seed others from)."""
    return Path(__file__).resolve().parent / "defaults"


def open_store(store: Path | str) -> ModelRegistry:
    """The store at ``store``, seeded from the bundled defaults the first time it is used."""
    return ModelRegistry(Path(store), seed=bundled_store())
