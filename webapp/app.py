"""create_app(settings) -> the portal's FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from webapp.accounts import Account
from webapp.credentials import Credentials
from webapp.errors import PortalError, sentence
from webapp.humanize import format_iso, format_time_left, format_utc
from webapp.portal import Portal
from webapp.security import MAX_BODY, SecurityMiddleware, Sessions, security_headers
from webapp.settings import Settings
from webapp.views import router
from webapp.views.common import InlineAssets

PACKAGE = Path(__file__).resolve().parent


def _asset_dir(name: str) -> Path:
    """templates/ and static/ sit inside the installed package, or beside it in a checkout."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name


templates = Jinja2Templates(directory=str(_asset_dir("templates")))
templates.env.auto_reload = False  # packaged templates: no stat() of each on every render
templates.env.filters["utc"] = format_utc
templates.env.filters["time_left"] = format_time_left
templates.env.filters["iso"] = format_iso
templates.env.filters["sentence"] = sentence


def create_app(
    settings: Settings,
    *,
    launch_token: str,
    on_login: Callable[[Credentials | None, str], None] | None = None,
) -> FastAPI:
    portal = Portal(
        settings=settings,
        account=Account(settings),
        sessions=Sessions(launch_token),
        on_login=on_login,
    )
    portal.note_provider_origin(settings.issuer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_warm_discovery(portal))
        withdraw = _publish_link(portal) if settings.publish_link else None
        try:
            yield
        finally:
            if withdraw is not None:
                withdraw()
        task.cancel()
        if portal.device is not None and portal.device.task is not None:
            portal.device.task.cancel()
        await portal.account.providers.aclose()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.portal = portal
    app.state.templates = templates
    app.state.inline_assets = InlineAssets.load(_asset_dir("static"))
    app.mount("/static", StaticFiles(directory=str(_asset_dir("static"))), name="static")
    app.include_router(router, max_body_size=MAX_BODY)  # inside SecurityMiddleware: 413s get its headers
    app.add_middleware(
        SecurityMiddleware, port=settings.port, form_action=lambda: sorted(portal.form_action_origins)
    )
    app.add_exception_handler(PortalError, handle_portal_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, handle_unexpected)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)  # type: ignore[arg-type]
    return app


def _publish_link(portal: Portal) -> Callable[[], None] | None:
    """`codex-portal open` finds this portal through a 0600 record in CODEX_HOME (webapp.reopen);
    the function that removes it, which also runs at exit if the lifespan cannot end."""
    import atexit

    from webapp import reopen

    secret = reopen.new_secret()
    withdraw = reopen.publish(portal.settings, secret)
    if withdraw is not None:
        portal.link_secret = secret
        atexit.register(withdraw)
    return withdraw


async def _warm_discovery(portal: Portal) -> None:
    """Learn the authorization endpoint's origin early, so the page's CSP form-action allows it."""
    try:
        await portal.account.provider.prepare()
        await portal.discover()
    except PortalError:
        pass  # reported when the person signs in


async def handle_portal_error(request: Request, exc: PortalError) -> Response:
    return _error_page(request, exc.message, exc.status_code)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: one line in the log (no request data, which may carry secrets), a plain page that
    still carries the security headers (this answer is written outside SecurityMiddleware)."""
    logging.getLogger("codex_portal").error("unexpected %s on %s", type(exc).__name__, request.url.path)
    response = _error_page(request, "Something went wrong inside codex-portal. Go back and try again.", 500)
    for name, value in security_headers():
        response.headers[name.decode()] = value.decode()
    return response


async def handle_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Unknown addresses and wrong methods get a page (or JSON under /api/), not Starlette's JSON."""
    messages = {404: "There is no page at this address.", 405: "This address does not take that method."}
    return _error_page(request, messages.get(exc.status_code, str(exc.detail)), exc.status_code, exc.headers)


def _error_page(
    request: Request, message: str, status: int, headers: Mapping[str, str] | None = None
) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    context = {"message": message, "status": status}
    return templates.TemplateResponse(request, "error.html", context, status_code=status, headers=headers)
