"""``chatmod train ...``: the training package's own CLI (``training.cli``), loaded only when asked for, so
the serving install needs no torch."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Training: teacher, distill, evaluate, export, promote, all (see `chatmod train --help`)."""
    try:
        from training.cli import app as train_app
    except ImportError as exc:
        typer.secho(f"training needs the train extra: pip install 'chatmod[train]' ({exc})", fg="red", err=True)
        raise typer.Exit(2) from exc
    train_app(list(ctx.args), prog_name="chatmod train")
