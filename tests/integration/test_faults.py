"""Faults with real parts, each ending with nothing lost: broker restart, a worker killed while another
takes over, poison input at volume, graceful shutdown mid-stream."""

from __future__ import annotations

import signal
import time

import pytest

from pipeline.devstack.bench_workload import rss_mb
from pipeline.devstack.childproc import free_port
from pipeline.devstack.embedded import EmbeddedBroker, EmbeddedS3, create_topics, moto_server_binary
from tests.harness import (
    WorkerProcess,
    message,
    metric_samples,
    produce,
    read_topic,
    results_by_id,
    wait_for_records,
    wait_http_status,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TEXTS = ["you are a wonderful person", "shut up you idiot", "gg wp everyone", "I will find you", "lol"]


def _messages(start: int, n: int, tag: str = "m") -> list[bytes]:
    return [message(f"{tag}{i}", f"{TEXTS[i % len(TEXTS)]} {i}") for i in range(start, start + n)]


def _assert_complete(records: list, ids: set[str], worker: WorkerProcess) -> None:
    by_id = results_by_id(records)
    missing = ids - set(by_id)
    assert not missing, f"{len(missing)} of {len(ids)} lost, e.g. {sorted(missing)[:5]}\n{worker.log_tail()}"
    for values in by_id.values():
        assert all(v == values[0] for v in values), "a redelivered message must get the identical result"


@pytest.mark.skipif(moto_server_binary() is None, reason="a broker that keeps its data over a restart needs "
                                                          "moto_server (S3 storage for tansu)")
def test_worker_resumes_by_itself_after_the_broker_restarts(tansu_binary, redis_url, tiny_store, topic_prefix,
                                                            tmp_path):
    with EmbeddedS3() as s3, EmbeddedBroker(binary=tansu_binary, storage=s3.storage, env=s3.broker_env()) as broker:
        env = worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix)
        topic_in, topic_out = env["CHATMOD_TOPICS_MESSAGES"], env["CHATMOD_TOPICS_MODERATED"]
        create_topics(broker.bootstrap, {topic_in: 3, topic_out: 3, env["CHATMOD_TOPICS_FLAGGED"]: 3,
                                         env["CHATMOD_TOPICS_DLQ"]: 3})
        with WorkerProcess(env, tmp_path / "worker.log") as worker:
            produce(broker.bootstrap, topic_in, _messages(0, 100))
            read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 100, 90, worker)
            broker.stop()
            time.sleep(3)  # the worker sees connection errors meanwhile
            broker.start()  # same port, same data
            produce(broker.bootstrap, topic_in, _messages(100, 100))
            out = read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 200, 120, worker)
            _assert_complete(out, {f"m{i}" for i in range(200)}, worker)
            assert worker.alive, "the worker must ride out the outage, not exit"


def test_two_workers_split_the_partitions_and_one_takes_over_when_the_other_is_killed(
        broker, redis_url, tiny_store, topic_prefix, tmp_path):
    ports = [free_port(), free_port()]
    envs = [worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix, CHATMOD_WORKER_WEB_ENABLED="true",
                       CHATMOD_WORKER_WEB_PORT=str(port), CHATMOD_WORKER_DATADIR=str(tmp_path / f"faust-{k}"))
            for k, port in enumerate(ports)]
    topic_in, topic_out = envs[0]["CHATMOD_TOPICS_MESSAGES"], envs[0]["CHATMOD_TOPICS_MODERATED"]
    create_topics(broker.bootstrap, {topic_in: 4})
    workers = [WorkerProcess(env, tmp_path / f"worker{k}.log") for k, env in enumerate(envs)]

    def consumed(k: int) -> float:
        text = wait_http_status(f"http://127.0.0.1:{ports[k]}/metrics", 200, 10, workers[k]).decode()
        return metric_samples(text).get(("chatmod_messages_in_total", frozenset()), 0.0)

    with workers[0], workers[1]:
        for k in (0, 1):
            wait_http_status(f"http://127.0.0.1:{ports[k]}/ready", 200, 60, workers[k])
        time.sleep(8)  # let the group settle on both members (tansu holds a join for half the session timeout)
        keys = [f"channel-{i % 40}".encode() for i in range(400)]  # 40 channels over 4 partitions
        produce(broker.bootstrap, topic_in, _messages(0, 400), keys)
        read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 400, 90, workers[0])
        first = [consumed(0), consumed(1)]
        assert all(n > 0 for n in first) and sum(first) >= 400, f"both members should get partitions: {first}"

        workers[0].stop(signal.SIGKILL)
        produce(broker.bootstrap, topic_in, _messages(400, 400), keys)
        out = read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= 800, 150, workers[1])
        _assert_complete(out, {f"m{i}" for i in range(800)}, workers[1])
        assert consumed(1) - first[1] >= 400, "the survivor must have taken over the dead member's partitions"


def test_poison_at_volume_every_good_message_moderated_every_bad_one_in_the_dlq_memory_flat(
        broker, redis_url, tiny_store, topic_prefix, tmp_path):
    env = worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix, CHATMOD_BATCHING_DLQ_MAX_PER_S="5000")
    topic_in = env["CHATMOD_TOPICS_MESSAGES"]
    create_topics(broker.bootstrap, {topic_in: 3})
    n = 10_000
    kinds = [b"{not json", b'{"text": "no id"}', b"[1, 2, 3]", b'{"id": "x", "text": "\xff\xfe"}']
    values: list[bytes] = []
    for i in range(n):
        values.append(message(f"g{i}", f"{TEXTS[i % len(TEXTS)]} {i % 500}"))
        values.append(kinds[i % len(kinds)][:-1] + f" {i}".encode() + kinds[i % len(kinds)][-1:])
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(broker.bootstrap, topic_in, values[: len(values) // 4])
        read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                   lambda rs: len(results_by_id(rs)) >= n // 4, 120, worker)
        rss_early = rss_mb(worker.pid)["rss_mb"]
        produce(broker.bootstrap, topic_in, values[len(values) // 4:])
        out = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"],
                         lambda rs: len(results_by_id(rs)) >= n, 180, worker)
        dead = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_DLQ"], lambda rs: len(rs) >= n, 60, worker)
        rss_late = rss_mb(worker.pid)["rss_mb"]
    _assert_complete(out, {f"g{i}" for i in range(n)}, worker)
    assert len({r.value for r in dead}) == n, "every malformed record reaches the DLQ, once"
    reasons = [dict(r.headers).get("chatmod.error.reason", b"") for r in dead]
    assert all(reasons), "every dead letter says why"
    # 3/4 of the volume went through after the early reading: the worker must not have grown with it
    assert rss_late - rss_early < 40, f"worker memory grew from {rss_early:.0f} MB to {rss_late:.0f} MB"


def test_sigterm_finishes_and_commits_the_batches_in_flight(broker, redis_url, tiny_store, topic_prefix,
                                                            tmp_path):
    env = worker_env(broker.bootstrap, redis_url, tiny_store, topic_prefix, CHATMOD_BATCHING_MAX_BATCH="32")
    topic_in, topic_out = env["CHATMOD_TOPICS_MESSAGES"], env["CHATMOD_TOPICS_MODERATED"]
    create_topics(broker.bootstrap, {topic_in: 3})
    total = 6000
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    produce(broker.bootstrap, topic_in, _messages(0, total))
    assert wait_for_records(broker.bootstrap, topic_out, 300, 90) >= 300, worker.log_tail()
    code = worker.stop(timeout_s=40)  # mid-stream: batches are in flight
    assert code == 0, f"graceful shutdown should exit 0, got {code}\n{worker.log_tail()}"
    done_before = len(results_by_id(read_topic(broker.bootstrap, topic_out, lambda rs: False, 3)))
    assert 300 <= done_before < total, "the worker should have stopped mid-stream"
    with WorkerProcess(env, tmp_path / "worker2.log") as restarted:
        out = read_topic(broker.bootstrap, topic_out, lambda rs: len(results_by_id(rs)) >= total, 120, restarted)
    _assert_complete(out, {f"m{i}" for i in range(total)}, restarted)
    duplicates = len(out) - len(results_by_id(out))
    assert duplicates == 0, f"{duplicates} results published twice: the stopped worker did not commit what it published"
