"""The `chatmod` CLI as a user runs it: a subprocess, real arguments, real exit codes and output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.labels import SENTIMENT_LABELS, TOXICITY_LABELS
from pipeline.devstack.demo import MALFORMED
from pipeline.devstack.embedded import create_topics

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def chatmod(*args: str, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline.cli ARGS` from the project root with a clean CHATMOD_* environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATMOD_")}
    clean.update(env, PYTHONUNBUFFERED="1", COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=clean, text=True,
                          capture_output=True, timeout=timeout_s)


def summary_value(output: str, row: str) -> str:
    """The value cell of a row of the demo's summary table."""
    match = re.search(rf"│ {re.escape(row)}\s+│\s+(.+?)\s+│", output)
    assert match, f"no {row!r} row in the summary:\n{output}"
    return match.group(1)


def test_demo_replays_the_sample_loses_nothing_and_dead_letters_every_malformed_record(tiny_store):
    done = chatmod("demo", "--messages", "200", "--no-live", "--rate", "100", timeout_s=150,
                   CHATMOD_MODELS_STORE=str(tiny_store))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert summary_value(out, "messages in") == "200"
    assert summary_value(out, "results out") == "200"
    assert summary_value(out, "lost") == "0"
    assert summary_value(out, "dead letters") == f"{len(MALFORMED)} of {len(MALFORMED)} malformed"
    assert int(summary_value(out, "cache hits").split()[0]) > 0, "the sample repeats lines: some must hit"
    assert "✓ worker: joining the consumer group" in out  # start-up progress was shown
    login = re.search(r"moderator console: (http://127\.0\.0\.1:\d+)\S*\s+log in as demo / (\S+)", out)
    assert login, out  # the console's address and a demo login


def test_classify_prints_one_json_line_per_text(tiny_store):
    done = chatmod("classify", "hello there", "you are an idiot", CHATMOD_MODELS_STORE=str(tiny_store))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["hello there", "you are an idiot"]
    for line in lines:
        assert list(line["toxicity"]) == list(TOXICITY_LABELS)  # the tiny store is built to today's contract
        assert set(line["sentiment"]) == set(SENTIMENT_LABELS) and len(line["sentiment"]) == 3
        assert all(0.0 <= p <= 1.0 for p in [*line["toxicity"].values(), *line["sentiment"].values()])
        assert isinstance(line["flags"], list)
        assert line["decision"] in ("allow", "review", "block")


def test_classify_names_lines_that_are_not_utf8_and_classifies_every_line(tiny_store, tmp_path):
    chat = tmp_path / "export.txt"
    chat.write_bytes(b"gg wp\nbad \xff\xfe byte\n\nstill fine\n")
    done = chatmod("classify", "--file", str(chat), CHATMOD_MODELS_STORE=str(tiny_store))
    assert done.returncode == 0, done.stderr
    assert "line 2 not valid UTF-8" in done.stderr and "Traceback" not in done.stderr
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["gg wp", "bad \ufffd\ufffd byte",
                                                                                "still fine"]


def test_classify_reads_a_file_and_a_missing_file_is_a_usage_error(tiny_store, tmp_path):
    chat = tmp_path / "chat.txt"
    chat.write_text("gg wp\n\nnice shot 🔥\ncafé au lait\n", encoding="utf-8")
    done = chatmod("classify", "--file", str(chat), CHATMOD_MODELS_STORE=str(tiny_store))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["gg wp", "nice shot 🔥", "café au lait"]

    missing = chatmod("classify", "--file", str(tmp_path / "nope.txt"), CHATMOD_MODELS_STORE=str(tiny_store))
    assert missing.returncode == 2
    assert f"no such file: {tmp_path / 'nope.txt'}" in missing.stderr
    assert missing.stdout == ""


def test_produce_then_tail_round_trips_text_and_json_lines(broker, unique_name, tmp_path):
    topic = unique_name("chat.messages.v1")
    create_topics(broker.bootstrap, {topic: 1})  # one partition: tail returns them in order
    lines = tmp_path / "in.txt"
    lines.write_text('hello chat\n{"id": "j1", "text": "a json line", "channel": "c"}\nünïcödé 🎮\n',
                     encoding="utf-8")
    env = {"CHATMOD_KAFKA_BOOTSTRAP": broker.bootstrap}

    produced = chatmod("produce", str(lines), "--topic", topic, **env)
    assert produced.returncode == 0, produced.stderr
    assert json.loads(produced.stdout)["sent"] == 3

    tailed = chatmod("tail", topic, "--max", "3", "--idle-timeout", "5", **env)
    assert tailed.returncode == 0, tailed.stderr
    values = [json.loads(line)["value"] for line in tailed.stdout.splitlines()]
    assert [v["text"] for v in values] == ["hello chat", "a json line", "ünïcödé 🎮"]
    assert values[1] == {"id": "j1", "text": "a json line", "channel": "c"}  # JSON lines pass through verbatim
    assert values[0]["channel"] == "cli" and values[0]["id"]  # plain text gets an id and the default channel


def test_bench_refuses_a_worker_setting_that_is_not_a_chatmod_variable():
    done = chatmod("bench", "--only", "e2e", "--worker-setting", "FETCH=20")
    assert done.returncode == 2 and "CHATMOD_<GROUP>_<NAME>=value" in done.stderr
