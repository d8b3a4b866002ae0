"""kafka-python helpers for the CLI tools (produce, tail, demo, benchmarks): plain clients, no Faust."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from pipeline.settings import KafkaSettings


def kafka_client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments (bootstrap, security) from settings."""
    config: dict[str, Any] = {
        "bootstrap_servers": [h.strip() for h in kafka.bootstrap.split(",")],
        "client_id": f"{kafka.client_id}-tools",
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol.startswith("SASL"):
        config.update(sasl_mechanism=kafka.sasl_mechanism or "PLAIN", sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    if kafka.security_protocol.endswith("SSL"):
        config.update(ssl_cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
                      ssl_certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
                      ssl_keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return config


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
    """Yield a topic's records (all partitions, no consumer group) until the limits say stop."""
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
