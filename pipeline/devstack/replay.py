"""``chatmod replay``: re-score a stored range of input messages and confirm the decisions published for it.

An audit asks "would this model, today, decide what it decided then?". Scores are a pure function of
(text, model version), so the answer must be yes: every input record in the range is read back from
Kafka, its published result is found on the moderated topic (from the range's first timestamp on), the
text is scored again with the model version that result names (from the registry), the policy decides
as the worker does (with this process's policy settings), and the two results are compared outside the
delivery fields (``latency_ms``, ``cached``). Anything that differs is reported by message id, partition
and offset, never by text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.labels import Task
from models.normalise import normalise_text
from models.registry import ModelRegistry, open_store
from pipeline.decisions import build_result
from pipeline.enforcement import FLOOD_FLAG, HOLD_REASON, Outcome
from pipeline.kafka_tools import kafka_client_config
from pipeline.profiles import profiles_holder
from pipeline.schemas import InvalidMessage, ModerationResult, decode_message, differing_fields
from pipeline.serving import serving_for
from pipeline.settings import Settings

Progress = Callable[[str, int, int], None]
SCORE_BATCH = 256
IDLE_S = 2.0  # a stored range has been read when no record came for this long


class ReplayError(RuntimeError):
    """The range cannot be replayed as asked (no such topic or partition, an empty range)."""


@dataclass
class ReplayReport:
    topic: str
    partitions: list[int]
    from_offset: int
    to_offset: int | None
    inputs: int = 0
    dead_letters: int = 0  # inputs the worker sends to the DLQ: nothing to compare
    compared: int = 0
    identical: int = 0  # the same in every field outside latency_ms and cached
    byte_identical: int = 0  # with the published delivery fields carried over, the same bytes
    differing: int = 0
    missing_results: int = 0  # no published result found for the input's id
    models: dict[str, int] = field(default_factory=dict)  # "toxicity=name@v,sentiment=..." -> inputs
    differences: list[dict] = field(default_factory=list)  # id, partition, offset, fields (capped)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.differing == 0 and self.compared > 0

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


@dataclass
class _Input:
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


def _drain(consumer: Any, idle_s: float = IDLE_S) -> Iterator[tuple[Any, list]]:
    """Yield ``(partition, records)`` as polled until nothing has arrived for ``idle_s``: the end of the
    stored range. (End offsets are not asked for: not every Kafka-compatible broker reports them right.)"""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s:
        for tp, batch in consumer.poll(timeout_ms=200).items():
            if batch:
                quiet_since = time.monotonic()
                yield tp, batch


def read_inputs(settings: Settings, topic: str, partitions: list[int] | None, from_offset: int,
                to_offset: int | None) -> tuple[list[int], list[_Input]]:
    """Input records at offsets ``[from_offset, to_offset)`` of each partition (to the end without
    ``to_offset``)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_client_config(settings.kafka), group_id=None, enable_auto_commit=False,
                             max_poll_records=5000)
    try:
        known = sorted(consumer.partitions_for_topic(topic) or ())
        if not known:
            raise ReplayError(f"topic {topic!r} does not exist or has no partitions")
        chosen = sorted(set(partitions)) if partitions else known
        unknown = set(chosen) - set(known)
        if unknown:
            raise ReplayError(f"{topic} has partitions {known}; {sorted(unknown)} do not exist")
        tps = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, from_offset)
        records: list[_Input] = []
        active = set(tps)
        for _, batch in _drain(consumer):
            records += [_Input(r.partition, r.offset, r.timestamp, r.value) for r in batch
                        if to_offset is None or r.offset < to_offset]
            if to_offset is not None:
                active = {tp for tp in active if consumer.position(tp) < to_offset}
                if not active:
                    break
        return chosen, records
    finally:
        consumer.close()


def read_results(settings: Settings, topic: str, ids: set[str], since_ms: int) -> dict[str, bytes]:
    """The first published result for each of ``ids``, reading ``topic`` from ``since_ms`` on."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_client_config(settings.kafka), group_id=None, enable_auto_commit=False,
                             max_poll_records=5000)
    found: dict[str, bytes] = {}
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return found
        consumer.assign(tps)
        # Results are published after their inputs: nothing earlier can be one of them. (A broker that
        # cannot answer by time gives the beginning: slower, the same answer.)
        starts = consumer.offsets_for_times(dict.fromkeys(tps, max(0, since_ms)))
        for tp in tps:
            start = starts.get(tp)
            if start is None:
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, start.offset)
        for _, batch in _drain(consumer):
            for record in batch:
                msg_id = _result_id(record.value)
                if msg_id in ids and msg_id not in found:
                    found[msg_id] = record.value
            if len(found) == len(ids):
                break
        return found
    finally:
        consumer.close()


def _result_id(value: bytes | None) -> str | None:
    try:
        return json.loads(value)["id"]
    except (TypeError, ValueError, KeyError):
        return None


def replay(settings: Settings, *, topic: str | None = None, results_topic: str | None = None,
           partitions: list[int] | None = None, from_offset: int = 0, to_offset: int | None = None,
           registry: ModelRegistry | None = None, max_differences: int = 50,
           progress: Progress | None = None) -> ReplayReport:
    """Re-score ``[from_offset, to_offset)`` of the input topic and compare with what was published."""
    if from_offset < 0:
        raise ReplayError(f"from_offset must be >= 0, got {from_offset}")
    if to_offset is not None and to_offset <= from_offset:
        raise ReplayError(f"to_offset ({to_offset}) must be greater than from_offset ({from_offset})")
    started = time.monotonic()
    topic = topic or settings.topics.messages
    registry = registry or open_store(settings.models.store)
    chosen, inputs = read_inputs(settings, topic, partitions, from_offset, to_offset)
    report = ReplayReport(topic=topic, partitions=chosen, from_offset=from_offset, to_offset=to_offset,
                          inputs=len(inputs))
    messages = []
    for rec in inputs:
        try:
            messages.append((rec, decode_message(rec.value, settings.batching.max_message_bytes)))
        except InvalidMessage:
            report.dead_letters += 1
    if messages:
        since = min(rec.timestamp_ms for rec, _ in messages)
        published = read_results(settings, results_topic or settings.topics.moderated,
                                 {m.id for _, m in messages}, since)
        _rescore(settings, registry, messages, published, report, max_differences, progress)
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _rescore(settings: Settings, registry: ModelRegistry, messages: list, published: dict[str, bytes],
             report: ReplayReport, max_differences: int, progress: Progress | None) -> None:
    groups: dict[tuple[tuple[str, str], ...], list] = {}  # the models a result names -> its inputs
    for rec, msg in messages:
        raw = published.get(msg.id)
        if raw is None:
            report.missing_results += 1
            continue
        first = json.loads(raw)
        groups.setdefault(tuple(sorted(first.get("models", {}).items())), []).append((rec, msg, first, raw))
    done = 0

    holder = profiles_holder(settings)  # the profiles as the workers hold them now
    for refs, items in groups.items():
        report.models[",".join(f"{t}={r}" for t, r in refs)] = len(items)
        serving = serving_for({Task(t): registry.get(ref)[1] for t, ref in refs}, settings)
        holder.refresh(serving.policy)
        profiles = holder.get(serving.policy)
        for start in range(0, len(items), SCORE_BATCH):
            chunk = items[start : start + SCORE_BATCH]
            texts = [normalise_text(msg.text, settings.batching.max_text_chars) for _, msg, _, _ in chunk]
            for (rec, msg, first, raw), scores, text in zip(chunk, serving.predict(texts), texts, strict=True):
                # the published delivery fields carried over: an identical result is then the same bytes
                profile = profiles.compiled.get((first.get("profile") or "").split("@")[0])
                if first.get("profile") is not None and (profile is None or profile.ref != first["profile"]):
                    profile = None  # that profile version is no longer stored: only the model's fields compare
                again = build_result(msg, scores, serving.policy, serving.refs, bool(first.get("cached")),
                                     float(first.get("latency_ms", 0.0)), text, profile,
                                     outcome=_published_outcome(first))
                _compare(report, rec, msg.id, first, raw, again, max_differences,
                         model_only=first.get("profile") is not None and profile is None)
            done += len(chunk)
            if progress:
                progress("re-scored", done, len(messages))


def _published_outcome(first: dict):  # -> pipeline.enforcement.Outcome
    """What the user's ledger and the channel's windows added when the result was published: state that
    depends on the user's history, not on the text, taken as published (the replay checks the rest)."""
    reasons = tuple(r for r in first.get("reasons") or []
                    if r == HOLD_REASON or r.startswith(("action:", "flood:")))
    flags = tuple(f for f in first.get("flags") or [] if f == FLOOD_FLAG)
    return Outcome(flags, HOLD_REASON in reasons, tuple(first.get("actions") or []), reasons)


MODEL_FIELDS = ("toxicity", "sentiment", "spans", "models")  # a function of the text and the model alone


def _compare(report: ReplayReport, rec: _Input, msg_id: str, first: dict, raw: bytes, again: ModerationResult,
             max_differences: int, model_only: bool = False) -> None:
    report.compared += 1
    rebuilt = again.to_json_bytes()
    fields = differing_fields(first, json.loads(rebuilt))
    if model_only:
        fields = [f for f in fields if f in MODEL_FIELDS]
    if not fields:
        report.identical += 1
        report.byte_identical += rebuilt == raw
        return
    report.differing += 1
    if len(report.differences) < max_differences:
        report.differences.append({"id": msg_id, "partition": rec.partition, "offset": rec.offset,
                                   "fields": fields, "decision": [first.get("decision"), again.decision]})


def write_report(report: ReplayReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2))
