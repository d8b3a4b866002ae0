"""``chatmod policy``: per-channel profiles in Redis (list, show, set, assign, rm); workers are told at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import load_settings
from pipeline.control import announce_profiles_changed
from pipeline.profiles import DEFAULT_PROFILE, Profile, load_profile_file, open_profile_store
from pipeline.settings import Settings

app = typer.Typer(help="Policy profiles: per-channel rules, terms, strikes (stored in Redis).", no_args_is_help=True)


def _profile_store(settings: Settings):  # -> pipeline.profiles.ProfileStore

    return open_profile_store(settings)


def _policy_call(action):  # Redis errors and refused profiles end the command with a clear message
    import redis as redis_lib
    from pydantic import ValidationError

    try:
        return action()
    except ValidationError as exc:
        typer.secho(f"profile refused (nothing was changed):\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except (ValueError, OSError) as exc:
        typer.secho(f"refused: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except redis_lib.RedisError as exc:
        typer.secho(f"Redis unavailable at the configured CHATMOD_REDIS_URL: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("list")
def policy_list() -> None:
    """Stored profiles (name@version, mode, terms, ladder) and which channels use each."""
    store = _profile_store(load_settings())

    def run() -> None:

        assigned = store.assignments()
        raw = store.raw()
        if DEFAULT_PROFILE not in raw:
            typer.echo(f"{DEFAULT_PROFILE}@0 (built in: the model's thresholds, enforce) channels: every unassigned one")
        for name in sorted(raw):
            p = Profile.model_validate_json(raw[name])
            channels = sorted(c for c, n in assigned.items() if n == name)
            typer.echo(f"{p.ref} mode={p.mode} allow_profanity={p.allow_profanity} block_terms={len(p.block_terms)} "
                       f"allow_terms={len(p.allow_terms)} ladder={len(p.strikes.ladder)} "
                       f"channels={channels if channels else ('every unassigned one' if name == DEFAULT_PROFILE else [])}")

    _policy_call(run)


@app.command("show")
def policy_show(name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """A stored profile as JSON (the form ``set`` takes)."""
    store = _profile_store(load_settings())
    profile = _policy_call(lambda: store.get(name))
    if profile is None:
        typer.secho(f"no profile named {name!r}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(profile.model_dump_json(indent=2))


@app.command("set")
def policy_set(file: Annotated[Path, typer.Argument(help="A profile as YAML or JSON.")]) -> None:
    """Validate a profile file and store it as the next version of its name; running workers pick it up."""
    settings = load_settings()
    store = _profile_store(settings)
    stored = _policy_call(lambda: store.put(load_profile_file(file)))
    heard = announce_profiles_changed(settings.redis, f"policy set {stored.ref}")
    typer.echo(f"stored {stored.ref}" + (f"; {heard} worker(s) notified" if heard is not None else ""))


@app.command("assign")
def policy_assign(channel: Annotated[str, typer.Argument(help="Channel id, as messages carry it.")],
                  name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """Make a channel use a profile."""
    settings = load_settings()
    store = _profile_store(settings)
    _policy_call(lambda: store.assign(channel, name))
    announce_profiles_changed(settings.redis, f"policy assign {name}")
    typer.echo(f"channel {channel} -> {name}")


@app.command("rm")
def policy_rm(name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """Remove a profile no channel uses."""
    settings = load_settings()
    store = _profile_store(settings)
    _policy_call(lambda: store.remove(name))
    announce_profiles_changed(settings.redis, f"policy rm {name}")
    typer.echo(f"removed {name}")
