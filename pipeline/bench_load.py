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
    """The highest offered load (msgs/s) whose p99 stays within ``bound_ms``: up by ``step`` from ``start``
    until a load fails, then bisection between the last pass and the first failure, ``max_points`` runs
    in all. Returns (capacity, the points measured, by offered load); capacity 0 if ``start`` fails."""
    points: list[LoadPoint] = []
    passed, failed, rate = 0.0, None, start
    while failed is None and len(points) < max_points:
        point = run_at(rate)
        points.append(point)
        say(f"  {rate:,.0f} msgs/s offered: p99 {point.latency_p99_ms:,.0f} ms, "
            f"{'within' if point.within(bound_ms) else 'over'} {bound_ms:.0f} ms")
        if point.within(bound_ms):
            passed, rate = rate, rate * step
        else:
            failed = rate
    while failed is not None and passed and len(points) < max_points and failed - passed > 0.04 * passed:
        rate = (passed + failed) / 2
        point = run_at(rate)
        points.append(point)
        say(f"  {rate:,.0f} msgs/s offered: p99 {point.latency_p99_ms:,.0f} ms, "
            f"{'within' if point.within(bound_ms) else 'over'} {bound_ms:.0f} ms")
        passed, failed = (rate, failed) if point.within(bound_ms) else (passed, rate)
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
    width, height, left, right, top, bottom = 720, 420, 70, 30, 50, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = max([p["offered_msgs_per_s"] for p in points] + [capacity, 1.0]) * 1.08
    y_max = bound_ms * 4

    def x(v: float) -> float:
        return left + plot_w * v / x_max

    def y(v: float) -> float:
        return top + plot_h * (1 - min(v, y_max) / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{_escape(title)}</text>']
    for i in range(5):  # grid and axis labels
        yv = y_max * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(yv):.1f}" y2="{y(yv):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 8}" y="{y(yv) + 4:.1f}" text-anchor="end">{yv:.0f}</text>')
        xv = x_max * i / 4
        out.append(f'<text x="{x(xv):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{xv:,.0f}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 18}" text-anchor="middle">offered load, msgs/s</text>')
    out.append(f'<text x="18" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {top + plot_h / 2})">produce-to-result latency, ms</text>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(bound_ms):.1f}" y2="{y(bound_ms):.1f}" '
               f'stroke="#c0392b" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{left + plot_w - 4}" y="{y(bound_ms) - 6:.1f}" text-anchor="end" fill="#c0392b">'
               f'p99 bound {bound_ms:.0f} ms</text>')
    if capacity:
        out.append(f'<line x1="{x(capacity):.1f}" x2="{x(capacity):.1f}" y1="{top}" y2="{top + plot_h}" '
                   f'stroke="#27ae60" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{x(capacity) - 6:.1f}" y="{top + 14}" text-anchor="end" fill="#27ae60">'
                   f'capacity {capacity:,.0f} msgs/s</text>')
    ordered = sorted(points, key=lambda p: p["offered_msgs_per_s"])
    for key, colour, name in (("latency_p50_ms", "#2c7fb8", "p50"), ("latency_p99_ms", "#e67e22", "p99")):
        path = " ".join(f'{x(p["offered_msgs_per_s"]):.1f},{y(p[key]):.1f}' for p in ordered)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in ordered:
            out.append(f'<circle cx="{x(p["offered_msgs_per_s"]):.1f}" cy="{y(p[key]):.1f}" r="3" fill="{colour}"/>')
            if p[key] > y_max:
                out.append(f'<text x="{x(p["offered_msgs_per_s"]) + 5:.1f}" y="{top + 12}" fill="{colour}">'
                           f'{p[key]:,.0f}</text>')
        legend_y = top + plot_h + 40
        legend_x = left + (0 if name == "p50" else 70)
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 20}" y1="{legend_y}" y2="{legend_y}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{legend_x + 26}" y="{legend_y + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
