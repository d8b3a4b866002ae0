"""``chatmod console``: serve the console; ``chatmod console user add``: create an account."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pipeline.cli.common import load_settings
from pipeline.console.accounts import AccountError, Accounts
from pipeline.logging import logging_dict_config

app = typer.Typer(help="The moderator console: serve it (no subcommand), manage its users.",
                  invoke_without_command=True)
users_app = typer.Typer(help="Console accounts (stored in Redis).", no_args_is_help=True)
app.add_typer(users_app, name="user")


@app.callback()
def serve(ctx: typer.Context,
          host: Annotated[str | None, typer.Option(help="Bind address (CHATMOD_CONSOLE_HOST, 127.0.0.1).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (CHATMOD_CONSOLE_PORT, 8088).")] = None) -> None:
    """Serve the console on the configured broker and Redis until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from pipeline.console.app import create_app

    settings = load_settings()
    if host:
        settings.console.host = host
    if port:
        settings.console.port = port
    worker = settings.worker
    typer.echo(f"chatmod console on http://{settings.console.host}:{settings.console.port}/ "
               f"(broker {settings.kafka.bootstrap}, Redis {settings.redis.key_prefix})")
    uvicorn.run(create_app(settings), host=settings.console.host, port=settings.console.port, proxy_headers=True,
                log_config=logging_dict_config(worker.log_level, worker.log_json, worker.library_log_level),
                server_header=False)


@users_app.command("add")
def user_add(name: Annotated[str, typer.Argument(help="User name.")],
             role: Annotated[str, typer.Option(help="moderator or admin.")] = "moderator",
             password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                          help="Read the password from standard input.")] = False) -> None:
    """Create (or reset) an account; the password is asked for twice unless --password-stdin."""
    import redis as redis_lib

    settings = load_settings()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt(
        "password", hide_input=True, confirmation_prompt=True)
    client = redis_lib.Redis.from_url(settings.redis.url, **settings.redis.credential_kwargs())
    try:
        Accounts(client, settings.redis.key_prefix).add_user(name, password, role)  # type: ignore[arg-type]
    except AccountError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    except (redis_lib.RedisError, OSError) as exc:
        typer.secho(f"Redis unreachable at {settings.redis.url}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{role} {name} saved")


@users_app.command("list")
def user_list() -> None:
    """Accounts and their roles."""
    import redis as redis_lib

    settings = load_settings()
    client = redis_lib.Redis.from_url(settings.redis.url, **settings.redis.credential_kwargs())
    for name, role in sorted(Accounts(client, settings.redis.key_prefix).users().items()):
        typer.echo(f"{name:24s} {role}")
