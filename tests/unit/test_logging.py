"""Logs are JSON lines with context fields, and chat text stays out of them above debug."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.logging import _ChatmodHandler, configure_logging, redact

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, _ChatmodHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def test_json_lines_with_extra_fields(capsys, restore_root_logger):
    configure_logging("info", json=True)
    configure_logging("info", json=True)  # idempotent: still one line per record
    logging.getLogger("chatmod.test").warning("batch slow %d", 3, extra={"event": "slow_batch", "size": 64})
    logging.getLogger("chatmod.test").debug("not shown")
    (line,) = _lines(capsys)
    assert line["level"] == "warning" and line["logger"] == "chatmod.test" and line["msg"] == "batch slow 3"
    assert line["event"] == "slow_batch" and line["size"] == 64 and line["ts"].endswith("Z")


def test_text_content_redacted_above_debug(capsys, restore_root_logger):
    configure_logging("debug", json=True)
    log = logging.getLogger("chatmod.test")
    log.info("classified", extra={"text": "you are an idiot", "texts": ["a secret", 3], "value": 0.5})
    log.debug("classified", extra={"text": "you are an idiot"})
    info, debug = _lines(capsys)
    assert "idiot" not in json.dumps(info)
    assert info["text"] == redact("you are an idiot") and info["texts"][0].startswith("<text len=8")
    assert info["value"] == 0.5  # numbers are not content
    assert debug["text"] == "you are an idiot"


def test_redact_shape():
    out = redact("hello world")
    assert out.startswith("<text len=11 sha=") and len(out.split("sha=")[1]) == 9 and "hello" not in out
    assert redact(b"\xff\x00").startswith("<text len=2 ")
    assert redact(None) == "<text none>"


def test_text_format_and_bad_level(capsys, restore_root_logger):
    configure_logging("WARNING", json=False)
    logging.getLogger("chatmod.test").error("down", extra={"event": "cache_down"})
    err = capsys.readouterr().err
    assert "ERROR" in err and "chatmod.test: down event='cache_down'" in err
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


def test_worker_debug_keeps_the_kafka_client_and_faust_at_their_own_level():
    """``CHATMOD_WORKER_LOG_LEVEL=debug`` is for chatmod's own loggers: aiokafka at debug writes a line per
    fetch and send (tens of thousands a minute), so library loggers follow ``library_log_level``."""
    from pipeline.logging import LIBRARY_LOGGERS, logging_dict_config

    config = logging_dict_config("debug", True)
    assert config["root"]["level"] == "DEBUG"
    assert {name: c["level"] for name, c in config["loggers"].items()} == dict.fromkeys(LIBRARY_LOGGERS, "INFO")
    assert config["loggers"]["aiokafka"]["level"] == "INFO"
    assert logging_dict_config("debug", True, "debug")["loggers"]["aiokafka"]["level"] == "DEBUG"
    # never more verbose than the worker's own level
    assert logging_dict_config("warning", True, "debug")["loggers"]["faust"]["level"] == "WARNING"
