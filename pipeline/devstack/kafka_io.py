"""Kafka clients for the tools: one reader (the bench, the demo and chaos read results through it), the
bench's producer, and ``chatmod tail``.

The tools share the box with the worker they watch, so their own cost per message is part of every figure
they print. librdkafka (``confluent-kafka``, a dev dependency) fetches and produces in C threads; where it is
not installed, kafka-python does the same job at several times the CPU per message.

tansu holds every fetch for the full ``fetch_max_wait_ms``: a latency run wants a short wait (the wait adds
to what is measured), a throughput run a long one (a busy reader takes CPU from the worker).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from importlib.util import find_spec
from typing import Any

from pipeline.kafka_tools import kafka_client_config
from pipeline.settings import KafkaSettings

LINGER_MS = 5  # Kafka's own producer default since 4.0 (KIP-1030): what a chat platform's producer would use

Records = list[tuple[str, bytes]]  # (topic, value) in the order fetched


def librdkafka_available() -> bool:
    return find_spec("confluent_kafka") is not None


class Poller:
    """Fetches ``topics`` (every partition, no consumer group) from their beginning or from their end as it
    is when the poller is made; ``poll()`` returns what arrived within about 50 ms."""

    def __init__(self, bootstrap: str, topics: Sequence[str], from_beginning: bool, fetch_max_wait_ms: int):
        self.kind = "librdkafka" if librdkafka_available() else "kafka-python"
        opened = self._librdkafka if self.kind == "librdkafka" else self._kafka_python
        self.poll, self.close = opened(bootstrap, list(topics), from_beginning, fetch_max_wait_ms)

    @staticmethod
    def _librdkafka(bootstrap: str, topics: list[str], from_beginning: bool,
                    wait_ms: int) -> tuple[Callable[[], Records], Callable[[], None]]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chatmod-tools-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": wait_ms,
                             "fetch.min.bytes": 1, "enable.partition.eof": False})
        metadata = consumer.list_topics(timeout=10).topics
        assigned = []
        for topic in topics:
            for p in sorted(metadata[topic].partitions if topic in metadata else ()):
                tp = TopicPartition(topic, p)  # the end is resolved now, before anything is produced
                offset = OFFSET_BEGINNING if from_beginning else consumer.get_watermark_offsets(tp, timeout=10)[1]
                assigned.append(TopicPartition(topic, p, offset))
        consumer.assign(assigned)

        def poll() -> Records:
            # the first record as soon as it is there, then whatever else is already fetched (consume() alone
            # would wait out its timeout for a full batch, and that wait would count as latency)
            first = consumer.poll(0.05)
            messages = [first, *consumer.consume(num_messages=5000, timeout=0)] if first is not None else []
            out = []
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"reading {message.topic()}: {message.error()}")
                out.append((message.topic(), message.value()))
            return out

        return poll, consumer.close

    @staticmethod
    def _kafka_python(bootstrap: str, topics: list[str], from_beginning: bool,
                      wait_ms: int) -> tuple[Callable[[], Records], Callable[[], None]]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=wait_ms, max_poll_records=5000)
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
        for tp in tps:
            consumer.position(tp)  # resolve the start now, before anything is produced

        def poll() -> Records:
            return [(tp.topic, r.value) for tp, records in consumer.poll(timeout_ms=50).items() for r in records]

        return poll, consumer.close


class TopicReader(threading.Thread):
    """A :class:`Poller` in a thread: each fetched batch goes to ``on_records(arrived_at, records)``, where
    ``arrived_at`` is ``time.monotonic()`` when the batch came. An error stops the thread and waits in
    ``error`` for the main thread, which decides what to do."""

    def __init__(self, bootstrap: str, topics: Sequence[str], on_records: Callable[[float, Records], None], *,
                 from_beginning: bool, fetch_max_wait_ms: int, name: str = "chatmod-reader"):
        super().__init__(name=name, daemon=True)
        self._poller = Poller(bootstrap, topics, from_beginning, fetch_max_wait_ms)
        self.kind = self._poller.kind
        self._on_records = on_records
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                records = self._poller.poll()
                if records:
                    self._on_records(time.monotonic(), records)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self._poller.close()

    def close(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


class Producer:
    """Sends tool messages with ``acks=1`` and a 5 ms linger: librdkafka where installed, else kafka-python."""

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
            raise RuntimeError(f"producer: messages still undelivered after {timeout_s:.0f} s")

    def close(self) -> None:
        if self.kind == "kafka-python":
            self._producer.close(timeout=5)


def record_to_dict(record: Any) -> dict[str, Any]:
    """A consumed record as JSON-friendly data: the value parsed if it is JSON, headers decoded."""
    raw = record.value
    try:
        value: Any = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        value = raw.decode("utf-8", errors="backslashreplace") if raw is not None else None
    out = {"topic": record.topic, "partition": record.partition, "offset": record.offset, "value": value}
    if record.headers:
        out["headers"] = {k: v.decode("utf-8", errors="backslashreplace") for k, v in record.headers}
    return out


def tail_records(kafka: KafkaSettings, topic: str, from_beginning: bool = True, max_messages: int = 0,
                 idle_timeout_s: float = 0.0) -> Iterator[dict[str, Any]]:
    """Yield a topic's records (all partitions, no consumer group) until the limits say stop: ``chatmod tail``,
    with the settings' security (a production cluster), through kafka-python."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_client_config(kafka), enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=200)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise SystemExit(f"topic {topic!r} does not exist on {kafka.bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
        seen, last = 0, time.monotonic()
        while True:
            got = False
            for record in consumer:
                got = True
                seen += 1
                yield record_to_dict(record)
                if max_messages and seen >= max_messages:
                    return
            if got:
                last = time.monotonic()
            elif idle_timeout_s and time.monotonic() - last > idle_timeout_s:
                return
    finally:
        consumer.close()
