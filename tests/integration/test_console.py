"""The moderator console against the embedded broker, real Redis and a real worker (tiny model): the live
queue, claims, verdicts on the feedback topic, roles, CSRF, login limits, and a restart that neither loses
an item nor shows one twice."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from models.registry import ModelRegistry
from pipeline.console.accounts import Accounts
from pipeline.console.server import ConsoleThread
from pipeline.devstack.childproc import free_port
from pipeline.devstack.embedded import create_topics
from pipeline.settings import Settings
from tests.harness import WorkerProcess, produce, read_topic, results_by_id, worker_env
from tests.tiny_models import build_tiny_artifact

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
PASSWORD = "correct horse battery"


def console_stack(broker, redis_url: str, topic_prefix: str, tmp_path: Path, monkeypatch) -> tuple[dict, ModelRegistry]:
    """Two tiny model versions (1 current), a default profile that blocks "frobnik", topics, three accounts,
    and the worker's settings in this process's environment (for the console)."""
    registry = ModelRegistry(tmp_path / "store")
    for version, seed in (("1", 0), ("2", 1)):
        build_tiny_artifact(tmp_path / "build" / version, seed=seed, formats=("onnx_int8",), version=version)
        registry.add(tmp_path / "build" / version, version=version)
    registry.promote("tiny-distilbert@1")
    profile = tmp_path / "default.yaml"
    profile.write_text("name: default\nblock_terms: [frobnik]\n")
    env = worker_env(broker.bootstrap, redis_url, registry.store, topic_prefix,
                     CHATMOD_POLICY_DEFAULT_PROFILE=str(profile), CHATMOD_MODELS_RELOAD_POLL_S="0",
                     CHATMOD_FEEDBACK_STORE=str(tmp_path / "feedback"))
    create_topics(broker.bootstrap, {env[k]: 3 for k in ("CHATMOD_TOPICS_MESSAGES", "CHATMOD_TOPICS_MODERATED",
                                                         "CHATMOD_TOPICS_FLAGGED")} | {env["CHATMOD_TOPICS_FEEDBACK"]: 1})
    for key, value in env.items():
        if key.startswith("CHATMOD_"):
            monkeypatch.setenv(key, value)
    accounts = Accounts(redis_lib.Redis.from_url(redis_url), env["CHATMOD_REDIS_KEY_PREFIX"])
    for name, role in (("mod1", "moderator"), ("mod2", "moderator"), ("boss", "admin")):
        accounts.add_user(name, PASSWORD, role)
    return env, registry


def chat(i: str, text: str, channel: str = "arena", user: str = "troll") -> bytes:
    return json.dumps({"id": i, "text": text, "channel": channel, "user": user}).encode()


def login(url: str, user: str, password: str = PASSWORD) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=url, timeout=10.0)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client, client.post("/login", data={"user": user, "password": password, "csrf": token})


def csrf_of(client: httpx.Client) -> str:
    return re.search(r'<meta name="csrf" content="([^"]+)"', client.get("/").text).group(1)


def wait_item(client: httpx.Client, item_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [i for i in client.get("/api/queue").json()["items"] if i["result"]["id"] == item_id]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{item_id} never reached the queue")


def test_queue_claims_verdicts_roles_and_csrf(broker, redis_url, topic_prefix, tmp_path, monkeypatch):
    env, registry = console_stack(broker, redis_url, topic_prefix, tmp_path, monkeypatch)
    settings = Settings(console={"port": free_port()})
    with WorkerProcess(env, tmp_path / "worker.log") as worker, ConsoleThread(settings) as url:
        mod1, response = login(url, "mod1")
        assert response.status_code == 303 and "chatmod_session" in mod1.cookies
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        mod2, _ = login(url, "mod2")
        boss, _ = login(url, "boss")
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [chat("t1", "you absolute frobnik"),
                                                                 chat("x1", "good game everyone", "lobby", "nice")])
        item = wait_item(mod1, "t1")
        assert item["result"]["text"] == "you absolute frobnik" and item["result"]["decision"] == "block"
        assert item["result"]["models"]["toxicity"] == "tiny-distilbert@1" and item["holder"] is None
        queued = mod1.get("/api/queue").json()["items"]  # (a random tiny model may flag the other one too)
        assert all(i["result"]["decision"] != "allow" for i in queued)
        assert [i["result"]["id"] for i in mod1.get("/api/queue", params={"channel": "arena"}).json()["items"]] == ["t1"]
        assert all(i["result"]["decision"] == "block"
                   for i in mod1.get("/api/queue", params={"decision": "block"}).json()["items"])
        assert mod1.get("/api/queue", params={"profile": "nosuch"}).json()["items"] == []

        # claims: one moderator at a time, and a verdict on another's item is refused
        token1, token2 = csrf_of(mod1), csrf_of(mod2)
        assert mod1.post("/api/items/t1/claim", headers={"x-csrf-token": token1}).json() == {"holder": "mod1"}
        taken = mod2.post("/api/items/t1/claim", headers={"x-csrf-token": token2})
        assert taken.status_code == 409 and taken.json()["holder"] == "mod1"
        assert mod2.get("/api/queue").json()["items"][0]["holder"] == "mod1"
        refused = mod2.post("/api/items/t1/verdict", json={"action": "confirm"}, headers={"x-csrf-token": token2})
        assert refused.status_code == 409
        # CSRF: the same request without the session's token changes nothing
        assert mod1.post("/api/items/t1/verdict", json={"action": "confirm"}).status_code == 403
        assert mod1.post("/api/items/t1/verdict", json={"action": "confirm"},
                         headers={"x-csrf-token": token2}).status_code == 403  # another session's token

        labels = {"toxic": 0, "insult": 0}
        done = mod1.post("/api/items/t1/verdict", json={"action": "overturn", "labels": labels},
                         headers={"x-csrf-token": token1})
        assert done.status_code == 200, done.text
        feedback = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_FEEDBACK"], lambda rs: len(rs) >= 1, 30, worker)
        verdict = json.loads(feedback[0].value)
        assert verdict["id"] == "t1" and verdict["moderator"] == "mod1" and verdict["text"] == "you absolute frobnik"
        assert set(verdict["labels"].values()) == {0} and len(verdict["labels"]) == 7
        assert "t1" not in {i["result"]["id"] for i in mod1.get("/api/queue").json()["items"]}
        assert mod1.post("/api/items/t1/verdict", json={"action": "confirm"},
                         headers={"x-csrf-token": token1}).status_code == 410
        assert mod1.get("/api/queue").json()["verdicts"]["published"] == {"toxicity": 1}

        # roles: a moderator cannot promote; an admin can, and the running worker switches
        form = {"ref": "tiny-distilbert@2", "csrf": token1}
        assert mod1.post("/models/promote", data=form).status_code == 403
        assert registry.current("toxicity") == "tiny-distilbert@1"
        promoted = boss.post("/models/promote", data={"ref": "tiny-distilbert@2", "csrf": csrf_of(boss)})
        assert promoted.status_code == 303 and "promoted" in promoted.headers["location"]
        assert registry.current("toxicity") == "tiny-distilbert@2"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [chat(f"after-{deadline}", "gg")])
            out = results_by_id(read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: False, 1))
            if out.get(f"after-{deadline}", [{}])[0].get("models", {}).get("toxicity") == "tiny-distilbert@2":
                break
            deadline -= 0.001  # a new id each round
        else:
            raise AssertionError(f"the worker did not switch\n{worker.log_tail()}")
        audit = boss.get("/audit").text
        assert "models-promote" in audit and "verdict" in audit and "mod1" in audit
        assert mod1.get("/audit").status_code == 403
        assert "you absolute frobnik" not in worker.log_tail(400)


def test_logins_are_limited_and_a_restart_neither_loses_nor_repeats_an_item(broker, redis_url, topic_prefix,
                                                                          tmp_path, monkeypatch):
    env, _ = console_stack(broker, redis_url, topic_prefix, tmp_path, monkeypatch)
    settings = Settings(console={"port": free_port(), "login_max_failures": 3})
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        with ConsoleThread(settings) as url:
            for _ in range(3):
                assert login(url, "mod1", "wrong password!")[1].status_code == 401
            assert login(url, "mod1")[1].status_code == 429  # limited, even with the right password
            assert login(url, "mod2")[1].status_code == 429  # and from this address, for any user
            store = redis_lib.Redis.from_url(redis_url)  # the window passes
            store.delete(*store.keys(f"{env['CHATMOD_REDIS_KEY_PREFIX']}:v1:console:login-failures:*"))
            client, _ = login(url, "mod1")
            produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [chat("a1", "frobnik one")])
            reasons = wait_item(client, "a1")["result"]["reasons"]
            confirmed = client.post("/api/items/a1/verdict", json={"action": "confirm"},
                                    headers={"x-csrf-token": csrf_of(client)}).json()["labels"]
            flagged = {r.removeprefix("label:"): 1 for r in reasons if r.startswith("label:")}
            assert confirmed == (flagged or {"toxic": 1})  # a confirmed block: the labels that flagged it
        # while the console is down, more is flagged; a console reading the topic from the start again
        # (a new consumer group) queues what it missed once, and not what was decided
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [chat("a2", "frobnik two"), chat("a2", "frobnik two")])
        read_topic(broker.bootstrap, env["CHATMOD_TOPICS_FLAGGED"], lambda rs: len(rs) >= 3, 30, worker)
        again = Settings(console={"port": free_port(), "consumer_group": "chatmod-console-second"})
        with ConsoleThread(again) as url:
            client, _ = login(url, "mod1")
            wait_item(client, "a2")
            time.sleep(1.0)  # the whole topic read again
            ids = [i["result"]["id"] for i in client.get("/api/queue", params={"channel": "arena"}).json()["items"]]
            assert ids == ["a2"]
