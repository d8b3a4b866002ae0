"""Test harness: a worker's environment on private topics (the worker itself is the dev stack's
``WorkerProcess``), and kafka-python helpers to feed and read topics."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from pipeline.devstack.worker_process import WorkerProcess

__all__ = ["WorkerProcess", "message", "produce", "read_topic", "results_by_id", "worker_env"]

ROOT = Path(__file__).resolve().parents[1]


def worker_env(bootstrap: str, redis_url: str, store: Path, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a worker on private topics and a private consumer group (dev-speed timeouts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMOD_")}
    env.update({
        "CHATMOD_KAFKA_BOOTSTRAP": bootstrap,
        "CHATMOD_REDIS_URL": redis_url,
        "CHATMOD_MODELS_STORE": str(store),
        "CHATMOD_KAFKA_CONSUMER_GROUP": f"{prefix}group",
        "CHATMOD_KAFKA_SESSION_TIMEOUT_S": "6",
        "CHATMOD_KAFKA_HEARTBEAT_INTERVAL_S": "1",
        "CHATMOD_TOPICS_MESSAGES": f"{prefix}chat.messages.v1",
        "CHATMOD_TOPICS_MODERATED": f"{prefix}chat.moderated.v1",
        "CHATMOD_TOPICS_FLAGGED": f"{prefix}chat.flagged.v1",
        "CHATMOD_TOPICS_DLQ": f"{prefix}chat.messages.dlq.v1",
        "CHATMOD_TOPICS_FEEDBACK": f"{prefix}chat.feedback.v1",
        "CHATMOD_TOPICS_ACTIONS": f"{prefix}chat.actions.v1",
        "CHATMOD_FEEDBACK_STORE": str(store.parent / f"{prefix}feedback"),
        "CHATMOD_TOPICS_PARTITIONS": "3",
        "CHATMOD_REDIS_KEY_PREFIX": f"{prefix}chatmod",
        "CHATMOD_WORKER_WEB_ENABLED": "false",
        "CHATMOD_WORKER_DATADIR": str(store.parent / f"{prefix}faust-data"),
        "CHATMOD_MODELS_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def produce(bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    for value, key in zip(values, keys if keys is not None else _nones()):
        producer.send(topic, value=value, key=key)
        n += 1
    producer.flush()
    producer.close()
    return n


def _nones():
    while True:
        yield None


def message(i: int | str, text: str, **extra: Any) -> bytes:
    return json.dumps({"id": str(i), "text": text, "channel": "test", "user": f"u{i}", **extra}).encode()


def read_topic(bootstrap: str, topic: str, done: Callable[[list], bool], timeout_s: float,
               worker: WorkerProcess | None = None) -> list:
    """All records of ``topic`` from the beginning until ``done(records)`` or the timeout."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=300)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        assigned = False
        while time.monotonic() < deadline:
            if not assigned:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    time.sleep(0.3)
                    continue
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                consumer.assign(tps)
                consumer.seek_to_beginning(*tps)
                assigned = True
            records.extend(consumer)
            if done(records):
                return records
            if worker is not None and not worker.alive:
                raise AssertionError(worker.exit_message())
        return records
    finally:
        consumer.close()


def wait_for_records(bootstrap: str, topic: str, n: int, timeout_s: float) -> int:
    """Block until ``topic`` holds at least ``n`` records (polling, so it returns mid-stream); the count."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while not (parts := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker creates its output topics when it starts
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = 0
        while seen < n and time.monotonic() < deadline:
            seen += sum(len(batch) for batch in consumer.poll(timeout_ms=100).values())
        return seen
    finally:
        consumer.close()


def results_by_id(records: list) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        value = json.loads(r.value)
        out.setdefault(value["id"], []).append(value)
    return out


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:  # not listening yet
        return 0, b""


def wait_http_status(url: str, status: int, timeout_s: float, worker: WorkerProcess) -> bytes:
    deadline = time.monotonic() + timeout_s
    last = (0, b"")
    while time.monotonic() < deadline:
        last = http_get(url)
        if last[0] == status:
            return last[1]
        if not worker.alive:
            raise AssertionError(worker.exit_message())
        time.sleep(0.2)
    raise AssertionError(f"{url} answered {last[0]} {last[1][:200]!r}, wanted {status}\n{worker.log_tail()}")


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from a Prometheus exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for_log(worker: WorkerProcess, mark: str, count: int = 1, timeout_s: float = 30) -> None:
    """Block until ``mark`` appears ``count`` times in the worker's log."""
    deadline = time.monotonic() + timeout_s
    while worker.log_path.read_text(errors="replace").count(mark) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {mark!r} in the worker log\n{worker.log_tail()}")
        time.sleep(0.2)
