"""``chatmod``: the command line (typer), one module per command group.

Serving commands import no training code; ``chatmod train ...`` loads the training package on demand.
Heavy or optional packages (onnxruntime, kafka, redis, rich tables, uvicorn) are imported inside the command
that needs them, so ``chatmod --help`` and ``chatmod worker`` start without what they do not use.
"""

from __future__ import annotations

import sys

import typer

from pipeline.cli import console, messages, models, ops, policy, serve, tools, train
from pipeline.cli.common import load_settings

__all__ = ["app", "load_settings", "main"]

app = typer.Typer(help="chatmod: streaming chat moderation on Kafka.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
for group in (serve, messages, ops, tools):
    app.add_typer(group.app)
app.add_typer(models.app, name="models")
app.add_typer(policy.app, name="policy")
app.add_typer(console.app, name="console")
app.add_typer(train.app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
