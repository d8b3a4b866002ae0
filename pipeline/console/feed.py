"""The console's Kafka side: flagged records into the queue, and verdicts out to the feedback topic.

Offsets are committed only after a batch is in Redis: a console that dies mid-batch reads it again, and the
queue's ``SET NX`` per message id keeps it from being queued twice. The flagged topic is read from the
earliest offset the first time: nothing flagged before the console started is lost. Channel health comes
from the workers' per-minute buckets in Redis, so the console never reads the whole moderated stream
(measured: doing so cost the worker beside it 19% of its throughput on a 2-core box).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from datetime import UTC, datetime

from pipeline.console.queue import Queue
from pipeline.kafka_tools import kafka_client_config
from pipeline.settings import KafkaSettings, Settings

log = logging.getLogger("chatmod.console.feed")
RETRY_S = 2.0


def aiokafka_config(kafka: KafkaSettings) -> dict:
    """aiokafka keyword arguments (bootstrap, security) from settings."""
    config = kafka_client_config(kafka)
    out = {"bootstrap_servers": config["bootstrap_servers"], "client_id": f"{kafka.client_id}-console",
           "security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL"):
        out.update(sasl_mechanism=config["sasl_mechanism"], sasl_plain_username=config["sasl_plain_username"],
                   sasl_plain_password=config["sasl_plain_password"])
    if kafka.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        out["ssl_context"] = context
    return out


class Feed:
    """Background tasks of the console process: ``start()`` in the app's lifespan, ``stop()`` at its end."""

    def __init__(self, settings: Settings, queue: Queue, redis_client):
        self.settings, self.queue, self.redis = settings, queue, redis_client
        self.tasks: list[asyncio.Task] = []
        self.producer = None
        self.flagged_read = 0
        self.malformed = 0
        self.reading: dict[str, bool] = {}  # topic -> partitions assigned and positions resolved

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(acks="all", **aiokafka_config(self.settings.kafka))
        await self.producer.start()
        console, topics = self.settings.console, self.settings.topics
        self.tasks = [asyncio.create_task(self._consume(topics.flagged, console.consumer_group, "earliest", 100,
                                                        self._queue))]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()

    async def publish_verdict(self, item_id: str, text: str, labels: dict, moderator: str) -> None:
        """One verdict on ``chat.feedback.v1``, keyed by message id; returns once the broker has it."""
        record = {"id": item_id, "text": text, "labels": labels, "moderator": moderator,
                  "ts": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
        await self.producer.send_and_wait(self.settings.topics.feedback, json.dumps(record).encode(),
                                          key=item_id.encode())

    async def _consume(self, topic: str, group: str, reset: str, wait_ms: int, store) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(topic, group_id=group, enable_auto_commit=False, auto_offset_reset=reset,
                                    fetch_max_wait_ms=wait_ms, **aiokafka_config(self.settings.kafka))
        await consumer.start()
        self.reading[topic] = False
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                if not self.reading[topic] and consumer.assignment():
                    for tp in consumer.assignment():
                        await consumer.position(tp)  # "latest" is resolved now: what follows is read
                    self.reading[topic] = True
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    continue
                values = []
                for record in records:
                    try:
                        value = json.loads(record.value)
                        if not isinstance(value, dict) or "id" not in value:
                            raise ValueError("not a result")
                        values.append(value)
                    except ValueError:
                        self.malformed += 1
                        log.warning("skipped a record that is not a result",
                                    extra={"topic": topic, "partition": record.partition, "offset": record.offset})
                await self._store(store, values)  # only then is the batch committed
                await consumer.commit()
        finally:
            await consumer.stop()

    async def _store(self, store, values: list[dict]) -> None:
        from redis.exceptions import RedisError

        while True:
            try:
                await store(values)
                return
            except (RedisError, OSError) as exc:
                log.warning("console store unavailable; retrying", extra={"error": repr(exc), "retry_in_s": RETRY_S})
                await asyncio.sleep(RETRY_S)

    async def _queue(self, values: list[dict]) -> None:
        added = await self.queue.add(values)
        self.flagged_read += len(values)
        if added:
            log.info("flagged items queued", extra={"new": added, "read": len(values)})
