"""What every command group shares: the settings (or a clear error) and progress bars for long commands."""

from __future__ import annotations

import typer

from pipeline.settings import Settings


def load_settings() -> Settings:
    """Settings from the environment, or a clear message naming the bad variable and exit code 2."""
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the variable and what is wrong with it
        typer.secho(f"invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def progress_bars():  # -> (rich.progress.Progress, progress(label, done, total))
    """Transient progress bars on stderr, one per label, for long developer commands (bench, chaos)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)
    ids: dict[str, int] = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in ids:
            ids[label] = bars.add_task(label, total=total)
        bars.update(ids[label], completed=done)

    return bars, progress
