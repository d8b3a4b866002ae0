"""The moderator console in a real headless Chromium (Debian's ``chromium``, driven by Playwright), against
the embedded broker, real Redis and a real worker: what a moderator and an admin see and do.

Screenshots go to ``$CHATMOD_SCREENSHOTS`` when set (the README's come from ``docs/console``), else to
the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pipeline.console.server import ConsoleThread
from pipeline.devstack.childproc import free_port
from pipeline.settings import Settings
from tests.harness import WorkerProcess, produce, read_topic, results_by_id
from tests.integration.test_console import PASSWORD, chat, console_stack

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
CHROMIUM = os.environ.get("CHATMOD_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make install` tries it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the dev extra)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CHATMOD_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_in(browser, url: str, user: str, password: str = PASSWORD):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(f"{url}/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    return page


def test_a_flagged_message_appears_live_and_a_moderator_overturns_it_from_the_keyboard(
        browser, shots, broker, redis_url, topic_prefix, tmp_path, monkeypatch):
    env, _ = console_stack(broker, redis_url, topic_prefix, tmp_path, monkeypatch)
    settings = Settings(console={"port": free_port()})
    with WorkerProcess(env, tmp_path / "worker.log") as worker, ConsoleThread(settings) as url:
        page = log_in(browser, url, "mod1")
        page.wait_for_selector("#live.on", timeout=10_000)  # the event stream is connected
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [chat("warm", "frobnik warming up", "lobby", "early")])
        page.wait_for_selector('article[data-id="warm"]', timeout=30_000)  # worker and console warmed up
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"],
                [chat("t1", "shut up you frobnik, nobody wants you here", "arena", "troll"),
                 chat("t2", "go back to where you came from frobnik", "arena", "raider")])
        started = time.monotonic()
        page.wait_for_selector('article[data-id="t1"]', timeout=2_000)  # live: within 2 seconds
        appeared_s = time.monotonic() - started
        page.wait_for_selector('article[data-id="t2"]', timeout=5_000)
        assert "nobody wants you here" in page.inner_text('article[data-id="t1"] .text')
        page.screenshot(path=str(shots / "queue.png"), full_page=True)

        page.click('article[data-id="t1"] .text')  # select it, then the fast path from the keyboard
        page.keyboard.press("c")
        page.wait_for_selector('article[data-id="t1"] .holder.mine', timeout=5_000)
        page.keyboard.press("n")
        page.wait_for_selector('article[data-id="t1"] form.labels', timeout=5_000)
        page.screenshot(path=str(shots / "overturn.png"), full_page=True)
        page.keyboard.press("Enter")
        page.wait_for_selector('article[data-id="t1"]', state="detached", timeout=5_000)
        feedback = read_topic(broker.bootstrap, env["CHATMOD_TOPICS_FEEDBACK"], lambda rs: len(rs) >= 1, 30, worker)
        verdict = json.loads(feedback[0].value)
        assert verdict["id"] == "t1" and verdict["moderator"] == "mod1" and set(verdict["labels"].values()) == {0}
        assert "overturned" in page.inner_text("#flash")
    assert appeared_s <= 2.0


def test_roles_csrf_login_limits_and_the_admin_pages(browser, shots, broker, redis_url, topic_prefix, tmp_path,
                                                     monkeypatch):
    env, registry = console_stack(broker, redis_url, topic_prefix, tmp_path, monkeypatch)
    settings = Settings(console={"port": free_port(), "login_max_failures": 3})
    with WorkerProcess(env, tmp_path / "worker.log") as worker, ConsoleThread(settings) as url:
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"],
                [chat(f"c{i}", f"{'frobnik ' if i % 3 == 0 else ''}message {i}", f"channel-{i % 2}", f"u{i % 5}")
                 for i in range(60)])
        read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: len(results_by_id(rs)) >= 60, 30, worker)

        moderator = log_in(browser, url, "mod1")
        moderator.goto(f"{url}/models")
        assert moderator.locator("text=Promote").count() == 0  # no button for a moderator...
        status = moderator.evaluate("""async () => {
            const csrf = document.querySelector('meta[name="csrf"]').content;
            const form = new URLSearchParams({ref: 'tiny-distilbert@2', csrf});
            return (await fetch('/models/promote', {method: 'POST', body: form})).status; }""")
        assert status == 403 and registry.current("toxicity") == "tiny-distilbert@1"  # ...and no way round it
        no_token = moderator.evaluate("async () => (await fetch('/api/items/c0/claim', {method: 'POST'})).status")
        assert no_token == 403  # a state change without the CSRF token is refused

        admin = log_in(browser, url, "boss")
        admin.goto(f"{url}/channels")
        admin.wait_for_selector("section.channel svg")
        admin.screenshot(path=str(shots / "channels.png"), full_page=True)
        admin.goto(f"{url}/policies")
        admin.fill("textarea[name=source]", "name: Bad Name\nmode: sometimes\n")
        admin.click("text=Validate and store")
        errors = admin.inner_text(".error")
        assert "mode" in errors and "name" in errors  # refused inline; the profile in force stays
        admin.screenshot(path=str(shots / "policy-refused.png"), full_page=True)
        admin.goto(f"{url}/models")
        admin.click('button[data-ref="tiny-distilbert@2"]')
        assert "promoted tiny-distilbert@2" in admin.inner_text(".notice")
        admin.screenshot(path=str(shots / "models.png"), full_page=True)
        assert registry.current("toxicity") == "tiny-distilbert@2"
        for attempt in range(60):  # the running worker switches
            produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"], [chat(f"after{attempt}", "gg")])
            out = results_by_id(read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: False, 0.5))
            if out.get(f"after{attempt}", [{}])[0].get("models", {}).get("toxicity") == "tiny-distilbert@2":
                break
        else:
            raise AssertionError(f"the worker did not switch\n{worker.log_tail()}")

        intruder = log_in(browser, url, "mod2", "not the password")
        assert "Wrong user name or password" in intruder.inner_text(".error")
        for _ in range(2):
            intruder = log_in(browser, url, "mod2", "not the password")
        limited = log_in(browser, url, "mod2")  # the right password, too late
        assert "Too many failed logins" in limited.inner_text(".error")
        limited.screenshot(path=str(shots / "login-limited.png"))


def test_the_bundled_models_fill_the_queue_as_a_moderator_sees_it(browser, shots, broker, redis_url, topic_prefix,
                                                                 tmp_path, monkeypatch):
    """The shipped models behind the console (the README's screenshots come from here): abuse is queued with
    its labels, friendly chat is not, and the channel charts draw what the workers counted."""
    import redis as redis_lib

    from models.registry import ModelRegistry, bundled_store
    from pipeline.console.accounts import Accounts
    from pipeline.devstack.embedded import create_topics
    from tests.harness import worker_env

    store = ModelRegistry(tmp_path / "store", seed=bundled_store()).store
    env = worker_env(broker.bootstrap, redis_url, store, topic_prefix)
    create_topics(broker.bootstrap, {env[k]: 3 for k in ("CHATMOD_TOPICS_MESSAGES", "CHATMOD_TOPICS_MODERATED",
                                                         "CHATMOD_TOPICS_FLAGGED")} | {env["CHATMOD_TOPICS_FEEDBACK"]: 1})
    for key, value in env.items():
        if key.startswith("CHATMOD_"):
            monkeypatch.setenv(key, value)
    Accounts(redis_lib.Redis.from_url(redis_url), env["CHATMOD_REDIS_KEY_PREFIX"]).add_user("alice", PASSWORD, "admin")
    friendly = ["gg wp everyone", "nice shot!", "anyone up for another round?", "thanks for the carry lol",
                "that was a close game", "brb getting water", "love this map", "who wants to duo later"]
    abuse = [("x1", "fps_ranked", "uninstall the game you absolute idiot"),
             ("x2", "lobby", "u r such a l o s e r, nobody likes you"),
             ("x3", "fps_ranked", "go kill yourself, nobody wants you here")]
    settings = Settings(console={"port": free_port()})
    with WorkerProcess(env, tmp_path / "worker.log") as worker, ConsoleThread(settings) as url:
        produce(broker.bootstrap, env["CHATMOD_TOPICS_MESSAGES"],
                [chat(f"f{i}", text, "lobby" if i % 2 else "fps_ranked", f"player{i}") for i, text in enumerate(friendly)]
                + [chat(i, text, channel, "troll") for i, channel, text in abuse])
        read_topic(broker.bootstrap, env["CHATMOD_TOPICS_MODERATED"], lambda rs: len(results_by_id(rs)) >= 11, 60, worker)
        page = log_in(browser, url, "alice")
        for i, _, _ in abuse:
            page.wait_for_selector(f'article[data-id="{i}"]', timeout=10_000)
        assert page.locator('article[data-id^="f"]').count() == 0  # friendly chat is not queued
        assert "label:toxic" in page.inner_text('article[data-id="x1"]')
        assert "idiot" in page.inner_text('article[data-id="x1"] mark')  # the word that drove it, highlighted
        page.screenshot(path=str(shots / "queue.png"))
        # the workers send their per-minute counts within a second of counting them, a quiet stream's last too
        deadline, shown = time.monotonic() + 10, set()
        while not {"lobby", "fps_ranked"} <= shown and time.monotonic() < deadline:
            time.sleep(0.5)
            page.goto(f"{url}/channels")
            page.wait_for_selector("section.channel svg")
            shown = {h.split()[0] for h in page.locator("section.channel h2").all_inner_texts()}
        assert {"lobby", "fps_ranked"} <= shown, shown
        page.screenshot(path=str(shots / "channels.png"))
        page.goto(f"{url}/models")
        assert "chatmod-distilbert-mt" in page.inner_text("table.current")
        page.screenshot(path=str(shots / "models.png"))
