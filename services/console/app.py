"""The console's routes: sign-in and sign-out, each page behind the session check, errors as pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

import grpc
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from services.console.context import Console, Viewer
from services.console.security import CsrfError, SecurityHeaders
from services.console.sessions import LOGIN_COOKIE, SESSION_COOKIE, new_csrf_token, same_token
from services.console.views.budgets import budgets_page
from services.console.views.exports import export_download, export_page, export_start, export_status
from services.console.views.fleet import fleet_page, fleet_rows
from services.console.views.requests import request_page, requests_page
from services.console.views.usage import usage_page
from services.errors import MeterwireError, UnauthenticatedError

log = structlog.get_logger("meterwire.console")

STATIC_DIR: Final = Path(__file__).parent / "static"
MAX_FORM_BYTES: Final = 64 * 1024
_STATUS: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
}

Handler = Callable[[Console, Request, Viewer], Awaitable[Response]]


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _safe_next(target: str) -> str:
    """Only a path on this console (never another site) is a place to go after signing in."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/usage"


async def _form(request: Request) -> dict[str, str]:
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        raise CsrfError("form: too large")
    form = await request.form(max_files=0, max_fields=200)
    return {key: value for key, value in form.items() if isinstance(value, str)}


def build_app(console: Console) -> ASGIApp:
    async def viewer_of(request: Request) -> Viewer | None:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        resumed = await console.sessions.resume(session_id) if session_id else None
        return Viewer(*resumed) if resumed else None

    def page(
        handler: Handler, *, changes_state: bool = False, fragment: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """`fragment`: read by the pages' script, which reloads the page on 401 instead of following a redirect
        to the sign-in form (it would put that form into a table)."""

        async def endpoint(request: Request) -> Response:
            viewer = await viewer_of(request)
            if viewer is None:
                if request.method != "GET" or fragment:
                    return Response("signed out", status_code=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?{_next_param(target)}", status_code=303)
            try:
                if changes_state:
                    form = await _form(request)
                    if not same_token(form.get("csrf_token", ""), viewer.session.csrf_token):
                        raise CsrfError("csrf_token: missing or wrong; reload the page and try again")
                    request.state.form = form
                return await handler(console, request, viewer)
            except MeterwireError as error:
                status = _STATUS.get(error.code, 500)
                return console.render(
                    request, "error.html", viewer, status_code=status, title="Refused", message=str(error)
                )

        return endpoint

    async def login_form(request: Request) -> Response:
        if await viewer_of(request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next", "/usage")), status_code=303)
        return _login_page(request, message="", status_code=200)

    def _login_page(request: Request, *, message: str, status_code: int) -> Response:
        token = new_csrf_token()
        response = console.render(
            request,
            "login.html",
            None,
            status_code=status_code,
            title="Sign in",
            message=message,
            login_csrf=token,
            next=_safe_next(request.query_params.get("next", "/usage")),
        )
        response.set_cookie(
            LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_cookie_secure(request), path="/login"
        )
        return response

    async def login(request: Request) -> Response:
        form = await _form(request)
        if not same_token(form.get("csrf_token", ""), request.cookies.get(LOGIN_COOKIE, "")):
            return _login_page(request, message="The form expired; sign in again.", status_code=403)
        try:
            session, principal = await console.sessions.sign_in(form.get("token", ""))
        except UnauthenticatedError as error:
            log.info("console sign-in refused", reason=str(error))
            return _login_page(request, message=f"Not signed in: {error}", status_code=401)
        log.info("console signed in", token_id=principal.token_id, role=principal.role.value)
        response = RedirectResponse(_safe_next(form.get("next", "/usage")), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            httponly=True,
            samesite="strict",
            secure=_cookie_secure(request),
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(console: Console, request: Request, viewer: Viewer) -> Response:
        console.sessions.sign_out(viewer.session.session_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/usage", status_code=303)

    routes = [
        Route("/", home),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", page(logout, changes_state=True), methods=["POST"]),
        Route("/usage", page(usage_page)),
        Route("/requests", page(requests_page)),
        Route("/requests/{environment_id}/{request_id:path}", page(request_page)),
        Route("/fleet", page(fleet_page)),
        Route("/fleet/rows", page(fleet_rows, fragment=True)),
        Route("/budgets", page(budgets_page)),
        Route("/exports", page(export_start, changes_state=True), methods=["POST"]),
        Route("/exports/{job_id}", page(export_page)),
        Route("/exports/{job_id}/status", page(export_status, fragment=True)),
        Route("/exports/{job_id}/file", page(export_download)),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    # Outermost, so even the plain 500 page of an unexpected error carries the headers.
    return SecurityHeaders(Starlette(routes=routes))


def _next_param(target: str) -> str:
    return urlencode({"next": target})
