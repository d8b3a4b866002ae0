"""``chatmod worker`` as a child process: its own session, its log in a file, stopped in order.

For tools that drive a real worker (``chatmod demo``, benchmarks, chaos): the store it serves and its
environment, start it, wait for lines in its log that say it is ready, read the log's tail when it is not,
and SIGTERM it (then SIGKILL) when done. On Linux the worker also gets SIGTERM if its parent dies without
cleaning up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pipeline
from models.registry import REGISTRY_NAME, ModelRegistry, RegistryError, bundled_store

STOP_TIMEOUT_S = 20.0
TOPIC_PARTITIONS = 3
MODELS_LOADED_MARK = '"msg": "worker ready"'  # our agent's log line once models and cache are loaded
PARTITIONS_ASSIGNED_MARK = 'Worker ready"'  # Faust's "[^---Recovery]: Worker ready": it now owns partitions


class StoreError(RuntimeError):
    """The model store cannot serve a worker; the message says why and what to do."""


class WorkerStartError(RuntimeError):
    """The worker exited or did not become ready; the message carries the tail of its log."""


class WorkerProcess:
    """``chatmod worker`` (or another Python entry point, ``argv``) as a child process in its own session,
    its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, argv: tuple[str, ...] = ("-m", "pipeline.cli", "worker")):
        self.env, self.log_path, self.argv = env, log_path, argv
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        in_main = threading.current_thread() is threading.main_thread()
        self._proc = subprocess.Popen(
            [sys.executable, *self.argv], env=self.env, cwd=self.log_path.parent,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the parent only, which then stops the worker in order
            preexec_fn=_die_with_parent if in_main and sys.platform == "linux" else None,
        )
        return self

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, mark: str, deadline: float) -> None:
        """Block until ``mark`` shows up in the log; WorkerStartError with the log's tail if the worker
        exits or ``deadline`` (``time.monotonic()``) passes first."""
        while time.monotonic() < deadline:
            if not self.alive:
                raise WorkerStartError(f"the worker exited with code {self._proc.returncode} while starting\n"
                                       f"{self.log_tail()}")
            if mark in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise WorkerStartError(f"the worker was not ready in time (its log has no {mark!r})\n{self.log_tail()}")

    def wait_ready(self, deadline: float, partitions: bool = True) -> None:
        """Block until the models are loaded and (``partitions``) the worker owns its partitions."""
        self.wait_for(MODELS_LOADED_MARK, deadline)
        if partitions:
            self.wait_for(PARTITIONS_ASSIGNED_MARK, deadline)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (the worker finishes its batch and commits), then SIGKILL if it hangs; its exit code."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode if proc is not None else None

    def kill(self) -> None:
        """SIGKILL the worker's process group at once, as a crash would (fault tests), then clean up."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.stop()  # the process is gone: this only closes the log

    def exit_message(self) -> str:
        code = self._proc.returncode if self._proc else None
        return f"the worker exited unexpectedly (code {code})\n{self.log_tail()}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no worker log)"
        return f"--- last {len(tail)} lines of the worker log ---\n" + "\n".join(tail)


def prepare_store(store: Path | None, private: Path) -> tuple[Path, dict[str, str]]:
    """The store to serve from (``store`` as is, else a private copy of the bundled defaults in ``private``)
    and its current model per task; StoreError if it has no toxicity model."""
    if store is not None and not (Path(store) / REGISTRY_NAME).is_file():
        raise StoreError(f"{store} is not a model store (no {REGISTRY_NAME}); check CHATMOD_MODELS_STORE")
    try:
        registry = ModelRegistry(store) if store is not None else ModelRegistry(private, seed=bundled_store())
        tasks = {t: ref for t in ("toxicity", "sentiment") if (ref := registry.current(t))}
    except (RegistryError, OSError, ValueError) as exc:
        raise StoreError(f"cannot open the model store: {exc}") from exc
    if "toxicity" not in tasks:
        where = f"the model store {store}" if store is not None else "the bundled defaults (models/defaults)"
        raise StoreError(f"no toxicity model is current in {where}. Train the default models first: "
                         "`chatmod train all`, or set CHATMOD_MODELS_STORE to a store with a promoted model.")
    return registry.store, tasks


def worker_env(stack, store: Path, tasks: dict[str, str], tmp: Path) -> dict[str, str]:
    """A clean worker environment for a tool's own ``stack`` (an ``EmbeddedStack``): the caller's CHATMOD_*
    settings are not inherited, since this worker talks to the tool's broker, Redis and store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMOD_")}
    source_root = str(Path(pipeline.__file__).resolve().parents[1])  # works installed or from a checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    env.update({
        "CHATMOD_KAFKA_BOOTSTRAP": stack.bootstrap,
        "CHATMOD_REDIS_URL": stack.redis_url,
        "CHATMOD_MODELS_STORE": str(store),
        "CHATMOD_MODELS_TASKS": ",".join(tasks),
        "CHATMOD_KAFKA_SESSION_TIMEOUT_S": "6",  # dev-speed group joins
        "CHATMOD_KAFKA_HEARTBEAT_INTERVAL_S": "1",
        "CHATMOD_TOPICS_PARTITIONS": str(TOPIC_PARTITIONS),
        "CHATMOD_WORKER_WEB_ENABLED": "false",
        "CHATMOD_WORKER_LOG_JSON": "true",
        "CHATMOD_WORKER_DATADIR": str(tmp / "faust-data"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Have Linux SIGTERM the worker if its parent dies without cleaning up (SIGKILL, crash)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
