"""What crosses the wire: chat messages in, moderation results out, dead letters, moderator feedback.

Topic names carry the schema version (``chat.messages.v1``, see ``pipeline.settings.TopicsSettings``);
a breaking change here means a new topic, not a silent change of meaning.

Decoding never lets a bad record crash a worker: :func:`decode_message` and :func:`decode_feedback`
raise :class:`InvalidMessage` with a machine-readable ``kind`` (the DLQ header) and a human reason
that names the field and the rule, never the message text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from models.labels import SENTIMENT_LABELS, TOXICITY_LABELS, Task

Decision = Literal["allow", "review", "block"]
Finite = Annotated[float, Field(allow_inf_nan=False)]  # a result's numbers are JSON numbers, never NaN
InvalidKind = Literal["too_large", "not_utf8", "not_json", "not_object", "schema"]

HEADER_KIND = "chatmod.error.kind"
HEADER_REASON = "chatmod.error.reason"
HEADER_TOPIC = "chatmod.source.topic"
HEADER_PARTITION = "chatmod.source.partition"
HEADER_OFFSET = "chatmod.source.offset"
HEADER_FAILED_AT = "chatmod.failed_at"
MAX_REASON_CHARS = 1000

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]


class InvalidMessage(ValueError):
    """A record that cannot be processed. ``kind`` is machine-readable, ``detail`` says why."""

    def __init__(self, kind: InvalidKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def reason(self) -> str:
        """Same as ``detail``: the name the DLQ header (``chatmod.error.reason``) uses."""
        return self.detail


def _check_iso8601(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 timestamp (e.g. 2024-05-01T12:00:00Z)") from None
    return value  # keep the sender's string: re-formatting would change what they sent


class ChatMessage(BaseModel):
    """One chat message as producers send it. Unknown fields are ignored (forward compatible)."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    id: NonEmptyStr
    text: StrictStr
    channel: StrictStr | None = None
    user: StrictStr | None = None
    ts: StrictStr | None = None

    @field_validator("ts")
    @classmethod
    def _check_ts(cls, value: str | None) -> str | None:
        return _check_iso8601(value)


class Feedback(BaseModel):
    """A moderator's verdict on a text, for retraining.

    ``labels`` is either toxicity labels with 0/1 (``{"insult": 1, "threat": 0}``; labels left out are
    unknown) or one sentiment class (``{"sentiment": "negative"}``).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    id: NonEmptyStr
    text: StrictStr
    labels: dict[str, int | str]
    moderator: StrictStr | None = None
    ts: StrictStr

    @field_validator("ts")
    @classmethod
    def _check_ts(cls, value: str | None) -> str | None:
        return _check_iso8601(value)

    @field_validator("labels", mode="before")
    @classmethod
    def _check_labels(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError(
                'expected a non-empty object: {"<toxicity label>": 0|1, ...} or {"sentiment": "<class>"}'
            )
        if "sentiment" in value:
            if len(value) != 1:
                raise ValueError(
                    "sentiment feedback carries only {'sentiment': ...}; send toxicity labels separately"
                )
            if value["sentiment"] not in SENTIMENT_LABELS:
                raise ValueError(f"sentiment must be one of {list(SENTIMENT_LABELS)}")
            return value
        unknown = sorted(set(value) - set(TOXICITY_LABELS))
        if unknown:
            raise ValueError(f"unknown labels {unknown}; expected {list(TOXICITY_LABELS)} or 'sentiment'")
        bad = sorted(k for k, v in value.items() if type(v) is not int or v not in (0, 1))
        if bad:
            raise ValueError(f"toxicity labels take 0 or 1; wrong for {bad}")
        return value

    @property
    def task(self) -> Task:
        return Task.SENTIMENT if "sentiment" in self.labels else Task.TOXICITY


def _canonical(value: Any) -> Any:
    """Floats rounded to 4 places (no -0.0), dict keys sorted: equal results give equal bytes."""
    kind = type(value)
    if kind is str or value is None or kind is bool or kind is int:  # most fields: nothing to do
        return value
    if isinstance(value, float):
        return round(value, 4) + 0.0
    if isinstance(value, dict):
        # a result's scores are flat maps of floats: rounded here without a call per value
        return {k: round(v, 4) + 0.0 if type(v) is float else _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


# The only fields in which two published copies of one message's result may differ: a copy re-scored after
# Redis lost the first copy's record has its own latency, and may be served from the content cache.
DELIVERY_FIELDS = ("latency_ms", "cached")


def differing_fields(first: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """Top-level result fields, outside :data:`DELIVERY_FIELDS`, in which two copies differ."""
    keys = (set(first) | set(other)) - set(DELIVERY_FIELDS)
    return sorted(k for k in keys if first.get(k) != other.get(k))


class Span(TypedDict):
    """A character range of a message's text that explains a label (``models/explain.py``)."""

    start: int
    end: int
    label: str
    score: Finite


class Action(TypedDict):
    """A step of a profile's enforcement ladder, reached by a user (``pipeline/enforcement.py``)."""

    action: Literal["warn", "hold", "timeout", "escalate"]
    minutes: int | None
    strikes: Finite


class ModerationResult(BaseModel):
    """The verdict on one message, published to the moderated topic and cached by message id."""

    model_config = ConfigDict(frozen=True)

    id: str
    channel: str | None = None
    user: str | None = None
    decision: Decision
    toxicity: dict[str, float]
    sentiment: dict[str, float]
    flags: list[str] = Field(default_factory=list)
    models: dict[str, str] = Field(default_factory=dict)  # task -> model ref (name@version)
    cached: bool = False
    latency_ms: Finite = 0.0
    # Additive (optional for consumers): the words that drove the decision, and stable reason codes.
    spans: list[Span] = Field(default_factory=list, description=(
        "The words that drove the decision: character ranges [start, end) of the message's text as sent "
        "(Python string indices, i.e. Unicode code points), with the label they explain and a score "
        "(the label's score for a listed word; the drop in it when the word is left out, for occlusion)."))
    reasons: list[str] = Field(default_factory=list, description=(
        "Reason codes: label:<label> per flagged label, severity:high (block) or severity:medium (review), "
        "target:group or target:individual, evasion. Empty for an allowed message."))

    profile: str | None = Field(None, description="The policy profile that decided, as name@version.")
    actions: list[Action] = Field(default_factory=list, description=(
        "Enforcement the user's strike ledger reached with this message (chat.actions.v1 carries each too)."))

    @field_validator("spans")
    @classmethod
    def _spans(cls, value: list[Span]) -> list[Span]:
        for span in value:
            if not 0 <= span["start"] < span["end"]:
                raise ValueError(f"a span needs 0 <= start < end, got {span['start']}..{span['end']}")
        return value

    @field_validator("toxicity", "sentiment")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"scores must be finite; got NaN/inf for {bad}")
        return value

    def to_json_bytes(self) -> bytes:
        """Compact UTF-8 JSON, fields in declaration order, deterministic for equal results.

        Written once per message on the hot path, so it is encoded by pydantic-core (a third of the time of
        ``json.dumps``, the same bytes)."""
        fields = self.__dict__
        return pydantic_core.to_json({name: _canonical(fields[name]) for name in _RESULT_FIELDS})

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ModerationResult:
        """Parse what :meth:`to_json_bytes` wrote."""
        return cls.model_validate_json(data)


_RESULT_FIELDS = tuple(ModerationResult.model_fields)


def _header_map(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    out = {}
    for key, value in items:
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    return out


class DeadLetter(BaseModel):
    """A record the pipeline could not process.

    On the DLQ topic the record's value is the raw input bytes, verbatim (replayable, nothing lost);
    everything else travels in ``chatmod.*`` Kafka headers, see :meth:`to_headers`.
    """

    model_config = ConfigDict(frozen=True)

    value: bytes | None = None  # the raw record value; travels as the DLQ record's value, not a header
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    reason: str
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("reason")
    @classmethod
    def _cap_reason(cls, value: str) -> str:
        return value if len(value) <= MAX_REASON_CHARS else value[: MAX_REASON_CHARS - 1] + "…"

    @classmethod
    def from_invalid(
        cls, error: InvalidMessage, value: bytes | None, topic: str, partition: int, offset: int
    ) -> DeadLetter:
        """The dead letter for a record that failed to decode."""
        return cls(
            value=value, kind=error.kind, reason=error.detail,
            source_topic=topic, source_partition=partition, source_offset=offset,
        )

    def to_headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers (name, UTF-8 bytes) describing the failure."""
        return [
            (HEADER_KIND, self.kind.encode()),
            (HEADER_REASON, self.reason.encode()),
            (HEADER_TOPIC, self.source_topic.encode()),
            (HEADER_PARTITION, str(self.source_partition).encode()),
            (HEADER_OFFSET, str(self.source_offset).encode()),
            (HEADER_FAILED_AT, self.failed_at.isoformat().encode()),
        ]

    @classmethod
    def from_headers(
        cls, value: bytes | None, headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None
    ) -> DeadLetter:
        """Rebuild from a DLQ record; other headers are ignored. Raises ValueError if ours are missing."""
        found = _header_map(headers)
        needed = (HEADER_KIND, HEADER_REASON, HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET, HEADER_FAILED_AT)
        missing = [h for h in needed if h not in found]
        if missing:
            raise ValueError(f"not a chatmod dead letter: headers {missing} are missing")
        return cls(
            value=value,
            kind=found[HEADER_KIND],
            reason=found[HEADER_REASON],
            source_topic=found[HEADER_TOPIC],
            source_partition=int(found[HEADER_PARTITION]),
            source_offset=int(found[HEADER_OFFSET]),
            failed_at=datetime.fromisoformat(found[HEADER_FAILED_AT]),
        )


# --- decoding ------------------------------------------------------------------------------------

_JSON_TYPES = {bool: "bool", int: "int", float: "float", str: "string", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _explain(exc: ValidationError) -> str:
    """'id: field required; text: expected string, got int' -- field and rule, never the value."""
    parts = []
    for err in exc.errors(include_url=False, include_input=True):
        where = ".".join(str(p) for p in err["loc"]) or "message"
        kind = err["type"]
        if kind == "missing":
            why = "field required"
        elif kind == "string_type":
            why = f"expected string, got {_json_type(err.get('input'))}"
        elif kind == "string_too_short":
            why = "must not be empty"
        elif kind == "value_error":
            why = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            why = err["msg"]  # pydantic's messages state the rule, not the input
        parts.append(f"{where}: {why}")
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def _decode(raw: bytes | bytearray | memoryview | None, max_bytes: int, model: type[M]) -> M:
    if raw is None or len(raw) == 0:
        raise InvalidMessage("not_json", "empty value")
    if len(raw) > max_bytes:
        raise InvalidMessage("too_large", f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        doc = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage("not_utf8", f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
    if doc.startswith("\ufeff"):
        doc = doc[1:]
    try:
        obj = json.loads(doc)
    except json.JSONDecodeError as exc:
        raise InvalidMessage("not_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidMessage("not_json", "nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("not_object", f"expected a JSON object, got {_json_type(obj)}")
    try:
        msg = model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidMessage("schema", _explain(exc)) from None
    if "\\u" in doc:  # only a \uD800-style escape can smuggle in a lone surrogate
        for name in type(msg).model_fields:
            value = getattr(msg, name)
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    reason = f"{name}: unpaired surrogate escape, not valid Unicode"
                    raise InvalidMessage("not_utf8", reason) from None
    return msg


def decode_message(raw: bytes | None, max_bytes: int) -> ChatMessage:
    """Raw Kafka value -> :class:`ChatMessage`, or :class:`InvalidMessage` saying why not."""
    return _decode(raw, max_bytes, ChatMessage)


def decode_feedback(raw: bytes | None, max_bytes: int) -> Feedback:
    """Raw Kafka value -> :class:`Feedback`, or :class:`InvalidMessage` saying why not."""
    return _decode(raw, max_bytes, Feedback)


def json_schemas() -> dict[str, dict]:
    """The JSON Schema of each topic's records, by topic name (``docs/schemas/<topic>.json``)."""
    topics = {"chat.messages.v1": (ChatMessage, "validation"), "chat.moderated.v1": (ModerationResult, "serialization"),
              "chat.feedback.v1": (Feedback, "validation")}
    out = {}
    for topic, (model, mode) in topics.items():
        schema = model.model_json_schema(mode=mode)
        out[topic] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"chatmod/{topic}.json",
                      **schema}
    moderated = out["chat.moderated.v1"]
    out["chat.flagged.v1"] = {
        **moderated, "$id": "chatmod/chat.flagged.v1.json",
        "description": "The results of chat.moderated.v1 whose decision is review or block, with the message's "
                       "text, for moderators.",
        "properties": {**moderated["properties"],
                       "text": {"type": "string", "title": "Text", "description": "The message's text as sent."}},
        "required": [*moderated.get("required", []), "text"]}
    return out
