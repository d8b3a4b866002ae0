"""The console's pages and JSON API (Starlette). ``create_app(settings)`` builds it; ``chatmod console``
serves it with uvicorn on ``CHATMOD_CONSOLE_HOST``:``CHATMOD_CONSOLE_PORT`` (127.0.0.1:8088).

Every page needs a session; promote, rollback and policy changes need the ``admin`` role. Every POST
carries the session's CSRF token, or is refused with 403 before anything happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from models.labels import TOXICITY_LABELS
from pipeline.console.accounts import Accounts, Session, csrf_matches
from pipeline.console.events import EventHub
from pipeline.console.feed import Feed
from pipeline.console.queue import Queue
from pipeline.console.views import (
    change_models,
    change_policies,
    channel_charts,
    feedback_labels,
    feedback_store_counts,
    models_view,
    policies_view,
    queue_view,
)
from pipeline.settings import Settings

log = logging.getLogger("chatmod.console")
HERE = Path(__file__).parent
SESSION_COOKIE, LOGIN_COOKIE = "chatmod_session", "chatmod_login"
VIEW_TTL_S = 0.5  # how long pages share one read of the queue
STORE_COUNT_TTL_S = 10.0  # how often the feedback store's files are counted again
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "form-action 'self'; base-uri 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}


class Denied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Console:
    """What the handlers share: settings, Redis, the queue, accounts and the Kafka feed."""

    def __init__(self, settings: Settings):
        from redis import asyncio as aioredis

        self.settings = settings
        redis = settings.redis
        self.redis = aioredis.Redis.from_url(redis.url, socket_timeout=5.0, socket_connect_timeout=5.0,
                                             **redis.credential_kwargs())
        self.queue = Queue(self.redis, redis.key_prefix, settings.console.claim_ttl_s)
        c = settings.console
        self.accounts = Accounts(self.redis, redis.key_prefix, c.session_ttl_s, c.login_max_failures, c.login_window_s)
        self._views: dict[tuple, tuple[float, asyncio.Future]] = {}
        self._store_counts: tuple[float, dict[str, int] | None] | None = None
        # New items do not drop the shared view: pages hear of them and re-read within VIEW_TTL_S anyway.
        self.feed = Feed(settings, self.queue, self.redis)
        self.events = EventHub(self.redis, self.queue.events)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    async def queue_snapshot(self, wanted: dict[str, str | None]) -> dict:
        """The queue view for these filters, shared by every page that asks within ``VIEW_TTL_S`` (ten open
        pages re-reading a busy queue cost one read, not ten); this console's changes and new items drop it
        (another console's changes show within ``VIEW_TTL_S``)."""
        key, now = tuple(sorted(wanted.items())), time.monotonic()
        cached = self._views.get(key)
        if cached is not None and now - cached[0] < VIEW_TTL_S:
            return await asyncio.shield(cached[1])
        future = asyncio.ensure_future(queue_view(self, wanted))
        self._views[key] = (now, future)
        try:
            return await asyncio.shield(future)
        except Exception:
            self._views.pop(key, None)
            raise

    def changed(self) -> None:
        self._views.clear()

    async def store_counts(self) -> dict[str, int] | None:
        """Verdicts per task in the feedback store, read off the event loop and at most every
        ``STORE_COUNT_TTL_S`` (the store is a folder of files that only grows)."""
        now = time.monotonic()
        if self._store_counts is None or now - self._store_counts[0] >= STORE_COUNT_TTL_S:
            self._store_counts = (now, await asyncio.to_thread(feedback_store_counts, self.settings))
        return self._store_counts[1]

    async def session(self, request: Request, admin: bool = False, state_change: bool = False) -> Session:
        """The request's session, or Denied: 401 without one, 403 for a missing CSRF token or role."""
        session = await self.accounts.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise Denied(401, "log in first")
        if state_change:
            given = request.headers.get("x-csrf-token")
            if given is None and request.headers.get("content-type", "").startswith(
                    ("application/x-www-form-urlencoded", "multipart/form-data")):
                given = (await request.form()).get("csrf")
            if not csrf_matches(session.csrf, given):
                raise Denied(403, "missing or wrong CSRF token")
        if admin and not session.admin:
            raise Denied(403, "admins only")
        return session

    def page(self, request: Request, name: str, session: Session | None, status: int = 200, **context) -> Response:
        return self.templates.TemplateResponse(request, name, {"session": session, **context}, status_code=status,
                                               headers=HEADERS)


def _set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=settings.console.session_ttl_s, httponly=True,
                        samesite="strict", secure=settings.console.secure_cookies, path="/")


# login ---------------------------------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    console: Console = request.app.state.console
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = console.page(request, "login.html", None, csrf=token, error=None)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=console.settings.console.secure_cookies, path="/login")
    return response


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    form = await request.form()
    cookie = request.cookies.get(LOGIN_COOKIE)
    token = cookie or secrets.token_urlsafe(24)
    if not cookie or not csrf_matches(cookie, form.get("csrf")):
        return console.page(request, "login.html", None, 403, csrf=token, error="The form expired: try again.")
    name, address = str(form.get("user", "")), request.client.host if request.client else "?"
    if await console.accounts.limited(name, address):
        log.warning("login refused: too many failures", extra={"user": name})
        return console.page(request, "login.html", None, 429, csrf=token,
                            error="Too many failed logins: wait a few minutes.")
    done = await console.accounts.login(name, str(form.get("password", "")), address)
    if done is None:
        log.info("login failed", extra={"user": name})
        return console.page(request, "login.html", None, 401, csrf=token, error="Wrong user name or password.")
    session_token, session = done
    await console.accounts.audit(session.user, "login", session.role)
    response = RedirectResponse("/", status_code=303)
    _set_session_cookie(response, session_token, console.settings)
    return response


async def logout(request: Request) -> Response:
    console: Console = request.app.state.console
    session = await console.session(request, state_change=True)
    await console.accounts.logout(request.cookies.get(SESSION_COOKIE))
    await console.accounts.audit(session.user, "logout", "")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# the queue ----------------------------------------------------------------------------------------------------


async def queue_page(request: Request) -> Response:
    console: Console = request.app.state.console
    session = await console.session(request)
    return console.page(request, "queue.html", session, labels=list(TOXICITY_LABELS))


async def queue_api(request: Request) -> Response:
    console: Console = request.app.state.console
    await console.session(request)
    wanted = {k: request.query_params.get(k) or None for k in ("channel", "label", "decision", "profile")}
    return JSONResponse(await console.queue_snapshot(wanted), headers=HEADERS)


async def events(request: Request) -> Response:
    """Server-sent events: the queue changed (coalesced per page, see ``pipeline.console.events``)."""
    console: Console = request.app.state.console
    await console.session(request)
    return StreamingResponse(console.events.stream(request.is_disconnected), media_type="text/event-stream",
                             headers={**HEADERS, "Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def claim(request: Request) -> Response:
    console: Console = request.app.state.console
    session = await console.session(request, state_change=True)
    item_id = request.path_params["item_id"]
    holder = await console.queue.claim(item_id, session.user)
    console.changed()
    if holder == session.user:
        return JSONResponse({"holder": holder}, headers=HEADERS)
    if holder:
        return JSONResponse({"error": f"{holder} has this item", "holder": holder}, status_code=409, headers=HEADERS)
    return JSONResponse({"error": "this item is no longer in the queue"}, status_code=410, headers=HEADERS)


async def release(request: Request) -> Response:
    console: Console = request.app.state.console
    session = await console.session(request, state_change=True)
    released = await console.queue.release(request.path_params["item_id"], session.user)
    console.changed()
    return JSONResponse({"released": released}, headers=HEADERS)


async def verdict(request: Request) -> Response:

    console: Console = request.app.state.console
    session = await console.session(request, state_change=True)
    item_id = request.path_params["item_id"]
    try:
        body = await request.json()
        item = await console.queue.get(item_id)
        if item is None:
            raise ValueError("no such item")
        labels = feedback_labels(item["result"], body.get("action"), body.get("labels"))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400, headers=HEADERS)
    decided = await console.queue.decide(item_id, session.user, {"action": body["action"], "labels": labels,
                                                                  "by": session.user})
    console.changed()
    if decided == "gone":
        return JSONResponse({"error": "this item was decided already"}, status_code=410, headers=HEADERS)
    if decided != "ok":
        return JSONResponse({"error": f"{decided} has this item", "holder": decided}, status_code=409, headers=HEADERS)
    try:
        await console.feed.publish_verdict(item_id, item["result"].get("text", ""), labels, session.user)
    except Exception as exc:  # noqa: BLE001 - the broker is away: the item goes back to the queue
        await console.queue.reopen(item_id, item["result"])
        console.changed()
        log.error("verdict not published; the item is back in the queue", extra={"id": item_id, "error": repr(exc)})
        return JSONResponse({"error": "the verdict could not be published; try again"}, status_code=503,
                            headers=HEADERS)
    await console.queue.count_verdict("toxicity")
    await console.accounts.audit(session.user, "verdict", item_id, verdict=body["action"], labels=json.dumps(labels))
    log.info("verdict", extra={"id": item_id, "action": body["action"], "moderator": session.user})
    return JSONResponse({"ok": True, "labels": labels}, headers=HEADERS)


# channels, models, policies, audit ----------------------------------------------------------------------------


async def channels_page(request: Request) -> Response:

    console: Console = request.app.state.console
    session = await console.session(request)
    return console.page(request, "channels.html", session, charts=await channel_charts(console))


async def models_page(request: Request) -> Response:

    console: Console = request.app.state.console
    session = await console.session(request)
    view = await asyncio.to_thread(models_view, console.settings)
    return console.page(request, "models.html", session, message=request.query_params.get("message"), **view)


async def models_action(request: Request) -> Response:

    console: Console = request.app.state.console
    session = await console.session(request, admin=True, state_change=True)
    form = await request.form()
    action = request.path_params["action"]
    try:
        message = await asyncio.to_thread(change_models, console.settings, action, form)
    except (ValueError, KeyError, LookupError) as exc:
        message = f"refused: {exc}"
    await console.accounts.audit(session.user, f"models-{action}", str(form.get("ref") or form.get("task")),
                                 outcome=message)
    return RedirectResponse(f"/models?message={message}", status_code=303)


async def policies_page(request: Request) -> Response:

    console: Console = request.app.state.console
    session = await console.session(request)
    view = await asyncio.to_thread(policies_view, console.settings)
    return console.page(request, "policies.html", session, errors=None, draft=None, **view)


async def policies_action(request: Request) -> Response:

    console: Console = request.app.state.console
    session = await console.session(request, admin=True, state_change=True)
    form = await request.form()
    action = request.path_params["action"]
    errors, outcome = await asyncio.to_thread(change_policies, console.settings, action, form)
    await console.accounts.audit(session.user, f"policy-{action}", str(form.get("channel") or form.get("name") or ""),
                                 outcome="refused" if errors else outcome)
    if errors:
        view = await asyncio.to_thread(policies_view, console.settings)
        return console.page(request, "policies.html", session, 422, errors=errors, draft=form.get("source"), **view)
    return RedirectResponse("/policies", status_code=303)


async def audit_page(request: Request) -> Response:
    console: Console = request.app.state.console
    session = await console.session(request, admin=True)
    return console.page(request, "audit.html", session, entries=await console.accounts.audit_tail(200))


async def health(request: Request) -> Response:
    """Liveness, and whether the feed reads its topics yet (readiness)."""
    feed = request.app.state.console.feed
    reading = dict(feed.reading)
    ready = bool(reading) and all(reading.values())
    return JSONResponse({"ok": True, "ready": ready, "reading": reading, "flagged_read": feed.flagged_read,
                         "malformed": feed.malformed}, status_code=200 if ready else 503, headers=HEADERS)


async def denied(request: Request, exc: Denied) -> Response:
    if exc.status == 401 and request.method == "GET" and not request.url.path.startswith(("/api/", "/events")):
        return RedirectResponse("/login", status_code=303)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=HEADERS)


def create_app(settings: Settings, *, feed: bool = True) -> Starlette:
    """The console; ``feed=False`` leaves Kafka alone (pages and API over what Redis holds)."""
    console = Console(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await console.events.start()
        if feed:
            await console.feed.start()
        log.info("console ready", extra={"host": settings.console.host, "port": settings.console.port})
        try:
            yield
        finally:
            if feed:
                await console.feed.stop()
            await console.events.stop()
            await console.redis.aclose()

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/", queue_page), Route("/api/queue", queue_api),
        Route("/events", events), Route("/api/items/{item_id}/claim", claim, methods=["POST"]),
        Route("/api/items/{item_id}/release", release, methods=["POST"]),
        Route("/api/items/{item_id}/verdict", verdict, methods=["POST"]),
        Route("/channels", channels_page), Route("/models", models_page),
        Route("/models/{action:str}", models_action, methods=["POST"]), Route("/policies", policies_page),
        Route("/policies/{action:str}", policies_action, methods=["POST"]), Route("/audit", audit_page),
        Route("/health", health), Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Denied: denied})
    app.state.console = console
    return app

