"""Settings come from CHATMOD_* variables with the documented names, validate helpfully, and keep secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.labels import Task
from pipeline.settings import Settings, env_name, mask_url_password

pytestmark = pytest.mark.unit

SECRET = "hunter2-do-not-print"


def test_defaults_without_environment():
    s = Settings()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.topics.messages == "chat.messages.v1" and s.topics.dlq == "chat.messages.dlq.v1"
    assert s.batching.max_batch == 128 and s.batching.max_wait_ms == 25
    assert s.models.store == Path("model-store") and s.models.tasks == [Task.TOXICITY, Task.SENTIMENT]
    assert s.policy.default_threshold == 0.5 and s.policy.default_block_threshold == 0.9
    assert s.worker.web_port == 6066 and s.worker.log_json is True


def test_documented_variable_names(monkeypatch):
    monkeypatch.setenv("CHATMOD_KAFKA_BOOTSTRAP", "broker-1:9092, broker-2:9092")
    monkeypatch.setenv("CHATMOD_REDIS_URL", "rediss://cache.internal:6380/2")
    monkeypatch.setenv("CHATMOD_BATCHING_MAX_BATCH", "32")
    monkeypatch.setenv("CHATMOD_BATCHING_MAX_WAIT_MS", "10")
    monkeypatch.setenv("CHATMOD_POLICY_THRESHOLDS", '{"insult": 0.7}')
    monkeypatch.setenv("CHATMOD_POLICY_BLOCK_THRESHOLDS", '{"threat": 0.8}')
    monkeypatch.setenv("CHATMOD_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("CHATMOD_KAFKA_SESSION_TIMEOUT_S", "45")
    monkeypatch.setenv("CHATMOD_TOPICS_MESSAGES", "chat.messages.v2")
    monkeypatch.setenv("chatmod_worker_log_level", "DEBUG")  # names are case-insensitive
    s = Settings()
    assert s.kafka.bootstrap == "broker-1:9092,broker-2:9092"
    assert s.redis.url == "rediss://cache.internal:6380/2"
    assert s.batching.max_batch == 32 and s.batching.max_wait_ms == 10
    assert s.policy.thresholds == {"insult": 0.7} and s.policy.block_thresholds == {"threat": 0.8}
    assert s.kafka.sasl_password.get_secret_value() == SECRET
    assert s.kafka.session_timeout_s == 45
    assert s.topics.messages == "chat.messages.v2"
    assert s.worker.log_level == "debug"


@pytest.mark.parametrize("value", ["toxicity", '["toxicity"]', " toxicity , "])
def test_model_tasks_as_list_or_json(monkeypatch, value):
    monkeypatch.setenv("CHATMOD_MODELS_TASKS", value)
    assert Settings().models.tasks == [Task.TOXICITY]


def test_whole_group_as_json_with_field_override(monkeypatch):
    monkeypatch.setenv("CHATMOD_BATCHING", '{"max_batch": 8, "max_wait_ms": 5}')
    monkeypatch.setenv("CHATMOD_BATCHING_MAX_BATCH", "16")
    s = Settings()
    assert (s.batching.max_batch, s.batching.max_wait_ms) == (16, 5)


def test_secrets_never_shown(monkeypatch):
    monkeypatch.setenv("CHATMOD_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("CHATMOD_REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("CHATMOD_REDIS_URL", f"redis://app:{SECRET}@cache:6379/0")
    s = Settings()
    shown = [repr(s), str(s), repr(s.redis), str(s.kafka), json.dumps(s.redacted()), s.model_dump_json()]
    for text in shown:
        assert SECRET not in text
    red = s.redacted()
    assert red["kafka"]["sasl_password"] == "**********"
    assert red["redis"]["password"] == "**********"
    assert red["redis"]["url"] == "redis://app:**********@cache:6379/0"
    assert s.redis.password.get_secret_value() == SECRET  # still usable by the code that needs it


def test_validation_errors_do_not_echo_secrets(monkeypatch):
    monkeypatch.setenv("CHATMOD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CHATMOD_KAFKA_SASL_PASSWORD", SECRET)
    with pytest.raises(ValidationError) as err:
        Settings()
    message = str(err.value)
    assert SECRET not in message
    assert "CHATMOD_KAFKA_SASL_MECHANISM" in message and "CHATMOD_KAFKA_SASL_USERNAME" in message


def test_mask_url_password_keeps_everything_else():
    assert mask_url_password("redis://:pw@[::1]:6379/3?x=1") == "redis://:**********@[::1]:6379/3?x=1"
    assert mask_url_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHATMOD_KAFKA_HEARTBEAT_INTERVAL_S": "30"}, "must be < session_timeout_s"),
        ({"CHATMOD_BATCHING_MAX_WAIT_MS": "0"}, "batching.max_wait_ms"),
        ({"CHATMOD_BATCHING_MAX_BATCH": "0"}, "batching.max_batch"),
        ({"CHATMOD_BATCHING_STREAM_BUFFER_MAXSIZE": "0"}, "batching.stream_buffer_maxsize"),
        ({"CHATMOD_POLICY_THRESHOLDS": '{"rude": 0.5}'}, "valid labels are ['toxic'"),
        ({"CHATMOD_POLICY_THRESHOLDS": '{"insult": 1.5}'}, "must lie in [0, 1]"),
        ({"CHATMOD_POLICY_THRESHOLDS": "{insult: 0.5}"}, "CHATMOD_POLICY_THRESHOLDS must be JSON"),
        ({"CHATMOD_POLICY_DEFAULT_BLOCK_THRESHOLD": "0.3"}, "must be >= default_threshold"),
        ({"CHATMOD_BATCHING_MAX_BATCHES": "8"}, "batching.max_batches"),  # a typo is an error
        ({"CHATMOD_TOPICS_DLQ": "chat.messages.v1"}, "both 'chat.messages.v1'"),
        ({"CHATMOD_TOPICS_MODERATED": "bad topic!"}, "is not a Kafka topic name"),
        ({"CHATMOD_REDIS_URL": "http://cache:6379"}, "must start with redis://"),
        ({"CHATMOD_KAFKA_SSL_CAFILE": "/ca.pem"}, "CHATMOD_KAFKA_SECURITY_PROTOCOL=SSL"),
        ({"CHATMOD_KAFKA_BOOTSTRAP": "broker"}, "host:port"),
        ({"CHATMOD_MODELS_TASKS": "toxicity,spam"}, "models.tasks"),
        ({"CHATMOD_WORKER_LOG_LEVEL": "loud"}, "worker.log_level"),
    ],
)
def test_invalid_settings_say_what_to_fix(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert expected in str(err.value)


def test_env_name_helper():
    assert env_name("kafka", "sasl_password") == "CHATMOD_KAFKA_SASL_PASSWORD"


@pytest.fixture(autouse=True)
def clean_chatmod_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here sees configuration from the shell that runs it."""
    for name in list(os.environ):
        if name.upper().startswith("CHATMOD_"):
            monkeypatch.delenv(name)
