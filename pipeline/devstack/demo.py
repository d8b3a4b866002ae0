"""`chatmod demo`: replay a sample chat through a real worker on the embedded stack, and show it.

Starts tansu and Redis, a private model store (seeded from the bundled defaults), and
`chatmod worker` as a child process with its log in a file; replays ``pipeline/data/sample_chat.txt``
at a steady pace with a few malformed records mixed in, reads the moderated and DLQ topics back on
a thread, and ends with a summary. Exit code 0 only if every message got a result and every
malformed record reached the DLQ. Everything started is stopped again, on Ctrl-C and errors too.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from kafka import KafkaProducer
from rich.console import Console
from rich.text import Text

from pipeline.console.accounts import Accounts
from pipeline.devstack.demo_view import ChatLine, LiveView, PlainView, Tally, render_summary
from pipeline.devstack.embedded import EmbeddedStack, ServiceStartError, create_topics
from pipeline.devstack.kafka_io import Records, TopicReader
from pipeline.devstack.worker_process import (
    MODELS_LOADED_MARK,
    PARTITIONS_ASSIGNED_MARK,
    TOPIC_PARTITIONS,
    StoreError,
    WorkerProcess,
    WorkerStartError,
    prepare_store,
    worker_env,
)
from pipeline.profiles import Profile, ProfileStore
from pipeline.settings import RedisSettings, Settings, TopicsSettings

DEFAULT_RATE = 60.0  # messages per second: fast enough to show batching, slow enough to watch
WORKER_READY_TIMEOUT_S = 90.0
STALL_TIMEOUT_S = 30.0  # after the last record is sent, give up once no result has arrived for this long

# Deliberately broken records, each distinct: the DLQ carries the raw bytes verbatim, so what comes
# back can be matched with what was sent.
MALFORMED: tuple[bytes, ...] = (
    b'{"id": "demo-broken-json", "text": "unterminated',  # not JSON
    b'{"text": "a message without an id", "channel": "just_chatting"}',  # schema: id missing
    b'{"id": "demo-broken-utf8", "text": "caf\xe9 \xff\xfe"}',  # not UTF-8
    b'["a", "list", "is", "not", "a", "message"]',  # not an object
    b'{"id": "demo-broken-type", "text": 42}',  # schema: text is not a string
)


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


def load_sample() -> list[ChatLine]:
    """The bundled sample chat: ``user<TAB>channel<TAB>text`` per line."""
    raw = resources.files("pipeline").joinpath("data/sample_chat.txt").read_text(encoding="utf-8")
    lines = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"sample_chat.txt line {number}: expected user<TAB>channel<TAB>text")
        lines.append(ChatLine(*parts))
    return lines


def run_demo(n_messages: int = 600, live: bool = True, store: Path | None = None, rate: float = DEFAULT_RATE,
             console: Console | None = None, with_console: bool = True) -> int:
    """Run the demo; returns the process exit code (0 ok, 1 failed, 130 interrupted).

    ``store`` is a model store to serve from as is (tests pass a tiny one); by default a private copy
    of the bundled defaults is used. ``live`` is ignored when the console is not a terminal.
    ``with_console``: serve the moderator console on the demo's stack (and keep it up after the replay,
    until Ctrl-C, when a person watches the live view).
    """
    if n_messages < 1:
        raise ValueError(f"n_messages must be >= 1, got {n_messages}")
    if rate <= 0:
        raise ValueError(f"rate must be > 0 messages per second, got {rate}")
    console = console or Console()
    live = live and console.is_terminal
    with tempfile.TemporaryDirectory(prefix="chatmod-demo-") as tmp, contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_sigterm_as_interrupt())
        try:
            return _run(n_messages, rate, store, console, live, Path(tmp), cleanup, with_console)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping the worker and the embedded stack[/]")
            return 130
        except (DemoError, StoreError) as exc:
            console.print(Text.assemble(("demo failed: ", "bold red"), str(exc)), soft_wrap=True)
            return 1


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the demo runs, so `kill` also stops the worker and the stack."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001, ARG001 - signal handler signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(n: int, rate: float, store: Path | None, console: Console, live: bool, tmp: Path,
         cleanup: contextlib.ExitStack, with_console: bool = True) -> int:
    topics = TopicsSettings()  # the standard names: the demo's broker is its own
    with _step(console, live, "model store") as note:
        store, tasks = prepare_store(store, tmp / "store")
        note.append(f"{store}  ({', '.join(f'{t}={ref}' for t, ref in tasks.items())})")
    stack = _start_stack(topics, console, live, cleanup)
    worker = _start_worker(worker_env(stack, store, tasks, tmp), tmp, console, live, cleanup)
    url = None
    if with_console:
        with _step(console, live, "moderator console") as note:
            url, user, password = _start_console(stack, store, tmp, cleanup)
            note.append(url)
        console.print(Text.assemble("moderator console: ", (url, "bold"), f"  log in as {user} / {password}"),
                      soft_wrap=True)
    code = _replay_and_check(stack.bootstrap, topics, n, rate, console, live, worker, cleanup)
    if url and live and code == 0:  # a person is watching: the console stays for them
        console.print(Text.assemble("the console stays up at ", (url, "bold"), ": Ctrl-C stops everything"))
        while worker.alive:
            time.sleep(0.5)
    return code


def _start_stack(topics: TopicsSettings, console: Console, live: bool, cleanup: contextlib.ExitStack) -> EmbeddedStack:
    """tansu, Redis, the topics and the demo's policy profile, each a step on screen."""
    stack = EmbeddedStack()
    cleanup.callback(stack.stop)
    try:
        with _step(console, live, "Kafka broker (tansu)") as note:
            stack.broker.start()
            note.append(stack.bootstrap)
        with _step(console, live, "Redis") as note:
            stack.redis.start()
            note.append(stack.redis_url)
        with _step(console, live, "topics") as note:
            names = (topics.messages, topics.moderated, topics.flagged, topics.dlq, topics.feedback)
            create_topics(stack.bootstrap, dict.fromkeys(names, TOPIC_PARTITIONS))
            note.append(", ".join(names))
        with _step(console, live, "policy profile") as note:
            profile = _store_demo_profile(stack.redis_url)
            note.append(f"{profile.ref} on {DEMO_PROFILE_CHANNEL}: {len(profile.block_terms)} block terms, "
                        f"a {len(profile.strikes.ladder)}-rung strike ladder")
    except (ServiceStartError, TimeoutError) as exc:
        raise DemoError(str(exc)) from exc
    return stack


def _start_worker(env: dict[str, str], tmp: Path, console: Console, live: bool,
                  cleanup: contextlib.ExitStack) -> WorkerProcess:
    worker = WorkerProcess(env, tmp / "worker.log")
    cleanup.callback(worker.stop)
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    try:
        with _step(console, live, "worker: loading models") as note:
            worker.start()
            worker.wait_for(MODELS_LOADED_MARK, deadline)
            note.append(f"pid {worker.pid}, log {worker.log_path}")
        with _step(console, live, "worker: joining the consumer group"):
            worker.wait_for(PARTITIONS_ASSIGNED_MARK, deadline)
    except WorkerStartError as exc:
        raise DemoError(f"{exc}\n(the worker has {WORKER_READY_TIMEOUT_S:.0f}s to start)") from exc
    return worker


def _replay_and_check(bootstrap: str, topics: TopicsSettings, n: int, rate: float, console: Console, live: bool,
                      worker: WorkerProcess, cleanup: contextlib.ExitStack) -> int:
    """Replay the sample chat with the malformed records, read everything back, and judge it."""
    tally = Tally(total=n, malformed_total=len(MALFORMED))

    def on_records(now: float, records: Records) -> None:
        for topic, value in records:
            if topic == topics.dlq:
                tally.on_dead_letter(value)
            else:
                tally.on_result(json.loads(value), now)

    # A short fetch wait: tansu holds a fetch up to the wait, which would show in the end-to-end latency.
    reader = TopicReader(bootstrap, [topics.moderated, topics.dlq], on_records, from_beginning=True,
                         fetch_max_wait_ms=20, name="chatmod-demo-reader")
    reader.start()
    cleanup.callback(reader.close)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    cleanup.callback(producer.close, timeout=5)
    console.print(f"replaying {n} chat messages at {rate:g}/s, with {len(MALFORMED)} malformed records mixed in",
                  soft_wrap=True)
    view = (LiveView if live else PlainView)(console, tally)
    with view:
        _replay(producer, topics.messages, load_sample(), n, rate, tally, view, worker)
        _await_results(tally, worker, reader, view)
    return _verdict(console, tally, worker)


def _start_console(stack, store: Path, tmp: Path, cleanup: contextlib.ExitStack) -> tuple[str, str, str]:
    """The console on the demo's stack, with a demo admin account; (url, user, password)."""
    import secrets

    import redis as redis_lib

    from pipeline.console.server import ConsoleThread
    from pipeline.devstack.childproc import free_port

    port = 8088 if _port_free(8088) else free_port()
    settings = Settings(kafka={"bootstrap": stack.bootstrap}, redis={"url": stack.redis_url}, models={"store": store},
                        feedback={"store": tmp / "feedback-store"}, console={"host": "127.0.0.1", "port": port})
    password = secrets.token_urlsafe(9)
    Accounts(redis_lib.Redis.from_url(stack.redis_url), settings.redis.key_prefix).add_user("demo", password, "admin")
    server = ConsoleThread(settings)
    url = server.start()
    cleanup.callback(server.stop)
    return url, "demo", password


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


DEMO_PROFILE_CHANNEL = "fps_ranked"


def _store_demo_profile(redis_url: str):  # -> pipeline.profiles.Profile
    """Store the bundled demo profile in the demo's Redis and assign it to one channel."""
    import redis as redis_lib
    import yaml

    raw = resources.files("pipeline").joinpath("data/demo_profile.yaml").read_text(encoding="utf-8")
    store = ProfileStore(redis_lib.Redis.from_url(redis_url), RedisSettings().key_prefix)
    stored = store.put(Profile.model_validate(yaml.safe_load(raw)))
    store.assign(DEMO_PROFILE_CHANNEL, stored.name)
    return stored


@contextlib.contextmanager
def _step(console: Console, live: bool, label: str) -> Iterator[list[str]]:
    """Show one start-up step: a spinner (or a plain line) while it runs, then ✓ or ✗ with its time."""
    started, note = time.monotonic(), []
    if not live:
        console.print(f"… {label}", highlight=False, soft_wrap=True)
    try:
        with console.status(f"{label}…") if live else contextlib.nullcontext():
            yield note
    except BaseException:
        console.print(Text.assemble(("✗ ", "bold red"), label))
        raise
    console.print(Text.assemble(("✓ ", "green"), label, (f" ({time.monotonic() - started:.1f}s) ", "dim"),
                                " ".join(note)), soft_wrap=True)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _replay(producer, topic: str, lines: list[ChatLine], n: int, rate: float, tally: Tally, view,
            worker: WorkerProcess) -> None:
    """Send ``n`` chat messages at ``rate`` per second (the sample cycles), bad records spread among them."""
    bad_at: dict[int, list[bytes]] = {}
    for k, raw in enumerate(MALFORMED):
        bad_at.setdefault((k + 1) * n // (len(MALFORMED) + 1), []).append(raw)
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    for i in range(n):
        for raw in bad_at.get(i, ()):
            tally.on_malformed_sent(time.monotonic())
            producer.send(topic, value=raw)
        line = lines[i % len(lines)]
        msg_id = f"demo-{run_id}-{i:05d}"
        value = json.dumps({"id": msg_id, "text": line.text, "user": line.user, "channel": line.channel,
                            "ts": _now_iso()}, ensure_ascii=False).encode()
        tally.on_sent(msg_id, line, time.monotonic())
        producer.send(topic, key=line.channel.encode(), value=value)  # keyed by channel: ordered per channel
        view.tick()
        if i % 50 == 0 and not worker.alive:
            raise DemoError(worker.exit_message())
        pause = (i + 1) / rate - (time.monotonic() - started)
        if pause > 0:
            time.sleep(pause)
    producer.flush(timeout=30)


def _await_results(tally: Tally, worker: WorkerProcess, reader: TopicReader, view) -> None:
    """Wait until everything is back, or no result has arrived for STALL_TIMEOUT_S."""
    last_progress, seen = time.monotonic(), -1
    while not tally.complete():
        with tally.lock:
            count = len(tally.results) + len(tally.dead_letters)
        if count != seen:
            last_progress, seen = time.monotonic(), count
        elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
            return  # the summary says what is missing
        if reader.error is not None:
            raise DemoError(f"reading results failed: {reader.error!r}")
        if not worker.alive:
            raise DemoError(worker.exit_message())
        view.tick()
        time.sleep(0.1)


def _verdict(console: Console, tally: Tally, worker: WorkerProcess) -> int:
    console.print(render_summary(tally))
    with tally.lock:
        problems = []
        if tally.lost:
            problems.append(f"{tally.lost} of {len(tally.sent)} messages got no result "
                            f"within {STALL_TIMEOUT_S:.0f}s of the last one")
        missing = set(MALFORMED) - set(tally.dead_letters)
        if missing:
            problems.append(f"{len(missing)} of {len(MALFORMED)} malformed records did not reach the DLQ")
    if problems:
        console.print(Text.assemble(("FAILED: ", "bold red"), "; ".join(problems)))
        console.print(worker.log_tail(), highlight=False, markup=False, soft_wrap=True)
        return 1
    console.print(Text.assemble(("OK: ", "bold green"), "every message moderated, every malformed record "
                                                        "in the dead-letter queue"))
    return 0
