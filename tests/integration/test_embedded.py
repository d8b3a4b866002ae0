"""The embedded dev stack against real tansu and Redis: topics, records, headers, offsets, restarts."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from pipeline.devstack.embedded import (
    EmbeddedBroker,
    EmbeddedS3,
    ServiceStartError,
    create_topics,
    moto_server_binary,
    wait_for_topics,
)

pytestmark = pytest.mark.integration

# tansu holds a JoinGroup for about session_timeout / 2 before answering, so a short session
# keeps each group join near 3 s instead of kafka-python's default ~22 s.
GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _produce(bootstrap: str, topic: str, count: int) -> None:
    """Send `count` records keyed and headed by their index; fail if any is not acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [
            producer.send(
                topic,
                key=f"k{i}".encode(),
                value=f"message {i}".encode(),
                headers=[("message-id", f"m{i}".encode()), ("schema", b"chat.v1")],
            )
            for i in range(count)
        ]
        producer.flush(timeout=10)
        for future in futures:
            future.get(timeout=10)
    finally:
        producer.close()


def _consume_in_group(bootstrap: str, topic: str, group: str, want: int, timeout_s: float = 12.0) -> list:
    """Read up to `want` records as a member of `group`, commit what was read, and leave."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **GROUP_TIMEOUTS,
    )
    records: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < want and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200, max_records=want - len(records)).values():
                records.extend(batch)
        consumer.commit()
    finally:
        consumer.close()
    return records


def _read_from_start(bootstrap: str, topic: str, partitions: int, want: int, timeout_s: float = 10.0) -> list:
    """Read a topic from offset 0 without a group (no join delay), up to `want` records."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    reader.assign(assigned)
    reader.seek_to_beginning(*assigned)
    records: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < want and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        reader.close()
    return records


def test_topics_are_created_with_requested_partitions_and_idempotently(
    broker: EmbeddedBroker, unique_name: Callable[[str], str]
) -> None:
    wanted = {unique_name("chat.messages.v1"): 4, unique_name("chat.results.v1"): 1}

    assert create_topics(broker.bootstrap, wanted) == wanted
    # A second call (another worker starting) neither fails nor changes existing topics.
    assert create_topics(broker.bootstrap, {name: 2 for name in wanted}) == wanted
    assert wait_for_topics(broker.bootstrap, wanted) == wanted


def test_200_records_round_trip_with_headers_and_group_resumes_after_commit(
    broker: EmbeddedBroker, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("chat.messages.v1"), unique_name("moderators")
    create_topics(broker.bootstrap, {topic: 4})
    _produce(broker.bootstrap, topic, 200)

    first = _consume_in_group(broker.bootstrap, topic, group, want=120)
    # Exactly what is left: a group that restarted from 0 would yield duplicates caught below.
    rest = _consume_in_group(broker.bootstrap, topic, group, want=80)

    assert len(first) == 120
    assert len(rest) == 80, "second member should resume after the committed offsets"
    received = first + rest
    ids = [dict(r.headers)["message-id"].decode() for r in received]
    assert sorted(ids) == sorted(f"m{i}" for i in range(200)), "lost or duplicated records"
    for record in received:
        index = record.key.decode()[1:]
        assert record.headers == [("message-id", f"m{index}".encode()), ("schema", b"chat.v1")]
        assert record.value == f"message {index}".encode()


def test_redis_fixture_gives_an_empty_working_db(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("chatmod:test", "ok", ex=30)
        assert client.get("chatmod:test") == b"ok"
    finally:
        client.close()


def test_broker_that_cannot_start_raises_with_its_log(tansu_binary: str) -> None:
    broker = EmbeddedBroker(binary=tansu_binary, storage="bogus://nowhere/", start_timeout_s=5)
    with pytest.raises(ServiceStartError, match="UnsupportedStorageUrl"):
        broker.start()
    assert not broker.running
    broker.stop()


@pytest.mark.skipif(moto_server_binary() is None, reason="persistent storage needs moto_server (S3)")
def test_restart_on_s3_storage_keeps_records_and_committed_offsets(
    tansu_binary: str, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("chat.messages.v1"), unique_name("moderators")
    with EmbeddedS3() as s3:
        with EmbeddedBroker(binary=tansu_binary, storage=s3.storage, env=s3.broker_env()) as broker:
            create_topics(broker.bootstrap, {topic: 2})
            _produce(broker.bootstrap, topic, 30)
            before = _consume_in_group(broker.bootstrap, topic, group, want=10)
            bootstrap = broker.bootstrap

            broker.restart()

            assert broker.bootstrap == bootstrap, "restart must keep the port"
            assert wait_for_topics(broker.bootstrap, [topic]) == {topic: 2}
            after = _consume_in_group(broker.bootstrap, topic, group, want=20)

            everything = _read_from_start(broker.bootstrap, topic, partitions=2, want=30)

    assert len(before) == 10
    assert len(after) == 20, "the group should resume after its offsets committed before the restart"
    ids = sorted(dict(r.headers)["message-id"] for r in before + after)
    assert ids == sorted(f"m{i}".encode() for i in range(30))
    assert len(everything) == 30, "all records should still be stored after the restart"
