"""What `chatmod demo` has seen, and how it is shown: a live table on a terminal, plain lines elsewhere.

``Tally`` is written by the demo's producer loop and its result-reader thread and read by the views,
always under its lock. Message text appears on screen (it is the user's own sample chat); it is never
logged.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from models.bench import percentile

RECENT_ROWS = 15
PLAIN_EVERY_S = 2.0
DECISION_STYLE = {"allow": "green", "review": "yellow", "block": "bold red"}


@dataclass(frozen=True)
class ChatLine:
    """One line of the sample chat."""

    user: str
    channel: str
    text: str


@dataclass
class Tally:
    """Counters and the latest decisions. ``total`` chat messages and ``malformed_total`` bad records
    are to be sent; results are keyed by message id, so a redelivered result is counted once."""

    total: int
    malformed_total: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, tuple[ChatLine, float]] = field(default_factory=dict)  # id -> (line, monotonic send time)
    malformed_sent: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    dead_letters: list[bytes] = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_ROWS))
    decisions: Counter = field(default_factory=Counter)
    cache_hits: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # the worker's own latency_ms
    e2e_ms: list[float] = field(default_factory=list)  # produce -> result read back, as seen here
    first_send: float | None = None
    last_result: float | None = None
    term_hits: int = 0  # results a profile's term list decided
    profiles: Counter = field(default_factory=Counter)  # profile ref -> results it decided
    ladder: list[tuple[str, str, dict]] = field(default_factory=list)  # (user, channel, action) as reached

    def on_sent(self, msg_id: str, line: ChatLine, now: float) -> None:
        with self.lock:
            self.sent[msg_id] = (line, now)
            if self.first_send is None:
                self.first_send = now

    def on_malformed_sent(self, now: float) -> None:
        with self.lock:
            self.malformed_sent += 1
            if self.first_send is None:
                self.first_send = now

    def on_result(self, result: dict[str, Any], now: float) -> None:
        msg_id = str(result.get("id"))
        with self.lock:
            if msg_id in self.results:
                self.duplicates += 1  # at-least-once: a redelivery republishes the same result
                return
            self.results[msg_id] = result
            self.decisions[result.get("decision", "?")] += 1
            self.cache_hits += bool(result.get("cached"))
            self.latencies_ms.append(float(result.get("latency_ms", 0.0)))
            sent = self.sent.get(msg_id)
            if sent is not None:
                self.e2e_ms.append((now - sent[1]) * 1000.0)
            self.recent.append(result)
            self.last_result = now
            self.term_hits += "term" in (result.get("flags") or [])
            if result.get("profile"):
                self.profiles[result["profile"]] += 1
            for action in result.get("actions") or []:
                self.ladder.append((str(result.get("user")), str(result.get("channel")), action))

    def on_dead_letter(self, value: bytes) -> None:
        with self.lock:
            self.dead_letters.append(value)

    @property
    def flagged(self) -> int:
        return self.decisions["review"] + self.decisions["block"]

    @property
    def lost(self) -> int:
        return len(self.sent) - len(set(self.sent) & set(self.results))

    def complete(self) -> bool:
        """Every chat message sent has a result and every bad record reached the DLQ."""
        with self.lock:
            return (len(self.sent) == self.total and self.lost == 0
                    and len(self.dead_letters) >= self.malformed_total)

    def throughput(self) -> float:
        """Results per second from the first record produced to the last result read."""
        if self.first_send is None or self.last_result is None or self.last_result <= self.first_send:
            return 0.0
        return len(self.results) / (self.last_result - self.first_send)


def _p50_p99(values: list[float]) -> str:
    """Both percentiles as the bench computes them (:func:`models.bench.percentile`); "-" for no values."""
    return f"{percentile(values, 50):.0f} / {percentile(values, 99):.0f}" if values else "-"


def _top(scores: dict[str, float]) -> tuple[str, float]:
    return max(scores.items(), key=lambda kv: kv[1]) if scores else ("-", 0.0)


def _counters(tally: Tally) -> Text:
    line = Text()
    for label, value in (
        ("in", f"{len(tally.sent)}/{tally.total}"),
        ("out", str(len(tally.results))),
        ("flagged", str(tally.flagged)),
        ("cache hits", str(tally.cache_hits)),
        ("dead letters", f"{len(tally.dead_letters)}/{tally.malformed_total}"),
        ("throughput", f"{tally.throughput():.1f} msgs/s"),
    ):
        line.append(f"{label} ", style="dim").append(value, style="bold").append("   ")
    return line


def render_live(tally: Tally) -> RenderableType:
    """The latest decisions and the running counters."""
    table = Table(title="chatmod demo: latest decisions", expand=True, title_justify="left")
    table.add_column("user", style="cyan", no_wrap=True, max_width=14)
    table.add_column("channel", style="magenta", no_wrap=True, max_width=14)
    table.add_column("message", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("decision", no_wrap=True)
    table.add_column("toxicity", no_wrap=True)
    table.add_column("sentiment", no_wrap=True)
    table.add_column("cached", justify="center")
    table.add_column("ms", justify="right")
    with tally.lock:
        rows = list(tally.recent)
        texts = {r["id"]: tally.sent[r["id"]][0].text for r in rows if r.get("id") in tally.sent}
        counters = _counters(tally)
    for r in rows:
        decision = r.get("decision", "?")
        label, score = _top(r.get("toxicity", {}))
        sentiment, _ = _top(r.get("sentiment", {}))
        table.add_row(
            r.get("user") or "-", r.get("channel") or "-",
            Text(texts.get(r.get("id"), "")),  # Text, not markup: chat may contain [brackets]
            Text(decision, style=DECISION_STYLE.get(decision, "")),
            f"{label} {score:.2f}", sentiment,
            "✓" if r.get("cached") else "", f"{float(r.get('latency_ms', 0.0)):.0f}",
        )
    return Group(table, counters)


class LiveView:
    """A rich ``Live`` view refreshed four times a second from the tally."""

    def __init__(self, console: Console, tally: Tally):
        self._live = Live(get_renderable=lambda: render_live(tally), console=console, refresh_per_second=4)

    def tick(self) -> None:
        """Nothing to do: ``Live`` refreshes itself on its own thread."""

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._live.__exit__(*exc_info)


class PlainView:
    """One progress line every couple of seconds, for CI logs and pipes (no message text)."""

    def __init__(self, console: Console, tally: Tally):
        self.console, self.tally, self._last = console, tally, 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY_S:
            self._last = now
            self._print()

    def _print(self) -> None:
        with self.tally.lock:
            line = _counters(self.tally).plain.rstrip()
        self.console.print(line, highlight=False, soft_wrap=True)

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._print()


def render_summary(tally: Tally) -> Table:
    """The end-of-run table: counts, losses, cache, decisions, throughput and latency."""
    with tally.lock:
        lost = tally.lost
        dlq = len(tally.dead_letters)
        decisions = " · ".join(f"{k} {tally.decisions[k]}" for k in ("allow", "review", "block"))
        others = sorted(set(tally.decisions) - {"allow", "review", "block"})
        decisions += "".join(f" · {k} {tally.decisions[k]}" for k in others)
        e2e = _p50_p99(tally.e2e_ms)
        rows = [
            ("messages in", str(len(tally.sent)), ""),
            ("results out", str(len(tally.results)), ""),
            ("lost", str(lost), "green" if lost == 0 else "bold red"),
            ("dead letters", f"{dlq} of {tally.malformed_sent} malformed",
             "green" if dlq == tally.malformed_sent else "bold red"),
            ("cache hits", f"{tally.cache_hits} ({tally.cache_hits / max(1, len(tally.results)):.0%})", ""),
            ("flagged (review + block)", str(tally.flagged), ""),
            ("decisions", decisions, ""),
            ("throughput", f"{tally.throughput():.1f} msgs/s", ""),
            ("latency_ms p50 / p99", _p50_p99(tally.latencies_ms), ""),
            ("end-to-end ms p50 / p99", e2e, ""),
        ]
        custom = sorted(ref for ref in tally.profiles if not ref.startswith("default@"))
        if custom:
            rows.append(("policy profiles", ", ".join(f"{ref} ({tally.profiles[ref]} results)" for ref in custom), ""))
            rows.append(("term-list hits", str(tally.term_hits), ""))
        by_user: dict[str, list[str]] = {}
        for user, _, action in tally.ladder:
            step = action["action"] + (f" {action['minutes']} min" if action.get("minutes") else "")
            by_user.setdefault(user, []).append(f"{step} ({action['strikes']:.1f})")
        for user, steps in sorted(by_user.items(), key=lambda kv: -len(kv[1]))[:2]:
            rows.append((f"strike ladder: {user}", " → ".join(steps), "yellow"))
        if tally.duplicates:  # at-least-once delivery: harmless, but worth seeing
            rows.insert(2, ("duplicate results", str(tally.duplicates), ""))
    table = Table(title="chatmod demo: summary", title_justify="left", show_header=False,
                  caption="throughput: first record produced to last result read; latency_ms: as the worker "
                          "measured it; end-to-end: produced to read back here", caption_justify="left")
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for what, value, style in rows:
        table.add_row(what, Text(value, style=style))
    return table
