"""Which usage a budget counts: selectors combined with AND, matched the same way by the server and the agent.

A scope with no environment is organization-wide; each selector that is set (non-empty) must equal the event's or
request's value exactly, and every tag selector must find its key with exactly that value. The server matches
per batch on the gateway's identity (`covers_gateway`) and per event on the rest (`matches_event`); the agent
matches a request on both (`matches`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

EVENT_SELECTORS: Final = ("api_key_id", "user_id", "requested_model", "resolved_model", "provider", "route")
"""Selectors an event or request carries itself (the environment and gateway come from its gateway)."""

SELECTORS: Final = ("environment_id", "gateway_id", *EVENT_SELECTORS)
"""Every selector but tags, in the order scopes are shown."""

MAX_TAG_SELECTORS: Final = 16
MAX_SELECTOR_CHARS: Final = 256


class ScopeError(ValueError):
    """A scope that cannot be stored; `field` names the selector at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.problem = message


class ScopeMessage(Protocol):
    """What `Scope.of_message` reads: a meterwire.budget.v1.Scope (or anything with its fields)."""

    environment_id: str
    gateway_id: str
    api_key_id: str
    user_id: str
    requested_model: str
    resolved_model: str
    provider: str
    route: str

    @property
    def tags(self) -> Mapping[str, str]: ...


class EventAttributes(Protocol):
    """What `matches_event` reads: a usage event row (a mapping by column) or a request's attributes."""

    def __getitem__(self, key: str, /) -> object: ...


@dataclass(frozen=True, slots=True)
class Scope:
    environment_id: str = ""
    """Empty: every environment (organization-wide)."""
    gateway_id: str = ""
    api_key_id: str = ""
    user_id: str = ""
    requested_model: str = ""
    resolved_model: str = ""
    provider: str = ""
    route: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    """(key, value) pairs sorted by key; every one must match."""
    _event_checks: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = tuple((name, getattr(self, name)) for name in EVENT_SELECTORS if getattr(self, name))
        object.__setattr__(self, "_event_checks", checks)
        object.__setattr__(self, "tags", tuple(sorted(self.tags)))

    @classmethod
    def of(cls, *, tags: Mapping[str, str] | None = None, **selectors: str) -> Scope:
        """A validated scope: ScopeError names the selector at fault."""
        scope = cls(tags=tuple((tags or {}).items()), **selectors)
        scope.validate()
        return scope

    @classmethod
    def of_message(cls, message: ScopeMessage) -> Scope:
        """The scope a budget message carries (not validated: the control plane validated it when stored)."""
        return cls(tags=tuple(message.tags.items()), **{name: getattr(message, name) for name in SELECTORS})

    def validate(self) -> None:
        if self.gateway_id and not self.environment_id:
            raise ScopeError("scope.gateway_id", "needs scope.environment_id (gateway ids are names in an environment)")
        for name in ("environment_id", "gateway_id", *EVENT_SELECTORS):
            if len(getattr(self, name)) > MAX_SELECTOR_CHARS:
                raise ScopeError(f"scope.{name}", f"must be at most {MAX_SELECTOR_CHARS} characters")
        if len(self.tags) > MAX_TAG_SELECTORS:
            raise ScopeError("scope.tags", f"at most {MAX_TAG_SELECTORS} tag selectors (got {len(self.tags)})")
        for key, value in self.tags:
            if not key:
                raise ScopeError("scope.tags", "a tag selector needs a key")
            if len(key) > MAX_SELECTOR_CHARS or len(value) > MAX_SELECTOR_CHARS:
                raise ScopeError(
                    f"scope.tags[{key[:40]!r}]", f"keys and values are at most {MAX_SELECTOR_CHARS} characters"
                )

    @property
    def is_organization_wide(self) -> bool:
        return not self.environment_id

    def covers_gateway(self, environment_id: str, gateway_id: str) -> bool:
        """Whether events of this gateway can match at all (the per-batch part of matching)."""
        if self.environment_id and self.environment_id != environment_id:
            return False
        return not self.gateway_id or self.gateway_id == gateway_id

    def matches_event(self, event: EventAttributes, tags: Mapping[str, str]) -> bool:
        """The per-event part of matching: every event selector and every tag selector holds."""
        for name, wanted in self._event_checks:
            if event[name] != wanted:
                return False
        return all(tags.get(key) == value for key, value in self.tags)

    def matches(self, request: RequestAttributes) -> bool:
        """Whether a request (or event) with these attributes counts toward the scope."""
        return self.covers_gateway(request.environment_id, request.gateway_id) and self.matches_event(
            request, request.tags
        )

    def describe(self) -> str:
        """A short human description, e.g. "environment prod, model gpt-4o, tag team=search"."""
        parts = [f"environment {self.environment_id}" if self.environment_id else "organization"]
        labels = {
            "gateway_id": "gateway",
            "api_key_id": "API key",
            "user_id": "user",
            "requested_model": "model",
            "resolved_model": "resolved model",
            "provider": "provider",
            "route": "route",
        }
        parts += [f"{label} {getattr(self, name)}" for name, label in labels.items() if getattr(self, name)]
        parts += [f"tag {key}={value}" for key, value in self.tags]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What a gateway knows of a request before it runs it (or what a stored event carries)."""

    environment_id: str = ""
    gateway_id: str = ""
    api_key_id: str = ""
    user_id: str = ""
    requested_model: str = ""
    resolved_model: str = ""
    provider: str = ""
    route: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str, /) -> object:
        return getattr(self, key)
