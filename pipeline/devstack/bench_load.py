"""The load side of ``chatmod bench``: paced produce, when each result came back, the capacity search at a
latency bound, the raid workload, and the latency-by-load plot.

The load generator shares the machine with the worker it measures, so its own cost per message is part of
every figure: it produces and reads through :mod:`pipeline.devstack.kafka_io` (librdkafka where installed;
the bench reports which one ran, and the CPU of every process per message).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models.bench import percentile
from pipeline.devstack.kafka_io import Producer, Records
from pipeline.svgchart import Chart, Line, Marker, render


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


class Arrivals:
    """When each result came back, fed by a :class:`~pipeline.devstack.kafka_io.TopicReader` on the moderated
    topic: ``by_id[id] = (monotonic arrival, served from cache, the worker's own latency in ms)``."""

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[float, bool, float]] = {}
        self.lock = threading.Lock()

    def on_records(self, now: float, records: Records) -> None:
        with self.lock:
            for _, value in records:
                result = json.loads(value)
                self.by_id.setdefault(result["id"], (now, bool(result.get("cached")),
                                                     float(result.get("latency_ms", "nan"))))

    def count(self, ids: set[str]) -> int:
        with self.lock:
            return sum(1 for i in ids if i in self.by_id)


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
    lines = [Line(name, [(p["offered_msgs_per_s"], p[key]) for p in points], colour)
             for name, key, colour in (("p50", "latency_p50_ms", "#2c7fb8"), ("p99", "latency_p99_ms", "#e67e22"))]
    markers = [Marker(f"p99 bound {bound_ms:.0f} ms", "#c0392b", y=bound_ms)]
    if capacity:
        markers.append(Marker(f"capacity {capacity:,.0f} msgs/s", "#27ae60", x=capacity))
    return render(Chart(title, "offered load, msgs/s", "produce-to-result latency, ms", lines, markers,
                        y_max=bound_ms * 4))
