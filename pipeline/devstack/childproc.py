"""Supervised child processes for the embedded dev stack (broker, Redis, object store).

One job: start a server binary in its own session with its output in a log file, wait until a
probe says it is ready, and make sure it never outlives this Python process.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["ChildProcess", "ServiceStartError", "free_port", "port_open", "wait_until"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Every live child, so the atexit hook can stop the ones a caller forgot; weak so that
# dropping the object does not keep it here forever.
_LIVE: weakref.WeakSet[ChildProcess] = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1


class ServiceStartError(RuntimeError):
    """A child service did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before returning, so another process can take it in between; callers
    that bind it shortly after (as the embedded services do) are fine in practice.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGTERM the child when its parent dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class ChildProcess:
    """Base for a server binary run as a supervised child process; use as a context manager.

    Subclasses implement `_argv()` and `_probe()`; `_env()` may add environment variables.
    The log (stdout and stderr) goes to `log_path` in a temp dir that `stop()` removes.
    """

    name = "service"

    def __init__(self, *, start_timeout_s: float = 20.0, stop_timeout_s: float = 5.0) -> None:
        if start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s}")
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None
        self._log_file = None

    # -- for subclasses -------------------------------------------------------------------
    def _argv(self) -> Sequence[str]:
        raise NotImplementedError

    def _env(self) -> Mapping[str, str]:
        return {}

    def _probe(self) -> bool:
        """Return True once the service answers; may raise, which counts as not ready."""
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's pid, or None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """Where the child's stdout and stderr go (None before the first start)."""
        return self._log_dir / f"{self.name}.log" if self._log_dir is not None else None

    def start(self) -> None:
        """Start the child and block until `_probe()` passes or `start_timeout_s` runs out."""
        if self.running:
            return
        argv = list(self._argv())  # first: a missing binary must not leave a temp dir behind
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix=f"chatmod-{self.name}-"))
        self._log_file = open(self._log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - closed in _terminate
        # Only pin the child's life to ours from the main thread: PDEATHSIG fires when the
        # *thread* that forked exits, which for a pool thread would kill a healthy broker.
        in_main = threading.current_thread() is threading.main_thread()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._env()},
                cwd=self._log_dir,
                # Own process group: a terminal's Ctrl-C reaches only us, so we stop children in
                # order (the broker after the worker has committed), and killpg gets grandchildren.
                start_new_session=True,
                preexec_fn=_die_with_parent if in_main and sys.platform == "linux" else None,
            )
        except OSError as exc:
            self.stop()
            raise ServiceStartError(f"could not run {argv[0]}: {exc}") from exc
        _LIVE.add(self)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._terminate()
                raise ServiceStartError(
                    f"{self.name} exited with code {code} while starting.\n{self.log_tail()}"
                )
            try:
                if self._probe():
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = exc
            time.sleep(0.1)
        self._terminate()
        raise ServiceStartError(
            f"{self.name} was not ready after {self.start_timeout_s:.0f}s "
            f"(last probe error: {last_error!r}).\n{self.log_tail()}"
        )

    def _terminate(self) -> None:
        """Stop the process group: SIGTERM, wait, then SIGKILL; keep the log dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout_s)
            except ProcessLookupError:
                proc.wait(timeout=self.stop_timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _LIVE.discard(self)

    def stop(self) -> None:
        """Stop the child and remove its temp dir (log included). Safe to call twice."""
        self._terminate()
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def restart(self) -> None:
        """Stop and start again with the same port and settings, keeping the log."""
        self._terminate()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log, ANSI colours removed, for error messages."""
        path = self.log_path
        if path is None or not path.exists():
            return f"(no {self.name} log)"
        text = _ANSI.sub("", path.read_text(errors="replace"))
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {path} ---\n{tail}"

    def __enter__(self):  # noqa: ANN204 - returns the subclass instance
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@atexit.register
def _stop_all_children() -> None:
    for child in list(_LIVE):
        child.stop()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what` if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(interval_s)
