"""Moderators watching, for ``chatmod bench --console-tabs N``: a ``chatmod console`` process on the bench's
stack and N clients that load it the way its queue page does (one event stream each, the queue re-read
after events, at most once a second), while the unique workload runs. The worker's throughput beside the
plain unique run is the console's cost to it.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from pathlib import Path

from pipeline.console.accounts import Accounts

PAGE_READ_EVERY_S = 1.0  # console.js re-reads the queue at most once a second for events


class Tab(threading.Thread):
    """One open queue page: an event stream, and a queue read after events."""

    def __init__(self, url: str, user: str, password: str):
        import httpx

        super().__init__(name="chatmod-bench-tab", daemon=True)
        self.client = httpx.Client(base_url=url, timeout=30.0)
        page = self.client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        done = self.client.post("/login", data={"user": user, "password": password, "csrf": token})
        if done.status_code != 303:
            raise RuntimeError(f"bench tab: login refused ({done.status_code})")
        self.stopping = threading.Event()
        self.connected = threading.Event()  # its event stream is open: it sees what happens from now on
        self.events = self.reads = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import httpx

        last_read, unread = 0.0, False
        try:
            with self.client.stream("GET", "/events", timeout=httpx.Timeout(30.0, read=None)) as stream:
                for line in stream.iter_lines():  # keep-alives every 15 s end an idle wait too
                    if self.stopping.is_set():
                        break
                    if line.startswith(": connected"):  # the console has subscribed this page to the queue
                        self.connected.set()
                    if line.startswith("data:"):
                        self.events += 1
                        unread = True
                    if unread and time.monotonic() - last_read >= PAGE_READ_EVERY_S:
                        self.client.get("/api/queue")
                        self.reads += 1
                        last_read, unread = time.monotonic(), False
        except BaseException as exc:  # reported by the bench
            if not self.stopping.is_set():
                self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.client.close()


class ConsoleTabs:
    """``with ConsoleTabs(env, folder, n) as tabs:`` a console process and ``n`` tabs on it."""

    def __init__(self, env: dict[str, str], folder: Path, n: int):
        from pipeline.devstack.childproc import free_port

        self.port = free_port()
        self.env = {**env, "CHATMOD_CONSOLE_PORT": str(self.port),
                    "CHATMOD_FEEDBACK_STORE": str(folder / "feedback-store")}
        self.folder, self.n = folder, n
        self.process = None
        self.tabs: list[Tab] = []

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> ConsoleTabs:
        import httpx
        import redis

        from pipeline.devstack.worker_process import WorkerProcess

        password = secrets.token_urlsafe(12)
        Accounts(redis.Redis.from_url(self.env["CHATMOD_REDIS_URL"]),
                 self.env.get("CHATMOD_REDIS_KEY_PREFIX", "chatmod")).add_user("bench", password, "moderator")
        self.process = WorkerProcess(self.env, self.folder / "console.log", ("-m", "pipeline.cli", "console"))
        self.process.start()
        url, deadline = f"http://127.0.0.1:{self.port}", time.monotonic() + 60
        while True:  # ready: serving, and its feed reads the topics
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not self.process.alive or time.monotonic() > deadline:
                raise RuntimeError(f"the console did not start\n{self.process.log_tail()}")
            time.sleep(0.2)
        self.url = url
        self.settle()  # the flagged backlog of earlier workloads queued first
        self.tabs = [Tab(url, "bench", password) for _ in range(self.n)]
        for tab in self.tabs:
            tab.start()
        for tab in self.tabs:  # every page live before the workload starts, or its events would be missed
            if not tab.connected.wait(timeout=30.0):
                raise RuntimeError(f"a bench tab's event stream did not open: {tab.error!r}")
        return self

    def settle(self, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Wait until the console's feed has read every flagged record there is (its count steady for
        ``quiet_s``): after a run, so that the pages have had the run's events before they are counted."""
        import httpx

        read, steady_since, deadline = -1, time.monotonic(), time.monotonic() + timeout_s
        while time.monotonic() - steady_since < quiet_s and time.monotonic() < deadline:
            now_read = httpx.get(f"{self.url}/health", timeout=2.0).json()["flagged_read"]
            if now_read != read:
                read, steady_since = now_read, time.monotonic()
            time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        for tab in self.tabs:
            tab.stop()
        if self.process is not None:
            self.process.stop()

    def summary(self) -> dict:
        errors = [repr(t.error) for t in self.tabs if t.error is not None]
        return {"tabs": self.n, "events": sum(t.events for t in self.tabs), "queue_reads": sum(t.reads for t in self.tabs),
                "errors": errors}
