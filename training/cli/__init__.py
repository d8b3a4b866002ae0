"""``chatmod train ...``: the training recipe's stages, whole recipes, and retraining; one module per group."""

from __future__ import annotations

import typer

from training.cli import recipes, retrain, steps

app = typer.Typer(help="Train, evaluate, export and register chatmod models.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
for group in (steps, recipes, retrain):
    app.add_typer(group.app)
