"""The peer design, for ``chatmod bench``: ``python -m pipeline.devstack.bench_peer BOOTSTRAP IN OUT MODEL THREADS``.

What most open-source Kafka moderation demos run: a kafka-python consumer, each message through the
transformers ``pipeline("text-classification")`` default one at a time, a kafka-python producer. It runs
the served model (rebuilt in torch from its ONNX weights), on the same broker and box as the worker, so
the end-to-end lead over it is a measured ratio. Needs the ``train`` extra (torch, transformers).
"""

from __future__ import annotations

import json
import signal
import sys


def main(argv: list[str]) -> None:
    bootstrap, in_topic, out_topic, folder, threads = argv
    import torch
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from transformers import AutoTokenizer, pipeline

    from models.torch_from_onnx import torch_model_from_artifact

    torch.set_num_threads(int(threads))
    classify = pipeline("text-classification", model=torch_model_from_artifact(folder),
                        tokenizer=AutoTokenizer.from_pretrained(folder), device=-1)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(in_topic, p) for p in sorted(consumer.partitions_for_topic(in_topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)  # resolved before the bench produces anything
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(json.dumps({"msg": "worker ready", "peer": "kafka-python + transformers pipeline"}), flush=True)
    while not stopping:
        for records in consumer.poll(timeout_ms=100).values():
            for record in records:
                message = json.loads(record.value)
                top = classify(message["text"])[0]
                result = {"id": message["id"], "label": top["label"], "score": top["score"]}
                producer.send(out_topic, key=message["id"].encode(), value=json.dumps(result).encode())
    producer.flush()
    producer.close()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
