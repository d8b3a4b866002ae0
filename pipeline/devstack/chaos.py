"""``chatmod chaos``: the delivery contract under faults, checked the way a consumer would check it.

Two workers in one consumer group on the embedded stack (tansu, and a Redis without persistence), a
steady load of real chat from a producer, one worker SIGKILLed and restarted every ``kill_every_s``
(alternating), and Redis restarted ``redis_restarts`` times, losing every record it held. Afterwards the
moderated topic is read from the beginning: every id must have come out at least once, and the copies of
one id may differ only in the delivery fields (``latency_ms``, ``cached``). A copy re-scored after Redis
lost the first copy's record agrees because scores do not depend on the batch (per-token int8).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.devstack.bench_load import produce
from pipeline.devstack.bench_workload import unique_texts
from pipeline.devstack.embedded import EmbeddedStack, create_topics
from pipeline.devstack.kafka_io import Poller, Producer
from pipeline.devstack.worker_process import WorkerProcess, prepare_store, worker_env
from pipeline.schemas import differing_fields
from pipeline.settings import TopicsSettings

Say = Callable[[str], None]


@dataclass(frozen=True)
class ChaosConfig:
    duration_s: float = 180.0  # how long the load runs; faults happen inside this window
    rate: float = 300.0  # messages per second
    kill_every_s: float = 30.0
    redis_restarts: int = 2
    partitions: int = 6
    threads: int = 1  # model threads per worker (two workers share the machine)
    store: Path | None = None  # None: the bundled default models
    seed: int = 13
    drain_timeout_s: float = 180.0  # after the load: how long to wait for the last results

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.rate <= 0:
            raise ValueError(f"duration_s and rate must be > 0, got {self.duration_s} and {self.rate}")
        if self.kill_every_s <= 0 or self.redis_restarts < 0:
            raise ValueError("kill_every_s must be > 0 and redis_restarts >= 0")


@dataclass
class ChaosReport:
    produced: int = 0
    results: int = 0  # records on the moderated topic, copies included
    unique_ids: int = 0
    lost: int = 0
    duplicates: int = 0  # copies beyond the first
    duplicates_byte_identical: int = 0
    duplicates_differing: int = 0  # differ outside the delivery fields: a broken contract
    decisions_differing: int = 0  # of those, with another decision
    differing_fields: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # a few differing or lost ids, no message text
    kills: int = 0
    redis_restarts: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates_differing == 0 and self.produced > 0

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def compare_copies(copies_by_id: dict[str, list[bytes]], expected_ids: list[str], report: ChaosReport) -> None:
    """Fill ``report`` from every published copy of every result."""
    report.unique_ids = len(copies_by_id)
    report.results = sum(len(c) for c in copies_by_id.values())
    lost = [i for i in expected_ids if i not in copies_by_id]
    report.lost = len(lost)
    report.examples += [{"id": i, "lost": True} for i in lost[:5]]
    for msg_id, copies in copies_by_id.items():
        first = json.loads(copies[0])
        for raw in copies[1:]:
            report.duplicates += 1
            if raw == copies[0]:
                report.duplicates_byte_identical += 1
                continue
            fields = differing_fields(first, json.loads(raw))
            if fields:
                report.duplicates_differing += 1
                report.decisions_differing += "decision" in fields
                for name in fields:
                    report.differing_fields[name] = report.differing_fields.get(name, 0) + 1
                if len(report.examples) < 10:
                    report.examples.append({"id": msg_id, "fields": fields})


class _Load(threading.Thread):
    """The benchmark's load generator (``pipeline.devstack.bench_load``: a steady rate, keyed by message id) in a
    thread, so faults can be injected while it sends; its error, if any, is kept for the main thread."""

    def __init__(self, bootstrap: str, topic: str, payloads: list[tuple[str, bytes]], rate: float,
                 progress: Callable[[str, int, int], None] | None):
        super().__init__(name="chatmod-chaos-load", daemon=True)
        self.bootstrap, self.topic, self.payloads, self.rate, self.progress = bootstrap, topic, payloads, rate, progress
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer(self.bootstrap)
            try:
                produce(producer, self.topic, self.payloads, self.rate, {},
                        (lambda i: self.progress("load", i, len(self.payloads))) if self.progress else None)
            finally:
                producer.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def read_copies(bootstrap: str, topic: str, expected: set[str], timeout_s: float,
                on_progress: Callable[[int], None] | None = None) -> dict[str, list[bytes]]:
    """Every record of ``topic`` from the beginning, grouped by result id, until all ``expected`` ids
    are there and the topic is drained, or ``timeout_s`` passes."""
    poller = Poller(bootstrap, [topic], from_beginning=True, fetch_max_wait_ms=100)
    copies: dict[str, list[bytes]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        quiet_since = None
        while time.monotonic() < deadline:
            polled = poller.poll()
            for _, value in polled:
                copies.setdefault(json.loads(value)["id"], []).append(value)
            if on_progress:
                on_progress(len(copies))
            if expected <= copies.keys():
                # all there: keep reading until a quiet second, so late duplicates are compared too
                quiet_since = quiet_since or time.monotonic()
                if polled:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 1.0:
                    break
        return copies
    finally:
        poller.close()


def run_chaos(cfg: ChaosConfig, say: Say = print, progress: Callable[[str, int, int], None] | None = None,
              workdir: Path | None = None) -> ChaosReport:
    """Run the load with faults; the report says what came out and whether the contract held."""
    report = ChaosReport(config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()})
    total = int(cfg.duration_s * cfg.rate)
    texts = unique_texts(min(total, 20_000), cfg.seed)
    ids = [f"chaos-{i}" for i in range(total)]
    payloads = [(ids[i], json.dumps({"id": ids[i], "text": texts[i % len(texts)], "channel": f"channel-{i % 50}",
                                     "user": f"user-{i % 997}"}).encode()) for i in range(total)]
    topics = TopicsSettings()
    started = time.monotonic()
    with contextlib.ExitStack() as stack_guard:
        tmp = Path(workdir) if workdir else Path(stack_guard.enter_context(
            tempfile.TemporaryDirectory(prefix="chatmod-chaos-")))
        stack = stack_guard.enter_context(EmbeddedStack())
        store, tasks = prepare_store(cfg.store, tmp / "store")
        create_topics(stack.bootstrap, dict.fromkeys((topics.messages, topics.moderated, topics.flagged,
                                                      topics.dlq), cfg.partitions))
        workers = _start_workers(cfg, worker_env(stack, store, tasks, tmp), tmp, stack_guard)
        say(f"2 workers ready ({', '.join(f'{t}={r}' for t, r in tasks.items())}); "
            f"{total:,} messages at {cfg.rate:g}/s, a SIGKILL every {cfg.kill_every_s:g} s, "
            f"{cfg.redis_restarts} Redis restart(s)")
        load = _Load(stack.bootstrap, topics.messages, payloads, cfg.rate, progress)
        load.start()
        _inject_faults(cfg, workers, stack, report, say)
        load.join()
        if load.error is not None:
            raise RuntimeError(f"the load generator failed: {load.error!r}")
        report.produced = total
        say(f"load done: {total:,} sent; reading every result back")
        copies = read_copies(stack.bootstrap, topics.moderated, set(ids), cfg.drain_timeout_s,
                             on_progress=(lambda n: progress("results", n, total)) if progress else None)
        for w in workers:
            if not w.alive:
                say(f"a worker is not running at the end: {w.exit_message()}")
    compare_copies(copies, ids, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _start_workers(cfg: ChaosConfig, env: dict[str, str], tmp: Path,
                   stack_guard: contextlib.ExitStack) -> list[WorkerProcess]:
    """Two ready workers in one consumer group, each with its own Faust data folder."""
    workers = []
    for k in range(2):
        workers.append(WorkerProcess({**env, "CHATMOD_MODELS_THREADS": str(cfg.threads),
                                      "CHATMOD_TOPICS_PARTITIONS": str(cfg.partitions),
                                      "CHATMOD_WORKER_DATADIR": str(tmp / f"faust-{k}")}, tmp / f"worker{k}.log"))
    stack_guard.callback(lambda: [w.stop() for w in workers])
    deadline = time.monotonic() + 120
    for w in workers:
        w.start()
    for w in workers:
        w.wait_ready(deadline)
    return workers


def _inject_faults(cfg: ChaosConfig, workers: list[WorkerProcess], stack: EmbeddedStack, report: ChaosReport,
                   say: Say) -> None:
    """The schedule's kills and Redis restarts, each at its time from now (the load has just started)."""
    events = _schedule(cfg)
    load_started = time.monotonic()
    while events:
        at, kind = events[0]
        now = time.monotonic() - load_started
        if now < at:
            time.sleep(min(0.2, at - now))
            continue
        events.pop(0)
        if kind == "kill":
            victim = workers[report.kills % 2]
            victim.kill()
            victim.start()  # straight back: it rejoins the group and resumes from the committed offsets
            report.kills += 1
            say(f"t={now:5.1f}s SIGKILL worker {report.kills % 2 or 2} and restart it")
        else:
            stack.redis.restart()  # no persistence: every cached result and per-message record is gone
            report.redis_restarts += 1
            say(f"t={now:5.1f}s Redis restarted (empty)")


def _schedule(cfg: ChaosConfig) -> list[tuple[float, str]]:
    """(seconds into the load, "kill" | "redis"): kills every ``kill_every_s``; Redis restarts spread
    evenly, halfway between kills where they can be, so the two faults' effects are both seen."""
    events = []
    t = cfg.kill_every_s
    while t < cfg.duration_s:
        events.append((t, "kill"))
        t += cfg.kill_every_s
    for j in range(cfg.redis_restarts):
        at = cfg.duration_s * (j + 1) / (cfg.redis_restarts + 1)
        if any(abs(at - k) < 1.0 for k, _ in events):
            at += cfg.kill_every_s / 2
        events.append((min(at, cfg.duration_s - 0.5), "redis"))
    return sorted(events)

