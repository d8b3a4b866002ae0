"""``chatmod models``: the registry (list, show, promote, roll back); running workers are told to reload."""

from __future__ import annotations

from typing import Annotated

import typer

from models.registry import open_store
from pipeline.cli.common import load_settings
from pipeline.control import announce_current_models
from pipeline.settings import Settings

app = typer.Typer(help="The model registry: list, show, promote, roll back.", no_args_is_help=True)


@app.command("list")
def models_list() -> None:
    """Every model in the store, with the current one per task marked."""
    registry = open_store(load_settings().models.store)
    current = {t: registry.current(t) for t in ("toxicity", "sentiment")}
    candidates = set(registry.candidates())
    for manifest in registry.manifests():
        serving = [t for t, ref in current.items() if ref == manifest.ref]
        mark = f"  <- current for {', '.join(serving)}" if serving else ""
        if manifest.ref in candidates and not serving:
            gate = manifest.metrics.get("retrain", {}).get("gate", {})
            mark = "  (candidate" + (", gate refused" if gate and not gate.get("passed") else "") + ")"
        typer.echo(f"{manifest.ref:40s} {manifest.family:10s} {','.join(str(t) for t in manifest.tasks):20s}{mark}")


@app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="name@version")]) -> None:
    """A model's manifest as JSON."""
    manifest, _ = open_store(load_settings().models.store).get(ref)
    typer.echo(manifest.model_dump_json(indent=2, exclude={"files"}))


@app.command("promote")
def models_promote(ref: Annotated[str, typer.Argument(help="name@version")],
                   task: Annotated[list[str] | None, typer.Option(help="Tasks (default: all its heads).")] = None) -> None:
    """Make a model current (its checksums and labels are verified first)."""
    settings = load_settings()
    registry = open_store(settings.models.store)
    registry.promote(ref, tasks=task or None)
    typer.echo(f"promoted {ref}")
    _announce(settings, registry, f"promoted {ref}")


@app.command("rollback")
def models_rollback(task: Annotated[str, typer.Argument(help="toxicity or sentiment")]) -> None:
    """Go back to the previous current model of a task."""
    settings = load_settings()
    registry = open_store(settings.models.store)
    ref = registry.rollback(task)
    typer.echo(f"{task}: rolled back to {ref}")
    _announce(settings, registry, f"{task} rolled back to {ref}")


def _announce(settings: Settings, registry, reason: str) -> None:  # noqa: ANN001 - ModelRegistry
    """Tell running workers to reload now (they would also notice at their next registry poll)."""
    if not settings.redis.enabled:
        return
    heard = announce_current_models(settings.redis, registry, reason)
    if heard is None:
        typer.echo(f"Redis unreachable: running workers switch at their next registry poll "
                   f"(every {settings.models.reload_poll_s:g} s)")
    else:
        typer.echo(f"{heard} running worker(s) notified")
