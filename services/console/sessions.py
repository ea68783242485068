"""Console sign-in sessions: server-side, keyed by a random id in an HttpOnly cookie, re-authenticated on every
request through the same token check as the RPCs (a revoked token ends its sessions)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from services.admin.service import AdminService
from services.auth import Principal, Role
from services.errors import UnauthenticatedError

SESSION_COOKIE: Final = "mw_console"
LOGIN_COOKIE: Final = "mw_console_login"
"""Holds the sign-in form's CSRF token (double submit) before there is a session."""
CONSOLE_ROLES: Final = frozenset({Role.ADMIN, Role.REPORTER})
MAX_SESSIONS: Final = 10_000
"""Beyond this the least recently used sessions are signed out, so sign-ins cannot grow memory without bound."""


@dataclass(slots=True)
class Session:
    """One signed-in browser. The token's secret stays in server memory only, as the token cache keeps it."""

    session_id: str
    secret: str = field(repr=False)
    token_id: str
    csrf_token: str
    last_used: float


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


class Sessions:
    """Session ids → sessions; a session idle for `idle_seconds` is gone."""

    def __init__(self, admin: AdminService, *, idle_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._admin = admin
        self._idle = idle_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    async def sign_in(self, secret: str) -> tuple[Session, Principal]:
        """A new session for a reporter or admin token; UNAUTHENTICATED for anything else."""
        principal = await self._admin.authenticate(secret.strip())
        if principal.role not in CONSOLE_ROLES:
            raise UnauthenticatedError(f"a {principal.role} token cannot sign in to the console; use a reporter token")
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda one: one.last_used)
            del self._sessions[oldest.session_id]
        session = Session(
            session_id=secrets.token_urlsafe(32),
            secret=secret.strip(),
            token_id=principal.token_id,
            csrf_token=new_csrf_token(),
            last_used=self._clock(),
        )
        self._sessions[session.session_id] = session
        return session, principal

    async def resume(self, session_id: str) -> tuple[Session, Principal] | None:
        """The session and its token's principal now, or None (unknown, idle too long, revoked: signed out)."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self._idle:
            del self._sessions[session_id]
            return None
        try:
            principal = await self._admin.authenticate(session.secret)
        except UnauthenticatedError:
            self._sessions.pop(session_id, None)
            return None
        session.last_used = now
        return session, principal

    def sign_out(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)
