"""Bearer tokens → principals, the roles each RPC needs, and environment scoping."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from services.errors import PermissionDeniedError, UnauthenticatedError

TOKEN_PREFIX = "mw_"
TOKEN_ID_PREFIX = "tok_"
_TOKEN_ID_HEX_CHARS = 12
_SECRET_BYTES = 32


class Role(StrEnum):
    ADMIN = "admin"
    REPORTER = "reporter"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, role and what it is bound or limited to."""

    token_id: str
    role: Role
    environment_id: str | None = None
    """Gateway tokens: the one environment they act in."""
    gateway_id: str | None = None
    """Gateway tokens: the one gateway they act as."""
    environment_ids: frozenset[str] | None = None
    """Reporter tokens: the environments they may read; None means all."""

    def may_access(self, environment_id: str) -> bool:
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.GATEWAY:
            return environment_id == self.environment_id
        return self.environment_ids is None or environment_id in self.environment_ids

    def require_environment(self, environment_id: str, *, field: str = "environment_id") -> None:
        """Raises PERMISSION_DENIED unless the principal may act in the environment."""
        if not self.may_access(environment_id):
            raise PermissionDeniedError(
                f"{field}: this {self.role} token ({self.token_id}) may not access environment {environment_id!r}"
            )

    def visible_environments(self, requested: Iterable[str], *, field: str) -> frozenset[str] | None:
        """The environments a listing may cover: the requested ones if all are allowed (else
        PERMISSION_DENIED), or when none are requested everything the principal may see (None: no limit)."""
        wanted = frozenset(requested)
        for environment_id in sorted(wanted):
            self.require_environment(environment_id, field=field)
        if wanted:
            return wanted
        if self.role is Role.GATEWAY:
            return frozenset({self.environment_id or ""})
        if self.role is Role.REPORTER:
            return self.environment_ids
        return None


_current_principal: ContextVar[Principal] = ContextVar("meterwire_principal")


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served (set by the auth interceptor)."""
    try:
        return _current_principal.get()
    except LookupError:
        raise UnauthenticatedError("no authenticated caller for this call") from None


def bind_principal(principal: Principal) -> object:
    """Makes `principal` the current caller; returns a token for `unbind_principal`."""
    return _current_principal.set(principal)


def unbind_principal(token: object) -> None:
    _current_principal.reset(token)  # type: ignore[arg-type]


_F = TypeVar("_F", bound=Callable[..., Any])
ROLES_ATTRIBUTE = "__meterwire_roles__"


def requires(*roles: Role) -> Callable[[_F], _F]:
    """Declares which roles may call a servicer method; every RPC must declare (the server checks at start)."""
    if not roles:
        raise ValueError("requires() needs at least one role")

    def mark(method: _F) -> _F:
        setattr(method, ROLES_ATTRIBUTE, frozenset(roles))
        return method

    return mark


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token_id: str
    secret: str
    secret_sha256: str


def issue_token() -> IssuedToken:
    """A new random token. The secret embeds the public id, so lookups are by key, never by scanning hashes."""
    id_hex = secrets.token_hex(_TOKEN_ID_HEX_CHARS // 2)
    secret = f"{TOKEN_PREFIX}{id_hex}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return IssuedToken(token_id=TOKEN_ID_PREFIX + id_hex, secret=secret, secret_sha256=hash_secret(secret))


def hash_secret(secret: str) -> str:
    # The secret has 256 random bits, so a fast hash is enough; a slow KDF would only tax every RPC.
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id_of(secret: str) -> str | None:
    """The public id inside a secret, or None if it is not a meterwire token."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    id_hex = secret[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _TOKEN_ID_HEX_CHARS]
    if len(id_hex) != _TOKEN_ID_HEX_CHARS or secret[len(TOKEN_PREFIX) + _TOKEN_ID_HEX_CHARS :][:1] != "_":
        return None
    return TOKEN_ID_PREFIX + id_hex


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_sha256)


def bearer_secret(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token from `authorization: Bearer <token>` metadata, or UNAUTHENTICATED saying what is wrong."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, credential = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise UnauthenticatedError("authorization metadata must be 'Bearer <token>'")
            return credential.strip()
    raise UnauthenticatedError("missing 'authorization: Bearer <token>' metadata")
