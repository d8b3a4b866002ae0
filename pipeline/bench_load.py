"""The load side of ``chatmod bench``: a producer and a result reader that cost the box little, the capacity
search at a latency bound, the raid workload, and the latency-by-load plot.

The load generator shares the machine with the worker it measures, so its own cost per message is part of
every figure. librdkafka (``confluent-kafka``, a dev dependency) produces and fetches in C threads; where it
is not installed, kafka-python does the same job at several times the CPU per message (the bench reports
which one ran, and the CPU of every process per message).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models.bench import percentile

LINGER_MS = 5  # Kafka's own producer default since 4.0 (KIP-1030): what a chat platform's producer would use


def librdkafka_available() -> bool:
    from importlib.util import find_spec

    return find_spec("confluent_kafka") is not None


class Producer:
    """Sends bench messages with ``acks=1`` and a 5 ms linger: librdkafka where installed, else kafka-python."""

    def __init__(self, bootstrap: str):
        if librdkafka_available():
            from confluent_kafka import Producer as Librdkafka

            self.kind = "librdkafka"
            self._producer = Librdkafka({"bootstrap.servers": bootstrap, "linger.ms": LINGER_MS, "acks": 1,
                                         "batch.size": 256 * 1024, "queue.buffering.max.messages": 500_000,
                                         "enable.idempotence": False})
        else:
            from kafka import KafkaProducer

            self.kind = "kafka-python"
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=LINGER_MS,
                                           batch_size=256 * 1024, max_in_flight_requests_per_connection=5)

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.kind == "kafka-python":
            self._producer.send(topic, key=key, value=value)
            return
        while True:
            try:
                self._producer.produce(topic, value, key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.01)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        if self.kind == "kafka-python":
            self._producer.flush(timeout=timeout_s)
        elif self._producer.flush(timeout_s) > 0:
            raise RuntimeError(f"bench producer: messages still undelivered after {timeout_s:.0f} s")

    def close(self) -> None:
        if self.kind == "kafka-python":
            self._producer.close(timeout=5)


def produce(producer: Producer, topic: str, payloads: Sequence[tuple[str, bytes]], rate: float | None,
            sent_at: dict[str, float], on_progress: Callable[[int], None] | None = None) -> float:
    """Send ``payloads`` (id, value), keyed by id, at ``rate`` per second or flat out; records each send time
    in ``sent_at`` (taken before the send, so the linger is inside the latency). Returns the rate reached."""
    started = time.monotonic()
    for i, (msg_id, value) in enumerate(payloads):
        if rate:
            pause = started + i / rate - time.monotonic()
            if pause > 0.001:  # sleeping less than a millisecond costs more than it paces
                time.sleep(pause)
        sent_at[msg_id] = time.monotonic()
        producer.send(topic, msg_id.encode(), value)
        if on_progress and i % 500 == 0:
            on_progress(i)
    producer.flush()
    return len(payloads) / max(1e-9, time.monotonic() - started)


class ResultReader(threading.Thread):
    """Reads the moderated topic from the end it was at when started, and records when each id came back:
    ``arrivals[id] = (monotonic arrival, served from cache, the worker's own latency in ms)``."""

    def __init__(self, bootstrap: str, topic: str, fetch_max_wait_ms: int):
        super().__init__(name="chatmod-bench-reader", daemon=True)
        # tansu holds every fetch for the full wait: short for latency runs (the wait adds to what is
        # measured), long for throughput runs, where a busy reader would take CPU from the worker.
        self.arrivals: dict[str, tuple[float, bool, float]] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self.kind = "librdkafka" if librdkafka_available() else "kafka-python"
        self._poll = self._librdkafka(bootstrap, topic, fetch_max_wait_ms) if self.kind == "librdkafka" \
            else self._kafka_python(bootstrap, topic, fetch_max_wait_ms)

    def _librdkafka(self, bootstrap: str, topic: str, wait_ms: int) -> Callable[[], list[bytes]]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chatmod-bench-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": wait_ms,
                             "fetch.min.bytes": 1, "enable.partition.eof": False})
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p in sorted(partitions)]  # the end now, resolved before anything is produced
        consumer.assign(ends)
        self._close = consumer.close

        def poll() -> list[bytes]:
            out = []
            for message in consumer.consume(num_messages=5000, timeout=0.05):
                if message.error() is not None:
                    raise RuntimeError(f"reading results: {message.error()}")
                out.append(message.value())
            return out

        return poll

    def _kafka_python(self, bootstrap: str, topic: str, wait_ms: int) -> Callable[[], list[bytes]]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=wait_ms, max_poll_records=5000)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)  # resolve "end" now, before anything is produced
        self._close = consumer.close
        return lambda: [r.value for records in consumer.poll(timeout_ms=50).values() for r in records]

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                values = self._poll()
                if not values:
                    continue
                now = time.monotonic()
                with self.lock:
                    for value in values:
                        result = json.loads(value)
                        self.arrivals.setdefault(result["id"], (now, bool(result.get("cached")),
                                                                float(result.get("latency_ms", "nan"))))
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self._close()

    def count(self, ids: set[str]) -> int:
        with self.lock:
            return sum(1 for i in ids if i in self.arrivals)

    def close(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# the raid ------------------------------------------------------------------------------------------------


def raid_texts(n: int, distinct: Sequence[str], seed: int) -> list[str]:
    """``n`` messages that each repeat one of ``distinct``: as sent, shouted, or with stray spaces, the
    variants a raid's copy-paste produces and normalisation folds into one cache key."""
    rng = random.Random(seed)
    variants = (lambda t: t, str.upper, lambda t: "  " + t.replace(" ", "   ") + " ")
    return [rng.choice(variants)(rng.choice(distinct)) for _ in range(n)]


# capacity at a latency bound -------------------------------------------------------------------------------


@dataclass
class LoadPoint:
    offered_msgs_per_s: float
    sustained_msgs_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    lost: int

    def within(self, bound_ms: float) -> bool:
        """p99 inside the bound, nothing lost, and the stack kept up with what was offered."""
        return (self.lost == 0 and self.latency_p99_ms <= bound_ms
                and self.sustained_msgs_per_s >= 0.95 * self.offered_msgs_per_s)


def capacity_search(run_at: Callable[[float], LoadPoint], start: float, bound_ms: float, max_points: int = 10,
                    step: float = 1.5, say: Callable[[str], None] = lambda _: None) -> tuple[float, list[LoadPoint]]:
    """The highest offered load (msgs/s) whose p99 stays within ``bound_ms``: from ``start``, up by ``step``
    until a load fails (or down until one passes), then bisection between the last pass and the first
    failure, ``max_points`` runs in all. Returns (capacity, the points measured, by offered load);
    capacity 0 if none passed."""
    points: list[LoadPoint] = []

    def within(rate: float) -> bool:
        point = run_at(rate)
        points.append(point)
        ok = point.within(bound_ms)
        say(f"  {rate:,.0f} msgs/s offered: p99 {point.latency_p99_ms:,.0f} ms, {'within' if ok else 'over'} "
            f"{bound_ms:.0f} ms")
        return ok

    passed, failed = 0.0, None
    if within(start):  # up until a load fails
        passed, rate = start, start * step
        while len(points) < max_points:
            if not within(rate):
                failed = rate
                break
            passed, rate = rate, rate * step
    else:  # down until one passes
        failed, rate = start, start / step
        while len(points) < max_points and rate >= 1.0:
            if within(rate):
                passed = rate
                break
            failed, rate = rate, rate / step
    while failed is not None and passed and len(points) < max_points and failed - passed > 0.04 * passed:
        rate = (passed + failed) / 2
        passed, failed = (rate, failed) if within(rate) else (passed, rate)
    return passed, sorted(points, key=lambda p: p.offered_msgs_per_s)


def latencies_ms(arrivals: dict[str, tuple[float, bool, float]], sent_at: dict[str, float]) -> tuple[float, float]:
    """p50 and p99 produce-to-result latency of the ids that came back."""
    values = [(arrivals[i][0] - sent_at[i]) * 1000.0 for i in arrivals if i in sent_at]
    return percentile(values, 50), percentile(values, 99)


# the plot ---------------------------------------------------------------------------------------------------


def latency_plot_svg(points: Sequence[dict], capacity: float, bound_ms: float, title: str) -> str:
    """p50 and p99 against offered load, the latency bound and the capacity, as a standalone SVG.

    ``points``: dicts with ``offered_msgs_per_s``, ``latency_p50_ms`` and ``latency_p99_ms``. The latency
    axis stops at four times the bound; a point above it is drawn on the edge, its value written beside.
    """
    from pipeline.svgchart import Chart, Line, Marker, render

    lines = [Line(name, [(p["offered_msgs_per_s"], p[key]) for p in points], colour)
             for name, key, colour in (("p50", "latency_p50_ms", "#2c7fb8"), ("p99", "latency_p99_ms", "#e67e22"))]
    markers = [Marker(f"p99 bound {bound_ms:.0f} ms", "#c0392b", y=bound_ms)]
    if capacity:
        markers.append(Marker(f"capacity {capacity:,.0f} msgs/s", "#27ae60", x=capacity))
    return render(Chart(title, "offered load, msgs/s", "produce-to-result latency, ms", lines, markers,
                        y_max=bound_ms * 4))
