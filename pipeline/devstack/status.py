"""``chatmod status``: topics, the consumer group's offsets and lag, current models, cache size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.registry import open_store
from pipeline.kafka_tools import kafka_client_config
from pipeline.settings import Settings

# tansu answers "latest offset" with the first offset of the last batch + 1, so lag computed from it is
# wrong; we say so instead of printing a number that looks right.
TANSU_NOTE = ("this broker reports end offsets that may be wrong (tansu does); lag is shown as unknown. "
              "On Apache Kafka the lag is exact.")


@dataclass
class PartitionStatus:
    partition: int
    committed: int | None
    end: int | None
    lag: int | None


@dataclass
class Status:
    bootstrap: str
    broker: str
    topics: dict[str, int] = field(default_factory=dict)  # name -> partitions (missing: 0)
    group: str = ""
    partitions: list[PartitionStatus] = field(default_factory=list)
    lag_reliable: bool = True
    models: dict[str, str | None] = field(default_factory=dict)
    cache_keys: int | None = None
    cache_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_lag(self) -> int | None:
        if not self.lag_reliable or any(p.lag is None for p in self.partitions):
            return None
        return sum(p.lag for p in self.partitions if p.lag is not None)


def _broker_software(consumer: Any) -> str:
    """Best effort: tansu advertises itself in its cluster id by default."""
    try:
        cluster = consumer._client.cluster  # noqa: SLF001 - kafka-python exposes no public accessor
        return "tansu" if "tansu" in str(getattr(cluster, "cluster_id", "") or "").lower() else "kafka"
    except AttributeError:
        return "kafka"


def collect_status(settings: Settings, assume_tansu: bool | None = None) -> Status:
    from kafka import KafkaConsumer, TopicPartition

    topics = settings.topics
    status = Status(bootstrap=settings.kafka.bootstrap, broker="kafka", group=settings.kafka.consumer_group)
    consumer = KafkaConsumer(**kafka_client_config(settings.kafka), group_id=settings.kafka.consumer_group,
                             enable_auto_commit=False)
    try:
        existing = consumer.topics()
        for name in (topics.messages, topics.moderated, topics.flagged, topics.dlq, topics.feedback):
            status.topics[name] = len(consumer.partitions_for_topic(name) or ()) if name in existing else 0
        status.broker = "tansu" if assume_tansu else _broker_software(consumer)
        status.lag_reliable = status.broker != "tansu"
        if not status.lag_reliable:
            status.notes.append(TANSU_NOTE)
        tps = [TopicPartition(topics.messages, p) for p in sorted(consumer.partitions_for_topic(topics.messages) or ())]
        ends = consumer.end_offsets(tps) if tps else {}
        for tp in tps:
            committed = consumer.committed(tp)
            end = ends.get(tp)
            lag = end - committed if status.lag_reliable and end is not None and committed is not None else None
            status.partitions.append(PartitionStatus(tp.partition, committed, end, lag))
    finally:
        consumer.close()
    status.models = _models(settings)
    status.cache_keys, status.cache_error = _cache_size(settings)
    return status


def _models(settings: Settings) -> dict[str, str | None]:

    try:
        registry = open_store(settings.models.store)
        return {str(t): registry.current(t) for t in settings.models.tasks}
    except Exception as exc:  # status reports problems, it does not crash on them
        return {"error": str(exc)}


def _cache_size(settings: Settings) -> tuple[int | None, str | None]:
    """Keys under the chatmod prefix, counted with SCAN (bounded work per call, safe on a busy Redis)."""
    import redis

    client = redis.Redis.from_url(settings.redis.url, socket_timeout=2, socket_connect_timeout=2,
                                  password=settings.redis.password.get_secret_value() if settings.redis.password else None)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)), None
    except redis.RedisError as exc:
        return None, f"Redis unavailable: {exc.__class__.__name__}"
    finally:
        client.close()
