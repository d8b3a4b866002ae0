"""The stack's own limit, for ``chatmod bench``: ``python -m pipeline.devstack.bench_reference``.

A worker with no model, cache or Redis: the worker's Faust app, settings, micro-batching and ack
discipline (``pipeline.agents.consume_in_batches``), publishing one small result per message. The raid
workload is measured against it: a flood of repeated texts should cost the real worker little more than
this, since every repeat is answered from memory.
"""

from __future__ import annotations

import asyncio
import json
import logging

import faust

from pipeline.agents import FaustPublisher, WorkerState, consume_in_batches, settle_heap
from pipeline.app import create_app
from pipeline.logging import logging_dict_config
from pipeline.moderation import BatchStats, InRecord
from pipeline.settings import Settings

log = logging.getLogger("chatmod.bench.reference")


class Passthrough:
    """Answers each record with ``{"id", "cached": true, "latency_ms": 0}`` on the moderated topic."""

    def __init__(self, publisher: FaustPublisher, topic: str):
        self.publisher, self.topic = publisher, topic

    async def handle(self, records: list[InRecord], model_done=None) -> BatchStats:
        futures = []
        for record in records:
            msg_id = json.loads(record.value)["id"]
            value = json.dumps({"id": msg_id, "cached": True, "latency_ms": 0.0}).encode()
            futures.append(await self.publisher.send(self.topic, msg_id.encode(), value))
        if model_done is not None:
            model_done()
        await asyncio.gather(*futures)
        return BatchStats(received=len(records), results=len(records))


def main() -> None:
    settings = Settings()
    app = create_app(settings, with_agents=False)
    topics = settings.topics
    messages = app.topic(topics.messages, value_type=bytes, key_type=bytes, value_serializer="raw",
                         key_serializer="raw", partitions=topics.partitions)
    state = WorkerState(settings)
    passthrough = Passthrough(FaustPublisher(app), topics.moderated)

    @app.agent(messages, name="moderate_messages")
    async def reference(stream: faust.StreamT) -> None:
        settle_heap(settings.worker.gc_threshold)  # the worker's heap discipline too: a like-for-like reference
        log.info("worker ready", extra={"reference": "no model, no cache"})
        await consume_in_batches(stream, passthrough, state)

    faust.Worker(app, loglevel=settings.worker.log_level, quiet=True, redirect_stdouts=False,
                 logging_config=logging_dict_config(settings.worker.log_level, settings.worker.log_json,
                                                    settings.worker.library_log_level)).execute_from_commandline()


if __name__ == "__main__":
    main()
