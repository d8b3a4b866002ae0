"""``chatmod``: the command line (typer).

Serving commands import no training code; ``chatmod train ...`` loads the training package on demand.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer

from pipeline.console.cli import app as console_app
from pipeline.settings import Settings

app = typer.Typer(help="chatmod: streaming chat moderation on Kafka.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
models_app = typer.Typer(help="The model registry: list, show, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
policy_app = typer.Typer(help="Policy profiles: per-channel rules, terms, strikes (stored in Redis).",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")

app.add_typer(console_app, name="console")


def load_settings() -> Settings:
    """Settings from the environment, or a clear message naming the bad variable and exit code 2."""
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the variable and what is wrong with it
        typer.secho(f"invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


LIBRARY_LOGGERS = ("aiokafka", "kafka", "faust", "mode")


def logging_dict_config(level: str, json_lines: bool, library_level: str = "info") -> dict:
    """dictConfig for Faust's worker: our formatter and the content guard on the root logger; the Kafka
    client's and Faust's own loggers at ``library_level`` (or ``level``, where that is less verbose)."""
    quieter = max(logging.getLevelName(level.upper()), logging.getLevelName(library_level.upper()))
    formatter = "pipeline.logging.JsonFormatter" if json_lines else "pipeline.logging.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"guard": {"()": "pipeline.logging.ContentGuard"}},
        "formatters": {"chatmod": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "chatmod", "filters": ["guard"],
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"level": logging.getLevelName(quieter)} for name in LIBRARY_LOGGERS},
    }


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
    import logging
    import os

    logging.getLogger("chatmod.worker").warning("shutdown exceeded its grace period; exiting",
                                                extra={"grace_s": grace_s})
    logging.shutdown()
    os._exit(0)


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Messages to classify.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="One message per line.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show each text with the words that drove its "
                                                            "decision highlighted, instead of JSON.")] = False,
) -> None:
    """Classify messages locally (no Kafka): one JSON object per line, with spans and reason codes."""
    from rich.console import Console

    from pipeline.moderation import build_result
    from pipeline.schemas import ChatMessage
    from pipeline.serving import load_serving
    from pipeline.textnorm import normalise_text

    lines = list(texts or [])
    if file is not None:
        if not file.is_file():
            typer.secho(f"no such file: {file}", fg="red", err=True)
            raise typer.Exit(2)
        lines += _read_lines(file)
    if not lines:
        typer.secho("nothing to classify: give TEXT arguments or --file", fg="red", err=True)
        raise typer.Exit(2)
    settings = load_settings()
    serving = load_serving(settings)
    max_chars = settings.batching.max_text_chars
    console = Console(highlight=False)
    for start in range(0, len(lines), 256):
        chunk = lines[start : start + 256]
        normalised = [normalise_text(t, max_chars) for t in chunk]
        for text, norm, scores in zip(chunk, normalised, serving.predict(normalised)):
            result = build_result(ChatMessage(id="classify", text=text), scores, serving.policy, serving.refs,
                                  False, 0.0, norm)
            if explain:
                console.print(_explained(text, result))
                continue
            typer.echo(json.dumps({"text": text, "toxicity": _round(result.toxicity),
                                   "sentiment": _round(result.sentiment), "flags": result.flags,
                                   "decision": result.decision, "spans": result.spans, "reasons": result.reasons,
                                   "models": serving.refs}, ensure_ascii=False))


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 file; lines that are not valid UTF-8 are decoded with U+FFFD for the
    bad bytes, and named on stderr (a stray byte in a chat export should not stop the other lines)."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    lines, bad = [], []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(number)
            text = line.decode("utf-8", errors="replace")
        if text.strip():
            lines.append(text)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        typer.secho(f"{path}: line{'s' if len(bad) > 1 else ''} {shown} not valid UTF-8; the bad bytes read "
                    "as U+FFFD", fg="yellow", err=True)
    return lines


@app.command()
def schemas(out: Annotated[Path, typer.Argument(help="Folder for <topic>.json files.")] = Path("docs/schemas")) -> None:
    """Write the JSON Schema of every topic's records (the wire contract, as the code validates it)."""
    from pipeline.schemas import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for topic, schema in json_schemas().items():
        (out / f"{topic}.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        typer.echo(f"wrote {out / f'{topic}.json'}")


def _explained(text: str, result):  # -> rich.text.Text
    """``decision  text-with-spans-highlighted  reasons``, for a terminal."""
    from rich.text import Text

    colour = {"allow": "green", "review": "yellow", "block": "red"}[result.decision]
    line = Text(f"{result.decision:<6} ", style=f"bold {colour}")
    body = Text(text)
    for span in result.spans:
        body.stylize(f"bold reverse {colour}", span["start"], span["end"])
    line.append_text(body)
    if result.reasons:
        line.append(f"  [{', '.join(result.reasons)}]", style="dim")
    return line


def _round(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items()}


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(help="JSON objects or plain text, one per line.")],
    topic: Annotated[str | None, typer.Option(help="Default: the messages topic.")] = None,
    rate: Annotated[float, typer.Option(help="Messages per second; 0 = as fast as possible.")] = 0.0,
    channel: Annotated[str, typer.Option(help="Channel for plain-text lines.")] = "cli",
) -> None:
    """Send a file to Kafka. Plain-text lines become {"id", "text", "channel", "ts"} messages."""
    from kafka import KafkaProducer

    from pipeline.kafka_tools import kafka_client_config

    settings = load_settings()
    target = topic or settings.topics.messages
    producer = KafkaProducer(**kafka_client_config(settings.kafka), acks="all", linger_ms=5)
    sent, started = 0, time.monotonic()
    with file.open("rb") as fh:
        for raw in fh:
            raw = raw.rstrip(b"\n")
            if not raw.strip():
                continue
            value, key = _as_message(raw, channel)
            producer.send(target, key=key, value=value)
            sent += 1
            if rate > 0:
                time.sleep(max(0.0, sent / rate - (time.monotonic() - started)))
    producer.flush()
    producer.close()
    typer.echo(json.dumps({"topic": target, "sent": sent, "seconds": round(time.monotonic() - started, 3)}))


def _as_message(raw: bytes, channel: str) -> tuple[bytes, bytes | None]:
    """JSON-object lines pass through verbatim (malformed ones too: that is what the DLQ is for)."""
    if raw.lstrip().startswith(b"{"):
        try:
            obj = json.loads(raw)
            return raw, str(obj.get("id", "")).encode() or None
        except (ValueError, AttributeError):
            return raw, None
    msg_id = uuid.uuid4().hex
    text = raw.decode("utf-8", errors="replace")
    value = {"id": msg_id, "text": text, "channel": channel, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps(value).encode(), msg_id.encode()


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read, e.g. chat.moderated.v1")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the earliest offset.")] = True,
    max_messages: Annotated[int, typer.Option("--max", help="Stop after this many (0 = no limit).")] = 0,
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds (0 = never).")] = 0.0,
) -> None:
    """Print a topic's records as JSON lines (DLQ records with their chatmod.* headers)."""
    from pipeline.devstack.kafka_io import tail_records

    settings = load_settings()
    for record in tail_records(settings.kafka, topic, from_beginning, max_messages, idle_timeout):
        typer.echo(json.dumps(record, ensure_ascii=False))


def _channel_status(as_json: bool) -> None:
    import redis as redis_lib
    from rich.console import Console
    from rich.table import Table

    from pipeline.enforcement import channel_mood

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
    from dataclasses import asdict

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


@app.command()
def demo(
    messages: Annotated[int, typer.Option(min=1, help="How many chat lines to replay (repeats included).")] = 600,
    live: Annotated[bool, typer.Option(help="Show the live view (plain lines when not a terminal).")] = True,
    rate: Annotated[float, typer.Option(min=0.1, help="Messages per second.")] = 60.0,
    with_console: Annotated[bool, typer.Option("--console/--no-console",
                                               help="Serve the moderator console beside it (a demo login is printed).")] = True,
) -> None:
    """Replay a sample chat through a worker on the embedded stack and summarise what happened.

    Serves the bundled default models; CHATMOD_MODELS_STORE, when set, names a store to serve instead.
    """
    from pipeline.devstack.demo import run_demo

    settings = load_settings()
    store = settings.models.store if "store" in settings.models.model_fields_set else None
    raise typer.Exit(run_demo(n_messages=messages, live=live, store=store, rate=rate, with_console=with_console))


def _progress_bars():  # -> (rich.progress.Progress, progress(label, done, total))
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


@app.command()
def bench(
    part: Annotated[list[str] | None, typer.Option("--only", help="model and/or e2e (default: both).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report (the latency plot goes beside it, "
                                           ".svg).")] = Path("bench.json"),
    store: Annotated[Path | None, typer.Option(help="Model store (default: the bundled defaults).")] = None,
    texts: Annotated[int, typer.Option(help="Texts per model-only row.")] = 2000,
    messages: Annotated[int, typer.Option(help="Messages per flat-out end-to-end workload.")] = 20000,
    threads: Annotated[int, typer.Option(help="Model threads (ONNX Runtime and torch alike).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Model-only batch size.")] = 64,
    max_batch: Annotated[int, typer.Option(help="The worker's micro-batch size (CHATMOD_BATCHING_MAX_BATCH).")] = 128,
    bound_ms: Annotated[float, typer.Option(help="The p99 bound of the capacity search, ms.")] = 150.0,
    capacity_start: Annotated[float | None, typer.Option(help="First offered load of the capacity search "
                                                              "(default: a third of the unique throughput).")] = None,
    capacity_seconds: Annotated[float, typer.Option(help="Seconds per load of the capacity search.")] = 8.0,
    peer_messages: Annotated[int, typer.Option(help="Messages through the peer design (0: not run).")] = 1000,
    console_tabs: Annotated[int, typer.Option(help="Also run the unique workload while a console serves this "
                                                   "many open queue pages (0: not run).")] = 0,
    seed: Annotated[int, typer.Option()] = 13,
    worker_setting: Annotated[list[str] | None, typer.Option(
        "--worker-setting", help="A worker setting for the end-to-end runs, as its environment variable: "
                                 "CHATMOD_KAFKA_FETCH_MAX_WAIT_MS=20 (repeatable).")] = None,
    compare: Annotated[list[str] | None, typer.Option(
        "--compare", help="After the end-to-end runs, the unique workload again on a worker with this one "
                          "setting changed, side by side: CHATMOD_MODELS_EXPLAIN=off (repeatable).")] = None,
    profile_terms: Annotated[int, typer.Option(
        help="Also run the unique workload with a default profile of this many block terms, then with a strike "
             "ladder and flood limits as well, side by side (0: not run).")] = 0,
) -> None:
    """Benchmarks: model-only beside the transformers pipeline; end to end on the embedded stack (unique,
    repeats, a raid), the capacity at a p99 bound with its latency-by-load plot, the stack's own limit and
    the peer design. Prints tables and writes a JSON report and an SVG."""
    from rich.console import Console

    from pipeline.devstack.bench import E2EPlan, run_bench
    from pipeline.devstack.bench_report import latency_plot, render

    parts = set(part or ("model", "e2e"))
    if parts - {"model", "e2e"}:
        raise typer.BadParameter(f"--only takes model or e2e, got {sorted(parts - {'model', 'e2e'})}")
    for item in [*(worker_setting or []), *(compare or [])]:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("CHATMOD_"):
            raise typer.BadParameter(f"--worker-setting and --compare take CHATMOD_<GROUP>_<NAME>=value, got {item!r}")
    compare = list(compare or [])
    if profile_terms:
        import tempfile

        from pipeline.devstack.bench_workload import policy_profile_file

        folder = Path(tempfile.mkdtemp(prefix="chatmod-bench-profile-"))
        compare += [f"CHATMOD_POLICY_DEFAULT_PROFILE={policy_profile_file(folder, profile_terms, state=False)}",
                    f"CHATMOD_POLICY_DEFAULT_PROFILE={policy_profile_file(folder, profile_terms)}"]
    plan = E2EPlan(messages=messages, threads=threads, max_batch=max_batch, seed=seed,
                   worker_env=dict(item.split("=", 1) for item in worker_setting or []), compare=compare,
                   bound_ms=bound_ms, capacity_start=capacity_start, capacity_seconds=capacity_seconds,
                   peer_messages=peer_messages, console_tabs=console_tabs)
    bars, progress = _progress_bars()
    with bars:
        report = run_bench(parts, store, plan, texts, batch_size, say=bars.console.print, progress=progress)
    out.write_text(json.dumps(report, indent=2))
    render(report, Console())
    typer.echo(f"report written to {out}")
    plot = latency_plot(report)
    if plot is not None:
        out.with_suffix(".svg").write_text(plot)
        typer.echo(f"latency by load drawn in {out.with_suffix('.svg')}")


@app.command()
def chaos(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of steady load; the faults fall inside.")] = 180.0,
    rate: Annotated[float, typer.Option(min=1, help="Messages per second.")] = 300.0,
    kill_every: Annotated[float, typer.Option(min=1, help="SIGKILL a worker (and restart it) this often, s.")] = 30.0,
    redis_restarts: Annotated[int, typer.Option(min=0, help="Restarts of Redis (no persistence) in the run.")] = 2,
    store: Annotated[Path | None, typer.Option(help="Model store (default: the bundled defaults).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("chaos.json"),
) -> None:
    """Two workers under steady load, SIGKILLed in turn, Redis restarted empty: checks that every id comes
    out and that copies of a result differ only in latency_ms and cached. Exits 1 when the contract broke."""
    from rich.console import Console

    from pipeline.devstack.chaos import ChaosConfig, run_chaos

    cfg = ChaosConfig(duration_s=duration, rate=rate, kill_every_s=kill_every, redis_restarts=redis_restarts,
                      store=store)
    bars, progress = _progress_bars()
    with bars:
        report = run_chaos(cfg, say=bars.console.print, progress=progress)
    out.write_text(json.dumps(report.to_dict(), indent=2))
    console = Console()
    console.print(f"produced {report.produced:,}, results {report.results:,} ({report.unique_ids:,} ids), "
                  f"lost {report.lost}, duplicates {report.duplicates} "
                  f"({report.duplicates_byte_identical} byte-identical, {report.duplicates_differing} differing "
                  f"outside latency_ms/cached, {report.decisions_differing} with another decision), "
                  f"{report.kills} kills, {report.redis_restarts} Redis restarts, {report.seconds:.0f} s")
    console.print(("[green]contract held" if report.ok else "[red]contract broken") + f"; report in {out}")
    raise typer.Exit(0 if report.ok else 1)


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

    from pipeline.devstack.replay import ReplayError, replay as run_replay, write_report

    bars, progress = _progress_bars()
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Training: teacher, distill, evaluate, export, promote, all (see `chatmod train --help`)."""
    try:
        from training.cli import app as train_app
    except ImportError as exc:
        typer.secho(f"training needs the train extra: pip install 'chatmod[train]' ({exc})", fg="red", err=True)
        raise typer.Exit(2) from exc
    train_app(list(ctx.args), prog_name="chatmod train")


@models_app.command("list")
def models_list() -> None:
    """Every model in the store, with the current one per task marked."""
    from pipeline.serving import open_registry

    registry = open_registry(load_settings())
    current = {t: registry.current(t) for t in ("toxicity", "sentiment")}
    candidates = set(registry.candidates())
    for manifest in registry.list():
        serving = [t for t, ref in current.items() if ref == manifest.ref]
        mark = f"  <- current for {', '.join(serving)}" if serving else ""
        if manifest.ref in candidates and not serving:
            gate = manifest.metrics.get("retrain", {}).get("gate", {})
            mark = "  (candidate" + (", gate refused" if gate and not gate.get("passed") else "") + ")"
        typer.echo(f"{manifest.ref:40s} {manifest.family:10s} {','.join(str(t) for t in manifest.tasks):20s}{mark}")


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="name@version")]) -> None:
    """A model's manifest as JSON."""
    from pipeline.serving import open_registry

    manifest, _ = open_registry(load_settings()).get(ref)
    typer.echo(manifest.model_dump_json(indent=2, exclude={"files"}))


@models_app.command("promote")
def models_promote(ref: Annotated[str, typer.Argument(help="name@version")],
                   task: Annotated[list[str] | None, typer.Option(help="Tasks (default: all its heads).")] = None) -> None:
    """Make a model current (its checksums and labels are verified first)."""
    from pipeline.serving import open_registry

    settings = load_settings()
    registry = open_registry(settings)
    registry.promote(ref, tasks=task or None)
    typer.echo(f"promoted {ref}")
    _announce(settings, registry, f"promoted {ref}")


@models_app.command("rollback")
def models_rollback(task: Annotated[str, typer.Argument(help="toxicity or sentiment")]) -> None:
    """Go back to the previous current model of a task."""
    from pipeline.serving import open_registry

    settings = load_settings()
    registry = open_registry(settings)
    ref = registry.rollback(task)
    typer.echo(f"{task}: rolled back to {ref}")
    _announce(settings, registry, f"{task} rolled back to {ref}")


def _announce(settings: Settings, registry, reason: str) -> None:  # noqa: ANN001 - ModelRegistry
    """Tell running workers to reload now (they would also notice at their next registry poll)."""
    from pipeline.control import announce_current_models

    if not settings.redis.enabled:
        return
    heard = announce_current_models(settings.redis, registry, reason)
    if heard is None:
        typer.echo(f"Redis unreachable: running workers switch at their next registry poll "
                   f"(every {settings.models.reload_poll_s:g} s)")
    else:
        typer.echo(f"{heard} running worker(s) notified")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------- policy profiles


def _profile_store(settings: Settings):  # -> pipeline.profiles.ProfileStore
    from pipeline.profiles import open_profile_store

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


@policy_app.command("list")
def policy_list() -> None:
    """Stored profiles (name@version, mode, terms, ladder) and which channels use each."""
    store = _profile_store(load_settings())

    def run() -> None:
        from pipeline.profiles import DEFAULT_PROFILE, Profile

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


@policy_app.command("show")
def policy_show(name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """A stored profile as JSON (the form ``set`` takes)."""
    store = _profile_store(load_settings())
    profile = _policy_call(lambda: store.get(name))
    if profile is None:
        typer.secho(f"no profile named {name!r}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(profile.model_dump_json(indent=2))


@policy_app.command("set")
def policy_set(file: Annotated[Path, typer.Argument(help="A profile as YAML or JSON.")]) -> None:
    """Validate a profile file and store it as the next version of its name; running workers pick it up."""
    from pipeline.control import announce_profiles_changed
    from pipeline.profiles import load_profile_file

    settings = load_settings()
    store = _profile_store(settings)
    stored = _policy_call(lambda: store.put(load_profile_file(file)))
    heard = announce_profiles_changed(settings.redis, f"policy set {stored.ref}")
    typer.echo(f"stored {stored.ref}" + (f"; {heard} worker(s) notified" if heard is not None else ""))


@policy_app.command("assign")
def policy_assign(channel: Annotated[str, typer.Argument(help="Channel id, as messages carry it.")],
                  name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """Make a channel use a profile."""
    from pipeline.control import announce_profiles_changed

    settings = load_settings()
    store = _profile_store(settings)
    _policy_call(lambda: store.assign(channel, name))
    announce_profiles_changed(settings.redis, f"policy assign {name}")
    typer.echo(f"channel {channel} -> {name}")


@policy_app.command("rm")
def policy_rm(name: Annotated[str, typer.Argument(help="Profile name.")]) -> None:
    """Remove a profile no channel uses."""
    from pipeline.control import announce_profiles_changed

    settings = load_settings()
    store = _profile_store(settings)
    _policy_call(lambda: store.remove(name))
    announce_profiles_changed(settings.redis, f"policy rm {name}")
    typer.echo(f"removed {name}")
