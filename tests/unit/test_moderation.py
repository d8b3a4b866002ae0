"""The moderation batch contract, on a real tiny model and a real Redis; the broker is replaced by an
in-memory publisher (the integration tests run the same code on tansu)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from pipeline.cache import ResultCache
from pipeline.moderation import BatchMismatch, InRecord, Moderator
from pipeline.serving import load_serving
from pipeline.settings import Settings
from pipeline.textnorm import message_key

pytestmark = pytest.mark.integration  # real Redis


class MemoryPublisher:
    """Records what would be produced; every send is confirmed at once (or fails, if told to)."""

    def __init__(self, fail: bool = False):
        self.sent: list[tuple[str, bytes | None, bytes, list | None]] = []
        self.fail = fail

    async def send(self, topic, key, value, headers=None):
        future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            self.sent.append((topic, key, value, headers))
            future.set_result(None)
        return future

    def on(self, topic: str) -> list[tuple]:
        return [s for s in self.sent if s[0] == topic]


@pytest.fixture
def settings(tmp_path: Path, tiny_artifact: Path, redis_url: str, monkeypatch) -> Settings:
    for key in [k for k in __import__("os").environ if k.startswith("CHATMOD_")]:
        monkeypatch.delenv(key)
    registry = ModelRegistry(tmp_path / "store")
    registry.promote(registry.add(tiny_artifact).ref)
    return Settings(models={"store": tmp_path / "store", "threads": 1}, redis={"url": redis_url})


def _moderator(settings: Settings, publisher, classifier=None) -> Moderator:
    serving = load_serving(settings)
    return Moderator(settings, classifier=lambda: classifier or serving, cache=ResultCache(settings.redis),
                     publisher=publisher, executor=ThreadPoolExecutor(1))


def _records(values: list[bytes | None]) -> list[InRecord]:
    return [InRecord("chat.messages.v1", 0, offset, value) for offset, value in enumerate(values)]


def _msg(i: str, text: str) -> bytes:
    return json.dumps({"id": i, "text": text}).encode()


async def test_a_batch_ends_as_one_result_per_id_or_a_dead_letter(settings):
    publisher = MemoryPublisher()
    moderator = _moderator(settings, publisher)
    values = [_msg("a", "hello there"), _msg("b", "hello   there"), b"{broken", _msg("c", "you idiot"),
              _msg("a", "hello there"), None]
    stats = await moderator.handle(_records(values))
    moderated = publisher.on(settings.topics.moderated)
    assert [key for _, key, _, _ in moderated] == [b"a", b"b", b"c", b"a"]
    assert stats.results == 4 and stats.dead_letters == 2
    assert stats.classified == 2, "'hello there' and 'hello   there' normalise to one text: one model call"
    by_key = {}
    for _, key, value, _ in moderated:
        by_key.setdefault(key, set()).add(value)
    assert all(len(v) == 1 for v in by_key.values()), "the same id twice gets the same bytes twice"
    dlq = publisher.on(settings.topics.dlq)
    assert [value for _, _, value, _ in dlq] == [b"{broken", b""]
    reasons = [dict(h)["chatmod.error.reason"] for _, _, _, h in dlq]
    assert [dict(h)["chatmod.error.kind"] for _, _, _, h in dlq] == [b"not_json", b"not_json"]
    assert reasons[1] == b"empty value"
    assert {dict(h)["chatmod.source.offset"] for _, _, _, h in dlq} == {b"2", b"5"}


async def test_a_redelivered_batch_republishes_identical_results(settings):
    first, second = MemoryPublisher(), MemoryPublisher()
    values = [_msg(str(i), f"message {i}") for i in range(20)]
    await _moderator(settings, first).handle(_records(values))
    stats = await _moderator(settings, second).handle(_records(values))
    assert stats.replayed == 20 and stats.classified == 0
    assert first.on(settings.topics.moderated) == second.on(settings.topics.moderated)


async def test_repeated_text_under_a_new_id_is_served_from_the_cache(settings):
    publisher = MemoryPublisher()
    moderator = _moderator(settings, publisher)
    await moderator.handle(_records([_msg("1", "gg wp")]))
    stats = await moderator.handle(_records([_msg("2", "GG  wp")]))  # same text for an uncased model
    result = json.loads(publisher.on(settings.topics.moderated)[-1][2])
    assert stats.cache_hits == 1 and stats.classified == 0 and result["cached"] is True


async def test_scores_read_from_redis_stay_in_the_workers_memory(settings):
    """A raid's few texts are read from Redis once, then answered from memory (no look-up, no model)."""
    publisher = MemoryPublisher()
    await _moderator(settings, MemoryPublisher()).handle(_records([_msg("1", "gg wp"), _msg("2", "nice one")]))
    other = _moderator(settings, publisher)  # another worker: the scores are in Redis, not in its memory
    stats = await other.handle(_records([_msg("3", "gg wp")]))
    assert stats.cache_hits == 1 and stats.classified == 0
    cache = ResultCache(settings.redis)
    await cache._client.flushdb()  # Redis loses everything: the text is still in this worker's memory
    await cache.close()
    stats = await other.handle(_records([_msg("4", "GG wp"), _msg("5", "nice one")]))
    results = {json.loads(v)["id"]: json.loads(v) for _, _, v, _ in publisher.on(settings.topics.moderated)}
    assert stats.classified == 1 and stats.cache_hits == 1, "'nice one' was never read by this worker"
    assert results["4"]["cached"] is True and results["5"]["cached"] is False
    assert results["4"]["toxicity"] == results["3"]["toxicity"]


async def test_memory_keeps_the_texts_used_last(settings, monkeypatch):
    monkeypatch.setattr("pipeline.moderation.RECENT_SCORES", 2)
    publisher = MemoryPublisher()
    moderator = _moderator(settings, publisher)
    for i, text in enumerate(["alpha", "beta", "alpha", "gamma"]):  # "alpha" used again before "gamma" came
        await moderator.handle(_records([_msg(str(i), text)]))
    assert len(moderator._recent) == 2
    cache = ResultCache(settings.redis)
    await cache._client.flushdb()
    await cache.close()
    stats = await moderator.handle(_records([_msg("a", "alpha"), _msg("b", "gamma"), _msg("c", "beta")]))
    cached = {json.loads(v)["id"]: json.loads(v)["cached"] for _, _, v, _ in publisher.on(settings.topics.moderated)}
    assert stats.classified == 1
    assert (cached["a"], cached["b"], cached["c"]) == (True, True, False), \
        "beta, the least recently used, is the one that left memory"


async def test_a_classifier_breaking_the_batch_contract_publishes_nothing(settings):
    class ShortClassifier:
        refs = {"toxicity": "broken@1", "sentiment": "broken@1"}
        casefold = True
        normaliser = "none"
        policy = load_serving(settings).policy

        def predict(self, texts):
            return [{"toxicity": {}, "sentiment": {}}] * (len(texts) - 1)

    publisher = MemoryPublisher()
    with pytest.raises(BatchMismatch):
        await _moderator(settings, publisher, ShortClassifier()).handle(_records([_msg("x", "a"), _msg("y", "b")]))
    assert publisher.sent == []


async def test_an_unconfirmed_publish_fails_the_batch_so_it_is_not_acked(settings):
    with pytest.raises(ConnectionError):
        await _moderator(settings, MemoryPublisher(fail=True)).handle(_records([_msg("x", "hello")]))


async def test_a_result_is_recorded_before_it_is_published_so_its_redelivery_is_byte_identical(settings):
    """A worker that dies (here: a broker that fails) after the results left and before anything else
    happened leaves them recorded: the redelivery publishes the same bytes, not a re-scored copy with its
    own latency."""
    values = [_msg(str(i), f"first delivery {i}") for i in range(10)]
    with pytest.raises(ConnectionError):
        await _moderator(settings, MemoryPublisher(fail=True)).handle(_records(values))
    cache = ResultCache(settings.redis)
    recorded = await cache.get_many([message_key(settings.redis.key_prefix, str(i)) for i in range(10)])
    await cache.close()
    again = MemoryPublisher()
    stats = await _moderator(settings, again).handle(_records(values))
    assert stats.replayed == 10 and stats.classified == 0
    assert [value for _, _, value, _ in again.on(settings.topics.moderated)] == recorded


async def test_the_model_is_released_before_the_batch_publishes_and_exactly_once(settings):
    """The worker forms its next batch on this signal: it must come after the model work and before the
    (slow) broker confirmations, once per batch, also for a batch with nothing to classify."""
    confirm = asyncio.Event()
    events: list[str] = []

    class SlowBroker(MemoryPublisher):
        async def send(self, topic, key, value, headers=None):
            events.append("send")
            future = asyncio.get_running_loop().create_future()

            async def confirm_later():
                await confirm.wait()
                future.set_result(None)

            asyncio.ensure_future(confirm_later())
            return future

    moderator = _moderator(settings, SlowBroker())
    released = asyncio.Event()

    def model_done():
        events.append("model done")
        released.set()

    batch = asyncio.ensure_future(moderator.handle(_records([_msg("1", "hi all"), _msg("2", "you idiot")]), model_done))
    await asyncio.wait_for(released.wait(), 30)
    assert not batch.done(), "released while the publish is still unconfirmed"
    confirm.set()
    stats = await batch
    assert stats.classified == 2 and events.count("model done") == 1 and events[0] == "model done"

    repeat = await moderator.handle(_records([_msg("3", "hi all")]), model_done)  # a cache hit: no model work
    assert repeat.classified == 0 and events.count("model done") == 2


async def test_the_model_is_released_when_a_batch_fails(settings):
    released = []
    with pytest.raises(ConnectionError):
        await _moderator(settings, MemoryPublisher(fail=True)).handle(_records([_msg("x", "hello")]),
                                                                       lambda: released.append(1))
    assert released == [1]


def test_the_spin_setting_reaches_the_model_sessions(settings: Settings, monkeypatch) -> None:
    monkeypatch.setenv("CHATMOD_MODELS_SPIN", "false")
    parked = Settings(models={"store": settings.models.store, "threads": 1}, redis=settings.redis)
    for chosen, allowed in ((settings, "1"), (parked, "0")):
        for clf in load_serving(chosen).models.classifiers:
            options = clf._model.session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == allowed
