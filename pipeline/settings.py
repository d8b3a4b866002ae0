"""All worker configuration, in one tree, read once: ``settings = Settings()``.

Environment variables are ``CHATMOD_<GROUP>_<FIELD>`` (case-insensitive), e.g.
``CHATMOD_KAFKA_BOOTSTRAP=broker:9092``, ``CHATMOD_REDIS_URL=rediss://cache:6380/0``,
``CHATMOD_BATCHING_MAX_BATCH=32``, ``CHATMOD_KAFKA_SASL_PASSWORD=...``. The first ``_`` after the
prefix separates the group from the field (``env_nested_max_split=1``), so field names keep their
underscores; this is why no group name may contain one. Dicts and lists take JSON
(``CHATMOD_POLICY_THRESHOLDS='{"insult": 0.7}'``); ``CHATMOD_MODELS_TASKS`` also takes
``toxicity,sentiment``. A whole group may be given as JSON (``CHATMOD_BATCHING='{"max_batch": 8}'``),
with per-field variables taking precedence. Unknown fields in a group (typos such as
``CHATMOD_BATCHING_MAX_BATCHES``) are errors, not silently ignored.

Secrets are ``SecretStr`` and a password inside ``redis.url`` is masked in ``repr`` and JSON; validation
errors never echo input values. Use :meth:`Settings.redacted` to display the configuration.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.labels import DECIDING_LABELS, Task

ENV_PREFIX = "CHATMOD_"
SECRET_MASK = "**********"
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def env_name(group: str, field: str) -> str:
    """The environment variable that sets ``group.field``, for error messages and docs."""
    return f"{ENV_PREFIX}{group}_{field}".upper()


def mask_url_password(url: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:**********@host/0``; other URLs unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:{SECRET_MASK}"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _parse_json(value: Any, env: str, example: str) -> Any:
    """JSON-decode a string from the environment with an error that names the variable."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{env} must be JSON like {example}: {exc.msg} at column {exc.colno}") from None


class _Group(BaseModel):
    """Base for settings groups: typos are errors, and errors never echo values (secrets)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)


class KafkaSettings(_Group):
    """Broker connection and consumer group."""

    bootstrap: str = "127.0.0.1:9092"
    client_id: str = "chatmod"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    session_timeout_s: float = Field(30.0, gt=0)
    heartbeat_interval_s: float = Field(3.0, gt=0)
    consumer_group: str = Field("chatmod-moderation", min_length=1)
    # Longest a fetch may wait for data. Faust hard-codes 1500 ms; brokers that hold a fetch for the
    # whole wait (tansu does) then add up to that much latency to every message (bench, 100 msgs/s on
    # tansu: p50 52 -> 32 ms going from 100 to 20). Kafka answers as soon as there is data, so on Kafka
    # this only sets how often an idle consumer asks: 50 small requests a second.
    fetch_max_wait_ms: int = Field(20, ge=1, le=10000)
    # How long the worker's producer waits to fill a request (Faust's producer_linger; 5 ms is Kafka's own
    # producer default since 4.0, KIP-1030). Under light load a batch's results otherwise go out in many small
    # requests, and a broker pays per request: on tansu, 0 -> 5 ms took the broker's CPU per message at
    # 150-225 msgs/s from 2.3-2.7 to 2.0-2.3 ms and the p99-bounded capacity from 225 to 281 msgs/s
    # (bench, one run each). 0 sends at once.
    producer_linger_ms: float = Field(5.0, ge=0.0, le=1000.0)

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts or any(":" not in h for h in hosts):
            raise ValueError(f"{env_name('kafka', 'bootstrap')} must be host:port[,host:port...]")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be < session_timeout_s "
                f"({self.session_timeout_s}); a third of it is usual. "
                f"Set {env_name('kafka', 'heartbeat_interval_s')} or {env_name('kafka', 'session_timeout_s')}"
            )
        if self.security_protocol.startswith("SASL"):
            missing = [
                env_name("kafka", f)
                for f in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        if not self.security_protocol.endswith("SSL"):
            tls_files = [f for f in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, f)]
            if tls_files:
                raise ValueError(
                    f"{', '.join(tls_files)} set but security_protocol is {self.security_protocol}; "
                    f"set {env_name('kafka', 'security_protocol')}=SSL or SASL_SSL"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")
        return self


class TopicsSettings(_Group):
    """Topic names (they carry a schema version) and how new topics are created."""

    messages: str = "chat.messages.v1"
    moderated: str = "chat.moderated.v1"
    flagged: str = "chat.flagged.v1"
    dlq: str = "chat.messages.dlq.v1"
    feedback: str = "chat.feedback.v1"
    actions: str = "chat.actions.v1"  # enforcement actions (key: user) and raid events (key: channel)
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TopicsSettings:
        fields = ("messages", "moderated", "flagged", "dlq", "feedback", "actions")
        names = {f: getattr(self, f) for f in fields}
        for field, name in names.items():
            if not _TOPIC_NAME.match(name):
                raise ValueError(
                    f"{env_name('topics', field)}={name!r} is not a Kafka topic name "
                    "(1-249 of letters, digits, '.', '_', '-')"
                )
        seen: dict[str, str] = {}
        for field, name in names.items():
            if name in seen:
                # e.g. dlq == messages would feed rejected records straight back in.
                raise ValueError(
                    f"topics.{field} and topics.{seen[name]} are both {name!r}; each needs its own"
                )
            seen[name] = field
        return self


class RedisSettings(_Group):
    """Result cache. ``url`` may be ``redis://``, ``rediss://`` (TLS) or ``unix://``."""

    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    ttl_s: int = Field(86400, ge=1)
    key_prefix: str = "chatmod"
    socket_timeout_s: float = Field(0.5, gt=0)
    retry_interval_s: float = Field(2.0, gt=0)
    max_connections: int = Field(8, ge=1)
    ssl_cafile: Path | None = None
    enabled: bool = True

    def credential_kwargs(self) -> dict[str, str]:
        """Password and TLS CA for any redis-py client built from these settings."""
        out = {}
        if self.password is not None:
            out["password"] = self.password.get_secret_value()
        if self.ssl_cafile is not None:
            out["ssl_ca_certs"] = str(self.ssl_cafile)
        return out

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{env_name('redis', 'url')} must start with redis://, rediss:// or unix://, "
                f"got {scheme or 'no'} scheme"
            )
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"{env_name('redis', 'key_prefix')} must be non-empty without whitespace")
        return value

    @model_validator(mode="after")
    def _check(self) -> RedisSettings:
        if self.ssl_cafile is not None and urlsplit(self.url).scheme != "rediss":
            raise ValueError(
                f"{env_name('redis', 'ssl_cafile')} is set but "
                f"{env_name('redis', 'url')} is not rediss:// (TLS)"
            )
        return self

    @field_serializer("url", when_used="json")
    def _mask_url(self, value: str) -> str:  # like SecretStr: JSON output never carries the password
        return mask_url_password(value)

    def __repr_args__(self):  # keep a password in the URL out of repr/str/logs
        for name, value in super().__repr_args__():
            yield name, (mask_url_password(value) if name == "url" else value)


class BatchingSettings(_Group):
    """Micro-batching and the bounds on every buffer and input."""

    max_batch: int = Field(128, ge=1)  # records per micro-batch; more sort into less padding (bench: 64 -> 128 = +15%)
    # Longest a message waits for company when the model is idle. Bigger batches cost less CPU per message
    # at moderate loads, where per-call and per-request costs dominate: 5 -> 25 ms raised the capacity at p99
    # <= 150 ms from 371 and 370 to 435 and 473 msgs/s (two bench pairs, Zen 4 EPYC), at +10-20 ms of p50
    # and p99 under light load (p99 43 -> 64 ms at 90 msgs/s).
    max_wait_ms: float = Field(25.0, gt=0)
    max_text_chars: int = Field(2000, ge=1)  # longer texts are truncated for the model, never rejected
    max_message_bytes: int = Field(65536, ge=1)  # bigger raw values go to the DLQ
    stream_buffer_maxsize: int = Field(4096, ge=1)  # Faust's per-topic buffer, before the batcher's own
    max_inflight_batches: int = Field(2, ge=1)  # one in the model, the rest publishing and writing the cache
    dlq_max_per_s: float = Field(1000.0, gt=0)


class ModelsSettings(_Group):
    """Where the model registry lives and how models run."""

    store: Path = Path("model-store")
    backend: Literal["auto", "onnx", "torch"] = "auto"
    threads: int | None = Field(None, ge=1)
    # ONNX Runtime's threads spin between the operators of a forward pass (never between passes): 8% more
    # int8 throughput on 2 cores. Off parks them after every operator, for boxes running more model
    # threads than cores.
    spin: bool = True
    # Re-read the registry this often (0: only on control notices); covers notices missed while Redis was away.
    reload_poll_s: float = Field(30.0, ge=0)
    # A candidate ("name@version") run beside the current models on live traffic; its results only feed
    # the chatmod_shadow_* metrics (agreement, score drift), never a decision.
    shadow: str | None = None
    # Undo spelling tricks ("k y s", "1d10t", "f*ck", look-alike letters) before the model reads a text;
    # a result whose decision changed because of it carries the flag "evasion" (models/deobfuscate.py).
    deobfuscate: bool = True
    # The words that drove a decision, as character spans of the message (models/explain.py): "lexicon"
    # (the best word-level F1, at no model cost), "hybrid" (also occlusion for a flagged text the lexicon
    # cannot explain: more flagged results explained, at a model call per word of those), "occlusion", "off".
    explain: Literal["hybrid", "lexicon", "occlusion", "off"] = "lexicon"
    tasks: Annotated[list[Task], NoDecode] = Field(default_factory=lambda: [Task.TOXICITY, Task.SENTIMENT])

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return _parse_json(value, env_name("models", "tasks"), '["toxicity", "sentiment"]')
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, value: list[Task]) -> list[Task]:
        if not value:
            raise ValueError(f"{env_name('models', 'tasks')} needs at least one of {[t.value for t in Task]}")
        if len(set(value)) != len(value):
            raise ValueError(f"{env_name('models', 'tasks')} lists a task twice: {[t.value for t in value]}")
        return value


class PolicySettings(_Group):
    """Overrides of the thresholds shipped in the model manifest (toxicity labels only)."""

    thresholds: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    block_thresholds: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    default_threshold: float = Field(0.5, ge=0.0, le=1.0)
    default_block_threshold: float = Field(0.9, ge=0.0, le=1.0)
    # Policy profiles (pipeline/profiles.py) are re-read from Redis when changed: on a control notice, and
    # at the latest this often (0: notices only).
    profiles_poll_s: float = Field(5.0, ge=0)
    # A profile file (YAML or JSON) used as the "default" profile while Redis holds none of that name: a
    # deployment's baseline rules from a ConfigMap. Validated at start: a bad file stops the worker.
    default_profile: Path | None = None

    @field_validator("thresholds", "block_thresholds", mode="before")
    @classmethod
    def _decode(cls, value: Any, info) -> Any:
        return _parse_json(value, env_name("policy", info.field_name), '{"insult": 0.7}')

    @field_validator("thresholds", "block_thresholds")
    @classmethod
    def _check_table(cls, value: dict[str, float], info) -> dict[str, float]:
        env = env_name("policy", info.field_name)
        unknown = sorted(set(value) - set(DECIDING_LABELS))
        if unknown:  # signals (``targeted``) decide nothing, so they take no threshold
            raise ValueError(f"{env}: unknown labels {unknown}; valid labels are {list(DECIDING_LABELS)}")
        bad = sorted(k for k, v in value.items() if not 0.0 <= v <= 1.0)
        if bad:
            raise ValueError(f"{env}: thresholds must lie in [0, 1]; out of range for {bad}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PolicySettings:
        if self.default_block_threshold < self.default_threshold:
            raise ValueError(
                f"default_block_threshold ({self.default_block_threshold}) must be >= "
                f"default_threshold ({self.default_threshold})"
            )
        return self


class FeedbackSettings(_Group):
    """Moderator verdicts from the feedback topic, appended to a store that retraining reads."""

    enabled: bool = True
    store: Path = Path("feedback-store")  # a folder shared with the trainer (see pipeline/feedback.py)
    max_batch: int = Field(256, ge=1)


class WorkerSettings(_Group):
    """The Faust worker process: web server (health, metrics), logging, shutdown."""

    web_enabled: bool = True
    web_port: int = Field(6066, ge=1, le=65535)
    web_host: str = "127.0.0.1"  # bind address; containers set 0.0.0.0
    datadir: Path | None = None  # Faust's local state folder; default: a folder in the temp dir
    shutdown_grace_s: float = Field(20.0, gt=0)  # after SIGTERM, the process ends at the latest after this
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Kafka client and Faust internals (aiokafka, kafka, faust, mode): at debug they log every fetch and
    # send, tens of thousands of lines a minute, which is rarely what "debug the worker" means.
    library_log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_json: bool = True
    # Allocations (net of frees) between youngest-generation collections; 0 keeps Python's 700. A batch of
    # 128 messages holds a few thousand objects at once, so 700 scanned them ~150 times per 12,800 cached
    # messages, for nothing: they die by reference counting (pipeline.agents.settle_heap).
    gc_threshold: int = Field(10_000, ge=0)

    @field_validator("log_level", "library_log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class ConsoleSettings(_Group):
    """``chatmod console``: the moderators' web application (see pipeline/console)."""

    host: str = "127.0.0.1"  # bind address: put it behind a TLS proxy before opening it wider
    port: int = Field(8088, ge=1, le=65535)
    secure_cookies: bool = False  # set true behind TLS: session cookies then travel over HTTPS only
    session_ttl_s: int = Field(8 * 3600, ge=60)
    claim_ttl_s: int = Field(300, ge=10)  # a claimed item returns to the queue if not decided in time
    login_max_failures: int = Field(5, ge=1)  # per user name and per client address, in the window
    login_window_s: int = Field(300, ge=1)
    consumer_group: str = Field("chatmod-console", min_length=1)
    queue_limit: int = Field(500, ge=1)  # items shown at once (the most severe first)


class Settings(BaseSettings):
    """The whole configuration. Build it once at the entry point and pass it down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,  # CHATMOD_KAFKA_SASL_PASSWORD -> kafka.sasl_password
        case_sensitive=False,
        extra="forbid",
        hide_input_in_errors=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicsSettings = Field(default_factory=TopicsSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    def redacted(self) -> dict[str, Any]:
        """JSON-safe dict for display and logs: secrets as ``**********``, URL passwords masked."""
        return self.model_dump(mode="json")  # SecretStr and redis.url mask themselves in json mode
