"""What every console page works with: the shared service objects, the signed-in viewer, and rendering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse

from services.admin.service import AdminService
from services.auth import Principal
from services.budget.service import BudgetService
from services.budget.webhooks import Webhooks
from services.console import formatting
from services.console.exports import Exports
from services.console.sessions import Session, Sessions
from services.heartbeat.fleet import Fleet
from services.pricing import PriceBooks
from services.reporting.history import RequestHistory
from services.reporting.reports import UsageReports
from services.settings import ServerSettings

ENVIRONMENT_CHOICES = 1000
"""Environments listed in the filter picker (a listing page)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in browser and what its token may see, resolved again on this request."""

    session: Session
    principal: Principal


@dataclass(frozen=True)
class Console:
    """The console's shared objects: the same reports, history, fleet and budgets the RPCs are served from."""

    settings: ServerSettings
    engine: AsyncEngine
    admin: AdminService
    sessions: Sessions
    reports: UsageReports
    history: RequestHistory
    fleet: Fleet
    budgets: BudgetService
    webhooks: Webhooks
    prices: PriceBooks
    exports: Exports
    templates: jinja2.Environment

    def render(
        self, request: Request, template: str, viewer: Viewer | None, *, status_code: int = 200, **values: Any
    ) -> HTMLResponse:
        page = self.templates.get_template(template)
        html = page.render(
            viewer=viewer,
            csrf_token=viewer.session.csrf_token if viewer else "",
            path=request.url.path,
            **values,
        )
        return HTMLResponse(html, status_code=status_code)

    async def environment_choices(self, principal: Principal) -> list[str]:
        page = await self.admin.list_environments(principal, requested_page_size=ENVIRONMENT_CHOICES, page_token="")
        return [record.environment_id for record in page.items]


def template_environment() -> jinja2.Environment:
    """Autoescaped templates, with the figure formats as globals."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("services.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals.update(
        count=formatting.count,
        token_total=formatting.token_total,
        spend=formatting.spend,
        percent=formatting.percent,
        milliseconds=formatting.milliseconds,
        timestamp_us=formatting.timestamp_us,
        moment=formatting.moment,
        money=formatting.money,
        unknown=formatting.UNKNOWN,
        has=lambda message, name: message.HasField(name),
        enum_name=lambda value: value.name.replace("_", " ").lower(),
    )
    return environment
