"""The console served by uvicorn in a background thread: for ``chatmod demo`` and the tests, which run it
beside other work in one process (``chatmod console`` serves it in the foreground instead)."""

from __future__ import annotations

import threading
import time

from pipeline.settings import Settings


class ConsoleThread:
    """``with ConsoleThread(settings) as url:`` serves the console until the block ends."""

    def __init__(self, settings: Settings, start_timeout_s: float = 30.0):
        import uvicorn

        from pipeline.console.app import create_app

        self.settings = settings
        config = uvicorn.Config(create_app(settings), host=settings.console.host, port=settings.console.port,
                                log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="chatmod-console", daemon=True)
        self.start_timeout_s = start_timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.settings.console.host}:{self.settings.console.port}"

    def start(self) -> str:
        """Serve, and return once the console reads its topics (the feed's partitions assigned)."""
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        feed = self.server.config.app.state.console.feed
        while not (self.server.started and feed.reading and all(feed.reading.values())):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the console did not start reading on {self.url} in {self.start_timeout_s:.0f} s")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
