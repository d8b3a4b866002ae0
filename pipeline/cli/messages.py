"""Messages by hand: ``chatmod classify`` (local, no Kafka), ``produce``, ``tail`` and ``schemas``."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer

from models.normalise import normalise_text
from pipeline.cli.common import load_settings
from pipeline.decisions import build_result
from pipeline.kafka_tools import kafka_client_config
from pipeline.schemas import ChatMessage, json_schemas

app = typer.Typer()


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Messages to classify.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="One message per line.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show each text with the words that drove its "
                                                            "decision highlighted, instead of JSON.")] = False,
) -> None:
    """Classify messages locally (no Kafka): one JSON object per line, with spans and reason codes."""
    from rich.console import Console

    from pipeline.serving import load_serving

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
