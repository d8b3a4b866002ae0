"""Operating a deployment: ``chatmod status`` (topics, lag, models, cache, channel mood), ``replay`` (audit a
stored range against today's models) and ``dev`` (the embedded broker and Redis for local work)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import load_settings, progress_bars
from pipeline.mood import channel_mood

app = typer.Typer()


def _channel_status(as_json: bool) -> None:
    import redis as redis_lib
    from rich.console import Console
    from rich.table import Table

    settings = load_settings()
    client = redis_lib.Redis.from_url(settings.redis.url, socket_timeout=2, socket_connect_timeout=2,
                                      **settings.redis.credential_kwargs())
    try:
        mood = channel_mood(client, settings.redis.key_prefix, time.time())
    except (redis_lib.RedisError, OSError) as exc:
        typer.secho(f"Redis unavailable at the configured CHATMOD_REDIS_URL: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(mood, indent=2))
        return
    table = Table("channel", "messages", "negative", "neutral", "positive", title="channel mood, last 5 minutes")
    for channel, row in mood.items():
        table.add_row(channel, str(row["messages"]), *(f"{row[k]:.0%}" for k in ("negative", "neutral", "positive")))
    Console().print(table if mood else "no channel active in the last 5 minutes")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
           channels: Annotated[bool, typer.Option("--channels", help="Per-channel mood over the last 5 minutes "
                                                                    "instead (from Redis).")] = False) -> None:
    """Topics, the consumer group's offsets and lag, current model versions, cache size."""

    from rich.console import Console
    from rich.table import Table

    from pipeline.devstack.status import collect_status

    if channels:
        _channel_status(as_json)
        return
    st = collect_status(load_settings())
    if as_json:
        typer.echo(json.dumps({**asdict(st), "total_lag": st.total_lag}, indent=2))
        return
    console = Console()
    console.print(f"broker {st.bootstrap} ({st.broker}), consumer group [bold]{st.group}[/]")
    topics = Table("topic", "partitions")
    for name, n in st.topics.items():
        topics.add_row(name, str(n) if n else "[red]missing[/]")
    console.print(topics)
    offsets = Table("partition", "committed", "end", "lag", title="input topic")
    for p in st.partitions:
        offsets.add_row(str(p.partition), str(p.committed), str(p.end) if st.lag_reliable else "?",
                        str(p.lag) if p.lag is not None else "unknown")
    console.print(offsets)
    console.print(f"total lag: {st.total_lag if st.total_lag is not None else 'unknown'}")
    console.print("models: " + ", ".join(f"{k}={v}" for k, v in st.models.items()))
    console.print(f"cache entries: {st.cache_keys}" if st.cache_error is None else f"cache: {st.cache_error}")
    for note in st.notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command()
def replay(
    from_offset: Annotated[int, typer.Option(min=0, help="First input offset to re-score (in each partition).")],
    to_offset: Annotated[int | None, typer.Option(help="Stop before this offset (default: the end).")] = None,
    partition: Annotated[list[int] | None, typer.Option(help="Partitions (repeatable; default: all).")] = None,
    topic: Annotated[str | None, typer.Option(help="Input topic (default CHATMOD_TOPICS_MESSAGES).")] = None,
    results_topic: Annotated[str | None, typer.Option(help="Results topic (default CHATMOD_TOPICS_MODERATED).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
) -> None:
    """Re-score a stored input range with the model versions its results name, and report every result that
    would differ today (outside latency_ms and cached). Exits 1 if any does."""
    from rich.console import Console

    from pipeline.devstack.replay import ReplayError, write_report
    from pipeline.devstack.replay import replay as run_replay

    bars, progress = progress_bars()
    try:
        with bars:
            report = run_replay(load_settings(), topic=topic, results_topic=results_topic, partitions=partition or None,
                                from_offset=from_offset, to_offset=to_offset, progress=progress)
    except ReplayError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if out is not None:
        write_report(report, out)
    console = Console()
    console.print(f"{report.topic} partitions {report.partitions}, offsets {report.from_offset}.."
                  f"{report.to_offset if report.to_offset is not None else 'end'}: {report.inputs} inputs, "
                  f"{report.dead_letters} dead letters, {report.missing_results} without a published result, "
                  f"{report.compared} compared: {report.identical} identical ({report.byte_identical} byte for "
                  f"byte), {report.differing} differing; models {report.models}")
    for diff in report.differences:
        console.print(f"  differs: id={diff['id']} partition={diff['partition']} offset={diff['offset']} "
                      f"fields={diff['fields']} decision {diff['decision'][0]} -> {diff['decision'][1]}")
    raise typer.Exit(0 if report.differing == 0 else 1)


@app.command()
def dev() -> None:
    """Run the embedded dev stack (tansu broker + Redis) until interrupted."""
    from pipeline.devstack.embedded import EmbeddedStack

    with EmbeddedStack() as stack:
        typer.echo(f"CHATMOD_KAFKA_BOOTSTRAP={stack.bootstrap}")
        typer.echo(f"CHATMOD_REDIS_URL={stack.redis_url}")
        typer.echo("embedded stack running; Ctrl-C stops it", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopping", err=True)
