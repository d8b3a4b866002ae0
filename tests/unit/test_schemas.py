"""Wire formats: every malformed record gets a kind and a reason, results serialise deterministically."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from models.labels import Task
from pipeline.schemas import (
    ChatMessage,
    DeadLetter,
    InvalidMessage,
    ModerationResult,
    decode_feedback,
    decode_message,
)

pytestmark = pytest.mark.unit

LIMIT = 65536
PRIVATE = "my private words"


def _raw(obj) -> bytes:
    return json.dumps(obj).encode()


def test_valid_message_ignores_extra_fields():
    raw = _raw({"id": "m1", "text": "hello", "channel": "c", "user": "u", "ts": "2024-05-01T12:00:00Z",
                "client": {"app": "web"}, "lang": "en"})
    msg = decode_message(raw, LIMIT)
    assert msg == ChatMessage(id="m1", text="hello", channel="c", user="u", ts="2024-05-01T12:00:00Z")
    assert msg.ts == "2024-05-01T12:00:00Z"  # the sender's string, unchanged


def test_optional_fields_may_be_absent_or_null():
    msg = decode_message(_raw({"id": "m1", "text": "", "channel": None}), LIMIT)
    assert (msg.channel, msg.user, msg.ts, msg.text) == (None, None, None, "")


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (b'{"id": "m1", "text": ', "not_json", "line 1"),
        (b"", "not_json", "empty"),
        (None, "not_json", "empty"),
        (_raw({"text": PRIVATE}), "schema", "id: field required"),
        (_raw({"id": 42, "text": PRIVATE}), "schema", "id: expected string, got int"),
        (_raw({"id": "", "text": PRIVATE}), "schema", "id: must not be empty"),
        (_raw({"id": "m1", "text": 7}), "schema", "text: expected string, got int"),
        (_raw({"id": "m1", "text": None}), "schema", "text: expected string, got null"),
        (_raw({"id": "m1", "text": PRIVATE, "ts": "last tuesday"}), "schema", "ts: not an ISO-8601"),
        (b'{"id": "m1", "text": "caf\xe9"}', "not_utf8", "invalid UTF-8 at byte 25"),
        (b'{"id": "m1", "text": "\\ud83d"}', "not_utf8", "text: unpaired surrogate"),
        (_raw([{"id": "m1", "text": PRIVATE}]), "not_object", "got array"),
        (b'"just a string"', "not_object", "got string"),
        (_raw({"id": "m1", "text": "x" * LIMIT}), "too_large", f"exceeds the limit of {LIMIT}"),
    ],
)
def test_malformed_messages(raw, kind, reason):
    with pytest.raises(InvalidMessage) as err:
        decode_message(raw, LIMIT)
    assert err.value.kind == kind
    assert reason in err.value.detail
    assert PRIVATE not in err.value.detail and PRIVATE not in str(err.value)


def test_several_schema_errors_are_all_named():
    with pytest.raises(InvalidMessage) as err:
        decode_message(_raw({"text": 1, "user": 2}), LIMIT)
    assert err.value.detail == (
        "id: field required; text: expected string, got int; user: expected string, got int"
    )


def test_deeply_nested_json_is_not_json_not_a_crash():
    with pytest.raises(InvalidMessage) as err:
        decode_message(b"[" * 60000, 100000)
    assert err.value.kind == "not_json"


def _result(**overrides) -> ModerationResult:
    fields = dict(
        id="m1", channel="c", user="u", decision="review",
        toxicity={"toxic": 0.812345678, "insult": 0.5},
        sentiment={"negative": 0.9, "neutral": 0.05, "positive": 0.05},
        flags=["toxic", "insult"], models={"toxicity": "tox@3", "sentiment": "sent@1"},
        cached=False, latency_ms=3.14159,
    )
    return ModerationResult(**(fields | overrides))


def test_result_bytes_are_deterministic_and_compact():
    a = _result()
    b = _result(toxicity={"insult": 0.5, "toxic": 0.812345678},
                models={"sentiment": "sent@1", "toxicity": "tox@3"})
    assert a.to_json_bytes() == b.to_json_bytes()
    data = a.to_json_bytes()
    assert b" " not in data.replace(b"sent@1", b"")  # compact separators
    decoded = json.loads(data)
    assert decoded["toxicity"]["toxic"] == 0.8123 and decoded["latency_ms"] == 3.1416
    assert list(decoded)[:4] == ["id", "channel", "user", "decision"]
    assert ModerationResult.from_json_bytes(data).decision == "review"


def test_result_keeps_non_ascii_as_utf8():
    data = _result(channel="café").to_json_bytes()
    assert "café".encode() in data


def test_result_bytes_are_the_canonical_json_of_the_result():
    """Floats rounded to 4 places (no -0.0), map keys sorted, fields in declaration order, UTF-8: checked
    against the standard library's encoding of the same canonical form."""
    rng = random.Random(7)
    for _ in range(200):
        result = _result(
            toxicity={label: rng.choice([rng.random(), -0.0, 0.00004, 1.0]) for label in ("toxic", "insult", "threat")},
            latency_ms=rng.uniform(0, 1e6), channel=rng.choice(["café", "ch\u2028", "频道", None]),
            spans=[{"start": 0, "end": 3, "label": "toxic", "score": rng.random()}],
            actions=[{"action": "warn", "minutes": None, "strikes": rng.uniform(0, 10)}])
        data = result.model_dump()
        canonical = {k: (round(v, 4) + 0.0 if isinstance(v, float) else
                         {a: round(b, 4) + 0.0 if isinstance(b, float) else b for a, b in sorted(v.items())}
                         if isinstance(v, dict) else
                         [{a: round(b, 4) + 0.0 if isinstance(b, float) else b for a, b in sorted(x.items())}
                          if isinstance(x, dict) else x for x in v] if isinstance(v, list) else v)
                     for k, v in data.items()}
        expected = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()
        assert result.to_json_bytes() == expected


@pytest.mark.parametrize("field", ["latency_ms", "span score", "strikes"])
def test_result_refuses_numbers_json_cannot_carry(field):
    nan = float("nan")
    overrides = {"latency_ms": {"latency_ms": nan},
                 "span score": {"spans": [{"start": 0, "end": 2, "label": "toxic", "score": nan}]},
                 "strikes": {"actions": [{"action": "warn", "minutes": None, "strikes": float("inf")}]}}[field]
    with pytest.raises(ValueError):
        _result(**overrides)


def test_result_refuses_nan_scores():
    with pytest.raises(ValueError, match="finite"):
        _result(toxicity={"toxic": float("nan")})


def test_dead_letter_header_round_trip():
    raw = b'{"id": 42, "text": "\xff"}'
    letter = DeadLetter(value=raw, kind="schema", reason="id: expected string, got int",
                        source_topic="chat.messages.v1", source_partition=3, source_offset=1234,
                        failed_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    headers = letter.to_headers()
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    assert dict(headers)["chatmod.source.offset"] == b"1234"
    assert dict(headers)["chatmod.failed_at"] == b"2024-05-01T12:00:00+00:00"
    # Extra headers from the source record survive alongside ours and are ignored on the way back.
    back = DeadLetter.from_headers(raw, [("trace-id", b"abc"), *headers])
    assert back == letter and back.value == raw
    assert DeadLetter.from_headers(raw, dict(headers)) == letter


def test_dead_letter_from_invalid_message_keeps_raw_bytes():
    raw = b"\x00\x01 not json"
    try:
        decode_message(raw, LIMIT)
    except InvalidMessage as exc:
        letter = DeadLetter.from_invalid(exc, raw, "chat.messages.v1", 0, 7)
    assert letter.value == raw and letter.kind == "not_json"


def test_dead_letter_without_headers_is_refused():
    with pytest.raises(ValueError, match="chatmod.error.kind"):
        DeadLetter.from_headers(b"x", [("chatmod.error.reason", b"r")])


def test_feedback_toxicity_and_sentiment():
    tox = decode_feedback(_raw({"id": "m1", "text": "t", "labels": {"insult": 1, "threat": 0},
                                "moderator": "ann", "ts": "2024-05-01T12:00:00+00:00"}), LIMIT)
    assert tox.task == Task.TOXICITY and tox.labels == {"insult": 1, "threat": 0}
    sent = decode_feedback(_raw({"id": "m1", "text": "t", "labels": {"sentiment": "negative"},
                                 "ts": "2024-05-01"}), LIMIT)
    assert sent.task == Task.SENTIMENT and sent.moderator is None


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"rude": 1}, "unknown labels ['rude']"),
        ({"insult": 2}, "take 0 or 1"),
        ({"insult": True}, "take 0 or 1"),
        ({"sentiment": "meh"}, "sentiment must be one of"),
        ({"sentiment": "negative", "insult": 1}, "send toxicity labels separately"),
        ({}, "non-empty object"),
    ],
)
def test_feedback_labels_checked_against_contract(labels, reason):
    with pytest.raises(InvalidMessage) as err:
        decode_feedback(_raw({"id": "m1", "text": "t", "labels": labels, "ts": "2024-05-01"}), LIMIT)
    assert err.value.kind == "schema" and reason in err.value.detail


def test_published_json_schemas_are_the_code_and_describe_real_results() -> None:
    import json
    from pathlib import Path

    import jsonschema

    from pipeline.schemas import json_schemas

    folder = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    generated = json_schemas()
    for topic, schema in generated.items():
        published = json.loads((folder / f"{topic}.json").read_text(encoding="utf-8"))
        assert published == schema, f"docs/schemas/{topic}.json is stale: run `chatmod schemas`"
    result = ModerationResult(id="m1", decision="block", toxicity={"toxic": 0.97, "targeted": 0.8},
                              sentiment={"negative": 0.9}, flags=["toxic"], models={"toxicity": "m@1"},
                              spans=[{"start": 10, "end": 15, "label": "toxic", "score": 0.97}],
                              reasons=["label:toxic", "severity:high"])
    jsonschema.validate(json.loads(result.to_json_bytes()), generated["chat.moderated.v1"])
    old_consumer_view = {k: v for k, v in json.loads(result.to_json_bytes()).items() if k not in ("spans", "reasons")}
    jsonschema.validate(old_consumer_view, generated["chat.moderated.v1"])  # both fields are optional
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**old_consumer_view, "spans": [{"start": 1}]}, generated["chat.moderated.v1"])
