"""The end-to-end bench's workloads and its worker: chat-like texts (unique, repeated), one workload produced
and read back with its latencies and CPU per message by process, and a ready worker on the embedded stack.

Produce-to-result latency is measured by the benchmark process itself: the wall-clock time a message was
handed to the producer to the time its result was read back (both on this machine's clock).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from models.bench import percentile
from models.normalise import normalise_text
from pipeline.devstack.bench_load import Arrivals, latencies_ms, produce
from pipeline.devstack.embedded import EmbeddedStack, create_topics
from pipeline.devstack.kafka_io import Producer, TopicReader
from pipeline.devstack.worker_process import WorkerProcess, prepare_store, worker_env
from pipeline.settings import TopicsSettings

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]
E2E_PARTITIONS = 3
STALL_TIMEOUT_S = 60.0
MAX_TEXTS = 100_000  # distinct texts unique_texts can make with room to spare (348 lines, spliced)


def chat_lines() -> list[str]:
    raw = resources.files("pipeline").joinpath("data/sample_chat.txt").read_text(encoding="utf-8")
    return [line.split("\t", 2)[2] for line in raw.splitlines() if line.count("\t") >= 2]


def unique_texts(n: int, seed: int) -> list[str]:
    """``n`` distinct chat-like texts in a seeded order, as long as the sample chat's lines on average.

    The sample lines first, then splices: the first part of one line (cut at a word) joined to the last
    part of another. Splicing keeps chat's length distribution (a transformer's cost grows with tokens;
    joining whole lines would double it) while giving every message its own cache key.
    """
    def cache_identity(text: str) -> str:  # what the worker's content cache key sees (uncased models)
        return normalise_text(text, 10_000).lower()

    lines = chat_lines()
    rng = random.Random(seed)
    out = list({cache_identity(line): line for line in lines}.values())
    rng.shuffle(out)
    del out[n:]
    seen = {cache_identity(t) for t in out}
    words = [line.split() for line in lines]
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"cannot make {n} distinct texts from the sample chat")
        a, b = rng.choice(words), rng.choice(words)
        head = a[: rng.randint(1, len(a))]  # both parts uniform in length: a line's length on average
        tail = b[rng.randint(1, len(b)) - 1 :]
        text = " ".join(head + tail)
        if cache_identity(text) not in seen:
            seen.add(cache_identity(text))
            out.append(text)
    return out


def fresh_texts(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct texts, none of them in ``exclude`` (a worker remembers the scores it computed last,
    so a workload that is to be new must not reuse an earlier workload's texts)."""
    texts = [t for t in unique_texts(min(n + len(exclude) + 1000, MAX_TEXTS), seed) if t not in exclude]
    if len(texts) < n:
        raise ValueError(f"cannot make {n} texts that avoid the {len(exclude)} given")
    return texts[:n]


def workload(n: int, repeat_fraction: float, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` texts in which ``repeat_fraction`` of them repeat a text sent earlier in the same list
    (chat is repetitive: copypasta, emotes, bots); the rest are distinct and not in ``exclude``."""
    if not 0.0 <= repeat_fraction < 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1), got {repeat_fraction}")
    rng = random.Random(seed + 1)
    fresh = iter(fresh_texts(n, seed, exclude))
    out: list[str] = []
    for i in range(n):
        if i >= 100 and rng.random() < repeat_fraction:
            out.append(out[rng.randrange(0, i - 50)])  # an earlier text, not one still in the same batch
        else:
            out.append(next(fresh))
    return out


# one workload, end to end ------------------------------------------------------------------------------


@dataclass
class E2EResult:
    workload: str
    messages: int
    offered_msgs_per_s: float | None  # None: as fast as the producer goes
    produced_msgs_per_s: float
    sustained_msgs_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    cache_hit_rate: float
    results: int
    lost: int
    extra: dict = field(default_factory=dict)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far, all its threads (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 0, utime 11, stime 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_workload(bootstrap: str, topics, texts: list[str], name: str, rate: float | None,
                 progress: Progress | None = None, processes: dict[str, int] | None = None) -> E2EResult:
    """Produce ``texts`` as chat messages (16 channels, 500 users, keyed by id), wait for every result, and
    measure. ``processes`` (name -> pid): their CPU time over the run is reported per message, which says
    where the machine's time went (the worker, the broker, Redis, this load generator)."""
    run_id = uuid.uuid4().hex[:8]
    payloads = [(f"bench-{run_id}-{i:06d}",
                 json.dumps({"id": f"bench-{run_id}-{i:06d}", "text": t, "channel": f"ch{i % 16}",
                            "user": f"user{i % 500}"}).encode())
                for i, t in enumerate(texts)]
    ids = {msg_id for msg_id, _ in payloads}
    arrived = Arrivals()
    reader = TopicReader(bootstrap, [topics.moderated], arrived.on_records, from_beginning=False,
                         fetch_max_wait_ms=10 if rate else 250, name="chatmod-bench-reader")
    reader.start()
    producer = Producer(bootstrap)
    sent_at: dict[str, float] = {}
    cpu_before = {label: cpu_seconds(pid) for label, pid in (processes or {}).items()}
    try:
        label = f"{name}: produce"
        produced_rate = produce(producer, topics.messages, payloads, rate, sent_at,
                                (lambda i: progress(label, i, len(payloads))) if progress else None)
        last_count, last_change = -1, time.monotonic()
        while (count := arrived.count(ids)) < len(ids):
            if reader.error is not None:
                raise RuntimeError(f"reading results failed: {reader.error!r}")
            if count != last_count:
                last_count, last_change = count, time.monotonic()
                if progress:
                    progress(f"{name}: results", count, len(ids))
            elif time.monotonic() - last_change > STALL_TIMEOUT_S:
                break  # reported as lost
            time.sleep(0.05)
        if progress:
            progress(f"{name}: results", arrived.count(ids), len(ids))
    finally:
        reader.close()
        producer.close()
    cpu_ms_per_msg = {}
    for label, pid in (processes or {}).items():
        after, before = cpu_seconds(pid), cpu_before[label]
        if after is not None and before is not None:
            cpu_ms_per_msg[label] = round((after - before) * 1000.0 / len(texts), 3)
    arrivals = {i: arrived.by_id[i] for i in ids if i in arrived.by_id}
    p50, p99 = latencies_ms(arrivals, sent_at)
    in_worker = [w for _, _, w in arrivals.values()]
    times = sorted(a for a, _, _ in arrivals.values())
    # Sustained: results per second between the first message sent and the last result read.
    span = (times[-1] - min(sent_at.values())) if times else float("nan")
    return E2EResult(
        workload=name, messages=len(texts), offered_msgs_per_s=rate, produced_msgs_per_s=produced_rate,
        sustained_msgs_per_s=len(times) / span if times else 0.0, latency_p50_ms=p50, latency_p99_ms=p99,
        latency_max_ms=max((a - sent_at[i]) * 1000.0 for i, (a, _, _) in arrivals.items()) if arrivals else float("nan"),
        cache_hit_rate=sum(1 for _, cached, _ in arrivals.values() if cached) / len(arrivals) if arrivals else 0.0,
        results=len(arrivals), lost=len(ids) - len(arrivals),
        # where the time goes: produced -> result built in the worker, the rest is transport both ways
        extra={"worker_latency_p50_ms": percentile(in_worker, 50), "worker_latency_p99_ms": percentile(in_worker, 99),
               "cpu_ms_per_msg": cpu_ms_per_msg, "load_generator": producer.kind},
    )


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process now and at its peak (Linux /proc), in MB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024.0
    return out


@contextlib.contextmanager
def bench_worker(store: Path | None, threads: int, max_batch: int, say: Say,
                 extra_env: dict[str, str] | None = None) -> Iterator[tuple[object, object, object]]:
    """The embedded stack with topics and one ready worker; yields (stack, topics, worker), where
    ``worker.restart_with(env)`` replaces the worker by one with more settings, on the same stack."""
    topics = TopicsSettings()
    with tempfile.TemporaryDirectory(prefix="chatmod-bench-") as tmp, EmbeddedStack() as stack:
        tmp = Path(tmp)
        store, tasks = prepare_store(store, tmp / "store")
        create_topics(stack.bootstrap, dict.fromkeys((topics.messages, topics.moderated, topics.flagged,
                                                      topics.dlq), E2E_PARTITIONS))
        env = worker_env(stack, store, tasks, tmp)
        env.update({"CHATMOD_MODELS_THREADS": str(threads), "CHATMOD_BATCHING_MAX_BATCH": str(max_batch)})
        env.update(extra_env or {})
        say(f"starting a worker ({', '.join(f'{t}={r}' for t, r in tasks.items())}, {threads} threads)")
        worker = BenchWorker(env, tmp)
        try:
            yield stack, topics, worker
        finally:
            worker.stop()


class BenchWorker:
    """One worker process at a time, started ready (models loaded, partitions assigned)."""

    def __init__(self, env: dict[str, str], tmp: Path):
        self.env, self.tmp, self.runs = env, tmp, 0
        self.process = self._start(env)

    def _start(self, env: dict[str, str], argv: tuple[str, ...] | None = None, faust: bool = True):
        self.runs += 1
        log = self.tmp / f"worker-{self.runs}.log"
        worker = WorkerProcess(env, log, argv) if argv else WorkerProcess(env, log)
        deadline = time.monotonic() + 120
        worker.start()
        worker.wait_ready(deadline, partitions=faust)
        return worker

    def restart_with(self, settings: dict[str, str], argv: tuple[str, ...] | None = None, faust: bool = True) -> None:
        """Replace the worker by one with more settings, or by another program (``argv``) on the same stack."""
        self.process.stop()
        self.process = self._start({**self.env, **settings}, argv, faust)

    def __getattr__(self, name: str):  # pid, alive, exit_message, stop: the current process's
        return getattr(self.process, name)

    def stop(self) -> None:
        self.process.stop()


def policy_profile_file(folder: Path, n_terms: int, state: bool = True) -> Path:
    """A default profile with ``n_terms`` block terms (a tenth of them wildcards) and an allow list; with
    ``state``, also a strike ladder and flood limits: the policy work a busy community asks of every message,
    for ``--profile-terms``."""
    import random

    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(5, 10))) for _ in range(n_terms * 2)})
    rng.shuffle(words)
    terms = [w + "*" if i % 10 == 0 else w for i, w in enumerate(words[:n_terms])]
    profile: dict = {"name": "default", "block_terms": terms, "allow_terms": ["hell", "damn"]}
    if state:
        profile["strikes"] = {"half_life_s": 600, "ladder": [{"strikes": 3, "action": "warn"},
                                                             {"strikes": 6, "action": "timeout", "minutes": 10}]}
        profile["flood"] = {"window_s": 10, "max_messages": 20, "max_repeats": 5, "max_mentions": 5}
    path = folder / f"bench-profile-{n_terms}{'-state' if state else ''}.json"
    path.write_text(json.dumps(profile))
    return path
