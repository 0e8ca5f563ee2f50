"""What every view needs: the portal, the session the launch URL opened, the CSRF-checked form."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from webapp.credentials import Credentials
from webapp.errors import AccessDenied
from webapp.portal import Portal
from webapp.security import Session, content_security_policy
from webapp.stores.sync import CodexView


def no_session(request: Request) -> str:
    """Why this browser has no session here, and what to do: it depends on where (and whether)
    the printed link was opened."""
    portal = portal_of(request)
    port = portal.settings.port
    here = request.headers.get("host", f"localhost:{port}")
    if portal.opened_at is None:
        return (
            "This page needs the link that codex-portal printed in the terminal "
            f"(http://localhost:{port}/?token=…). Open that link in this browser."
        )
    if portal.opened_at != here:
        return (
            f"The link that codex-portal printed was opened at http://{portal.opened_at}/, and a session "
            f"belongs to the address it was opened at: go to http://{portal.opened_at}/ in the browser "
            f"where you opened it. (This is http://{here}/.)"
        )
    return (
        "The link that codex-portal printed was already used, in another browser or before this one's "
        "cookies were cleared. Run codex-portal again in a terminal for a new link."
    )


def portal_of(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def cookie_name(portal: Portal) -> str:
    return f"codex_portal_{portal.settings.port}"


def session_of(request: Request) -> Session | None:
    portal = portal_of(request)
    return portal.sessions.get(request.cookies.get(cookie_name(portal)))


def require_session(request: Request) -> Session:
    session = session_of(request)
    if session is None:
        raise AccessDenied(no_session(request))
    return session


async def checked_form(request: Request) -> tuple[Session, dict[str, str]]:
    session = require_session(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not session.csrf_ok(fields.get("csrf_token")):
        raise AccessDenied("The form has expired. Go back to the status page and try again.")
    return session, fields


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    templates = request.app.state.templates
    response: Response = templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=headers
    )
    return response


@dataclass(frozen=True)
class InlineAssets:
    """The stylesheet and icon inside the page, for the page that must arrive whole: the one a
    one-shot `login` shows as it exits, when no server is left to fetch them from."""

    css: str
    icon: str  # a data: URL
    csp: str  # the page's Content-Security-Policy: that one <style> (by its hash) and data: images

    @classmethod
    def load(cls, static: Path) -> InlineAssets:
        css = (static / "portal.css").read_text(encoding="utf-8")
        icon = "data:image/svg+xml," + quote((static / "favicon.svg").read_text(encoding="utf-8"))
        digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
        return cls(css, icon, content_security_policy(style_src=f"'sha256-{digest}'", img_src="data:"))


def signed_in_message(email: str | None) -> str:
    who = f" as {email}" if email else ""
    return f"Signed in{who}. The Codex CLI will use this account."


def home() -> RedirectResponse:
    return RedirectResponse("/", status_code=303)


async def current_view(portal: Portal) -> tuple[Credentials | None, CodexView]:
    """The login and what the Codex CLI sees: a stat of each file and the cached parse on the
    event loop; only stores found apart are brought in step, in a worker thread (it takes locks)."""
    creds, codex = portal.account.view(sync=False)
    if codex.newer is not None:
        creds, codex = await asyncio.to_thread(portal.account.view)
    return creds, codex
