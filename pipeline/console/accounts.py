"""Console accounts: users with roles, argon2id password hashes, sessions, CSRF tokens, login rate limits
and the audit log, all in Redis under ``<prefix>:v1:console:``.

A session is a random token in an HttpOnly, SameSite=Strict cookie; Redis holds only its SHA-256, with the
user, role and the session's CSRF token, and forgets it after ``session_ttl_s``. Every state-changing
request must carry that CSRF token (header ``X-CSRF-Token`` or form field ``csrf``). Failed logins count
per user name and per client address; past ``login_max_failures`` in ``login_window_s`` both are refused
(HTTP 429) until the window ends, whatever the password.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["moderator", "admin"]
ROLES: tuple[Role, ...] = ("moderator", "admin")
_HASHER = PasswordHasher()  # argon2id, the library's current recommended parameters
_DUMMY_HASH = _HASHER.hash("not a password of anyone")  # unknown users cost a verification too
MIN_PASSWORD = 10


class AccountError(ValueError):
    """A user cannot be created or changed; the message says why."""


@dataclass(frozen=True)
class Session:
    user: str
    role: Role
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Accounts:
    """Users, sessions, login limits and the audit log (sync or asyncio Redis client alike: callers pick)."""

    def __init__(self, client, prefix: str, session_ttl_s: int = 8 * 3600, max_failures: int = 5,
                 window_s: int = 300):
        self.client, self.base = client, f"{prefix}:v1:console"
        self.session_ttl_s, self.max_failures, self.window_s = session_ttl_s, max_failures, window_s

    # users -----------------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: Role) -> None:
        """Create or replace ``name`` (sync client)."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise AccountError(f"user name {name!r}: letters, digits, '-', '_' and '.', at most 64")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: one of {list(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password needs at least {MIN_PASSWORD} characters")
        record = {"hash": _HASHER.hash(password), "role": role, "created": time.time()}
        self.client.hset(f"{self.base}:users", name, json.dumps(record))

    def users(self) -> dict[str, str]:
        """name -> role (sync client)."""
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v)["role"]
                for k, v in self.client.hgetall(f"{self.base}:users").items()}

    # login --------------------------------------------------------------------------------------------------

    def _failure_keys(self, name: str, address: str) -> list[str]:
        return [f"{self.base}:login-failures:user:{_digest(name)}", f"{self.base}:login-failures:addr:{_digest(address)}"]

    async def limited(self, name: str, address: str) -> bool:
        """True while this user name or client address is over its failed-login budget."""
        counts = await self.client.mget(self._failure_keys(name, address))
        return any(int(c or 0) >= self.max_failures for c in counts)

    async def login(self, name: str, password: str, address: str) -> tuple[str, Session] | None:
        """(cookie token, session) for good credentials, else None and the failure counted."""
        raw = await self.client.hget(f"{self.base}:users", name)
        record = json.loads(raw) if raw else None
        try:
            _HASHER.verify(record["hash"] if record else _DUMMY_HASH, password)
            ok = record is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            pipe = self.client.pipeline(transaction=False)
            for key in self._failure_keys(name, address):
                pipe.incr(key)
                pipe.expire(key, self.window_s, nx=True)
            await pipe.execute()
            return None
        token = secrets.token_urlsafe(32)
        session = Session(name, record["role"], secrets.token_urlsafe(32))
        await self.client.set(self._session_key(token), json.dumps(session.__dict__), ex=self.session_ttl_s)
        await self.client.delete(self._failure_keys(name, address)[0])
        return token, session

    def _session_key(self, token: str) -> str:
        return f"{self.base}:session:{_digest(token)}"

    async def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        raw = await self.client.get(self._session_key(token))
        return Session(**json.loads(raw)) if raw else None

    async def logout(self, token: str | None) -> None:
        if token:
            await self.client.delete(self._session_key(token))

    # audit ----------------------------------------------------------------------------------------------------

    async def audit(self, user: str, event: str, target: str, **detail: str) -> None:
        """Append one record to the audit stream (never message text: items by id)."""
        await self.client.xadd(f"{self.base}:audit", {**detail, "user": user, "action": event, "target": target,
                                                      "at": f"{time.time():.3f}"}, maxlen=100_000)

    async def audit_tail(self, n: int = 50) -> list[dict[str, str]]:
        entries = await self.client.xrevrange(f"{self.base}:audit", count=n)
        out = []
        for _, fields in entries:
            entry = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                     for k, v in fields.items()}
            entry["at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry["at"])))
            out.append(entry)
        return out


def csrf_matches(expected: str, given: str | None) -> bool:
    """Whether a request's CSRF token is the expected one (a session's, or the login form's cookie)."""
    return bool(given) and hmac.compare_digest(expected, given)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]
