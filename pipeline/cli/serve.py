"""``chatmod worker``: the moderation worker (Faust), with a watchdog on shutdown."""

from __future__ import annotations

import logging
import os
import threading
from typing import Annotated

import typer

from pipeline.cli.common import load_settings
from pipeline.logging import logging_dict_config

app = typer.Typer()


@app.command()
def worker(
    web: Annotated[bool, typer.Option(help="Serve /metrics, /health and /ready.")] = True,
) -> None:
    """Run the moderation worker against CHATMOD_KAFKA_BOOTSTRAP and CHATMOD_REDIS_URL."""
    import faust

    from pipeline.app import create_app

    settings = load_settings()
    if not web:
        settings.worker.web_enabled = False
    faust_app = create_app(settings)
    grace_s = settings.worker.shutdown_grace_s

    class Worker(faust.Worker):
        async def stop(self) -> None:
            # aiokafka's fetcher can hang while closing (seen on tansu): once the in-flight batch is done
            # and offsets are committed, nothing is lost by ending the process after the grace period.
            watchdog = threading.Timer(grace_s, _force_exit, args=(grace_s,))
            watchdog.daemon = True
            watchdog.start()
            await super().stop()

    Worker(
        faust_app, loglevel=settings.worker.log_level, quiet=True, redirect_stdouts=False,
        logging_config=logging_dict_config(settings.worker.log_level, settings.worker.log_json,
                                           settings.worker.library_log_level),
    ).execute_from_commandline()


def _force_exit(grace_s: float) -> None:
    logging.getLogger("chatmod.worker").warning("shutdown exceeded its grace period; exiting",
                                                extra={"grace_s": grace_s})
    logging.shutdown()
    os._exit(0)
