"""Structured logging: JSON lines (or key=value text) on stderr, and no chat text above debug.

Log calls pass context as fields: ``log.warning("redis down", extra={"event": "cache_down"})``.
Message text is personal data: log ``redact(text)`` instead. As a guard, fields whose name says they
hold content (``text``, ``raw``, ``value``, ...) are replaced by their redacted form in any record
above DEBUG, whoever logs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

CONTENT_FIELDS = frozenset({"text", "texts", "raw", "value", "body", "content", "message_text"})
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}


def redact(text: str | bytes | None) -> str:
    """``<text len=42 sha=ab12cd34>``: enough to correlate log lines, nothing of the content."""
    if text is None:
        return "<text none>"
    if isinstance(text, bytes | bytearray):
        data, length = bytes(text), len(text)
    else:
        text = str(text)
        data, length = text.encode("utf-8", "surrogatepass"), len(text)
    return f"<text len={length} sha={hashlib.sha256(data).hexdigest()[:8]}>"


def _redacted(value: Any) -> Any:
    if isinstance(value, str | bytes | bytearray):
        return redact(value)
    if isinstance(value, list | tuple):
        return [redact(v) if isinstance(v, str | bytes | bytearray) else v for v in value]
    return value  # numbers, None: no content to hide


class ContentGuard(logging.Filter):
    """Replace content-bearing ``extra`` fields with :func:`redact` in records above DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            for name in CONTENT_FIELDS & record.__dict__.keys():
                setattr(record, name, _redacted(record.__dict__[name]))
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the ``extra`` fields (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)  # extras cannot overwrite the four core keys
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable: ``ts level logger: msg key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in _fields(record).items()
        )
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class _ChatmodHandler(logging.StreamHandler):
    """The handler we install (tests remove it by its class)."""


LIBRARY_LOGGERS = ("aiokafka", "kafka", "faust", "mode")


def logging_dict_config(level: str, json_lines: bool, library_level: str = "info") -> dict:
    """dictConfig for the worker (Faust), the console (uvicorn) and :func:`configure_logging`: our formatter and
    the content guard on the root logger; the Kafka client's and Faust's own loggers at ``library_level`` (or
    ``level``, where that is less verbose)."""
    for name in (level, library_level):
        if name.lower() not in _LEVELS:
            raise ValueError(f"unknown log level {name!r}; expected one of {list(_LEVELS)}")
    quieter = max(_LEVELS[level.lower()], _LEVELS[library_level.lower()])
    formatter = "pipeline.logging.JsonFormatter" if json_lines else "pipeline.logging.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"guard": {"()": "pipeline.logging.ContentGuard"}},
        "formatters": {"chatmod": {"()": formatter}},
        "handlers": {"stderr": {"class": "pipeline.logging._ChatmodHandler", "formatter": "chatmod",
                                "filters": ["guard"], "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"level": logging.getLevelName(quieter)} for name in LIBRARY_LOGGERS},
    }


def configure_logging(level: str = "info", json: bool = True, library_level: str = "info") -> None:
    """Apply :func:`logging_dict_config` in this process: the worker's own logging, for tools and tests."""
    logging.config.dictConfig(logging_dict_config(level, json, library_level))
