"""The feedback store: moderators' verdicts, kept for retraining.

A folder of JSON-lines files partitioned by day: ``<store>/<YYYY-MM-DD>/<writer>.jsonl``, where the day is
the verdict's own ``ts`` (UTC) and every worker process appends only to its own file. Why files rather
than a database table: the only reader is the retrain job, which wants all of it at once; append-only
lines need no server, survive a crash (a torn last line is skipped on read), are easy to ship to a
trainer (a shared volume, or a sync to object storage) and to inspect, and a day is a natural unit to
expire or archive. Deduplication happens on read: one verdict per message id, the latest ``ts`` wins
(ties: the one appended last), so re-delivered Kafka records and changed minds are both handled.

Texts are stored because training needs them; they never go to logs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.schemas import Feedback

log = logging.getLogger("chatmod.feedback")


@dataclass(frozen=True)
class StoredFeedback:
    feedback: Feedback
    received_at: float  # epoch seconds, when this store appended it

    @property
    def when(self) -> datetime:
        return _parse_ts(self.feedback.ts)


def _parse_ts(ts: str) -> datetime:
    value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class FeedbackStore:
    """Append verdicts (one writer per process) and read them back deduplicated."""

    def __init__(self, root: Path, writer: str | None = None):
        self.root = Path(root)
        self.writer = writer or f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
        self._lock = threading.Lock()

    def append(self, items: Iterable[Feedback]) -> int:
        """Append and fsync; returns how many were written. Safe to call again with the same items."""
        by_day: dict[str, list[str]] = {}
        now = time.time()
        for fb in items:
            day = _parse_ts(fb.ts).astimezone(UTC).date().isoformat()
            line = json.dumps({**fb.model_dump(mode="json"), "received_at": now}, ensure_ascii=False)
            by_day.setdefault(day, []).append(line)
        with self._lock:
            for day, lines in by_day.items():
                folder = self.root / day
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / f"{self.writer}.jsonl", "a", encoding="utf-8") as fh:
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
        return sum(len(v) for v in by_day.values())

    def _records(self) -> Iterator[StoredFeedback]:
        for path in sorted(self.root.glob("*/*.jsonl")):
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                        received_at = float(data.pop("received_at", 0.0))
                        yield StoredFeedback(Feedback.model_validate(data), received_at)
                    except (ValueError, TypeError) as exc:  # a torn line after a crash, or a hand edit
                        log.warning("skipped an unreadable feedback line",
                                    extra={"file": str(path), "line": number, "error": type(exc).__name__})

    def read(self) -> list[StoredFeedback]:
        """One verdict per message id (the latest), oldest first."""
        latest: dict[str, StoredFeedback] = {}
        for record in self._records():
            current = latest.get(record.feedback.id)
            if current is None or (record.when, record.received_at) >= (current.when, current.received_at):
                latest[record.feedback.id] = record
        return sorted(latest.values(), key=lambda r: (r.when, r.received_at))

    def __len__(self) -> int:
        return len(self.read())
