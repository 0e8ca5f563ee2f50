"""The portal's pages: status, sign-in and its callback, API key, sign-out, and the status API.

Every view but the callback (guarded by state + PKCE) needs the session the launch URL opened;
every POST needs that session's CSRF token. POSTs end in a 303 redirect.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from webapp.app import DeviceLogin, Portal
from webapp.checks import config_warnings
from webapp.device import complete_device_login, start_device_flow
from webapp.errors import AccessDenied, ConfigError, PortalError
from webapp.humanize import format_utc
from webapp.oauth import authorization_url, exchange_code
from webapp.provider import ProviderMetadata, clean_text, discover, http_client
from webapp.security import Session
from webapp.store import Credentials, status_report, validate_api_key
from webapp.tokens import ensure_fresh, save_api_key, save_login, sign_out

router = APIRouter()
NO_SESSION = (
    "This page needs the link printed in the terminal by codex-portal. Open that link, or restart it."
)


def _portal(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def _cookie_name(portal: Portal) -> str:
    return f"codex_portal_{portal.settings.port}"


def _session(request: Request) -> Session | None:
    portal = _portal(request)
    return portal.sessions.get(request.cookies.get(_cookie_name(portal)))


def _require_session(request: Request) -> Session:
    session = _session(request)
    if session is None:
        raise AccessDenied(NO_SESSION)
    return session


async def _checked_form(request: Request) -> tuple[Session, dict[str, str]]:
    session = _require_session(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not session.csrf_ok(fields.get("csrf_token")):
        raise AccessDenied("The form has expired. Go back to the status page and try again.")
    return session, fields


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    templates = request.app.state.templates
    response: Response = templates.TemplateResponse(request, name, context, status_code=status_code)
    return response


def _home() -> RedirectResponse:
    return RedirectResponse("/", status_code=303)


@router.get("/", name="status_page")
async def status_page(request: Request) -> Response:
    portal = _portal(request)
    token = request.query_params.get("token")
    if token is not None:
        session_id = portal.sessions.redeem(token)
        if session_id is None and _session(request) is None:
            raise AccessDenied(
                "This link was already used or is not valid. Restart codex-portal for a new link."
            )
        response = _home()  # the token leaves the address bar
        if session_id is not None:
            response.set_cookie(_cookie_name(portal), session_id, httponly=True, samesite="lax", path="/")
        return response
    session = _require_session(request)
    return await _render_status(request, session)


async def _render_status(
    request: Request, session: Session, *, form_error: str | None = None, status_code: int = 200
) -> Response:
    portal = _portal(request)
    config_error = None
    creds = None
    try:
        creds = portal.store.load()  # a stat, then the cached parse: cheaper than a thread hop
    except ConfigError as exc:
        config_error = exc.message
    context = {
        "creds": creds,
        "status": status_report(creds, config_path=str(portal.settings.config_path)),
        "config_error": config_error,
        "csrf_token": session.csrf_token,
        "flashes": session.take_flashes(),
        "form_error": form_error,
        "now": int(time.time()),
        "settings": portal.settings,
        "seen": _seen_digest(creds.access_token) if creds else "",
        "device_unavailable": portal.metadata is not None
        and not portal.metadata.device_authorization_endpoint,
        "warnings": config_warnings(portal.settings.config_path),
    }
    return _render(request, "status.html", context, status_code)


@router.get("/api/status", name="api_status")
async def api_status(request: Request) -> Response:
    _require_session(request)
    portal = _portal(request)
    creds = portal.store.load()  # a stat, then the cached parse: cheaper than a thread hop
    return JSONResponse(status_report(creds, config_path=str(portal.settings.config_path)))


@router.post("/login", name="login_start")
async def login_start(request: Request) -> Response:
    await _checked_form(request)
    portal = _portal(request)
    url = await start_login(portal)
    return RedirectResponse(url, status_code=303)


async def _metadata(portal: Portal) -> ProviderMetadata:
    async with http_client(portal.settings.timeout) as client:
        portal.metadata = await discover(portal.settings.issuer, client=client)
    portal.note_provider_origin(portal.metadata.authorization_endpoint)
    return portal.metadata


async def start_login(portal: Portal) -> str:
    """A new pending sign-in and the provider URL that begins it."""
    metadata = await _metadata(portal)
    return authorization_url(metadata, portal.logins.new(portal.settings))


@router.get("/auth/callback", name="login_callback")
async def login_callback(request: Request) -> Response:
    portal = _portal(request)
    params = request.query_params
    login = portal.logins.pop(params.get("state", ""))
    if login is None:
        return _render(
            request,
            "error.html",
            {
                "status": 400,
                "message": (
                    "This sign-in is unknown, was already completed, or has expired (after 10 minutes). "
                    "Nothing was changed. Start again from the portal."
                ),
            },
            400,
        )
    try:
        if "error" in params:
            raise PortalError(_provider_refusal(params.get("error", ""), params.get("error_description")))
        code = params.get("code")
        if not code:
            raise PortalError("The provider sent no authorization code. Nothing was changed.")
        async with http_client(portal.settings.timeout) as client:
            metadata = await discover(login.issuer, client=client)
        result = await exchange_code(metadata, login, code, timeout=portal.settings.timeout)
        await save_login(portal.store, result, portal.settings)
    except PortalError as exc:
        return _finish(request, None, f"Sign-in failed: {exc.message}")
    creds = await asyncio.to_thread(portal.store.load)
    who = f" as {result.email}" if result.email else ""
    return _finish(request, creds, f"Signed in{who}. The Codex CLI will use this account.")


def _provider_refusal(error: str, description: str | None) -> str:
    text = f"The provider refused the sign-in ({clean_text(error, 64) or 'error'})"
    if clean_text(description):
        text += f": {clean_text(description)}"
    return text + ". Nothing was changed."


def _finish(request: Request, creds: Credentials | None, message: str) -> Response:
    """Report the outcome, then leave the callback URL (it carries the code) for a page showing it."""
    portal = _portal(request)
    if portal.on_login is not None:
        portal.on_login(creds, message)
    kind = "success" if creds is not None else "error"
    session = _session(request)
    if session is not None:
        session.flash(message, kind)
        return _home()
    result_id = secrets.token_urlsafe(16)
    portal.results[result_id] = (kind, message)
    return RedirectResponse(f"/auth/done?result={result_id}", status_code=303)


@router.get("/auth/done", name="login_done")
async def login_done(request: Request) -> Response:
    result = _portal(request).results.pop(request.query_params.get("result", ""), None)
    if result is None:
        return _render(
            request, "error.html", {"status": 404, "message": "There is no sign-in result to show."}, 404
        )
    kind, message = result
    return _render(
        request, "done.html", {"kind": kind, "message": message}, 200 if kind == "success" else 400
    )


@router.post("/api-key", name="api_key_save")
async def api_key_save(request: Request) -> Response:
    session, form = await _checked_form(request)
    portal = _portal(request)
    try:
        key = validate_api_key(form.get("api_key", ""))
    except PortalError as exc:
        return await _render_status(request, session, form_error=exc.message, status_code=400)
    await save_api_key(portal.store, key, portal.settings)
    creds = await asyncio.to_thread(portal.store.load)
    hint = creds.api_key_hint if creds else None
    session.flash(f"API key {hint or ''} saved. The Codex CLI will use it.".replace("  ", " "), "success")
    return _home()


@router.post("/refresh", name="token_refresh")
async def token_refresh(request: Request) -> Response:
    session, form = await _checked_form(request)
    portal = _portal(request)
    seen = form.get("seen")  # names the token the page showed, to refresh it only once
    creds = await asyncio.to_thread(portal.store.load)
    try:
        if creds is not None and seen and seen != _seen_digest(creds.access_token):
            fresh = creds  # refreshed by someone else since the page was shown
        else:
            seen_token = creds.access_token if creds else None
            fresh = await asyncio.to_thread(
                ensure_fresh, portal.store, portal.settings, force=True, seen_access_token=seen_token
            )
    except PortalError as exc:
        session.flash(f"Refresh failed: {exc.message}.", "error")
        return _home()
    left = f" It expires {format_utc(fresh.expires_at)}." if fresh.expires_at else ""
    session.flash(f"Access token refreshed.{left}", "success")
    return _home()


def _seen_digest(access_token: str | None) -> str:
    """Names the token the page showed without putting the token in the page."""
    import hashlib

    return hashlib.sha256((access_token or "").encode()).hexdigest()[:16]


@router.get("/logout", name="logout_confirm")
async def logout_confirm(request: Request) -> Response:
    session = _require_session(request)
    creds = await asyncio.to_thread(_portal(request).store.load)
    return _render(request, "logout.html", {"creds": creds, "csrf_token": session.csrf_token})


@router.post("/logout", name="logout")
async def logout(request: Request) -> Response:
    session, _ = await _checked_form(request)
    result = await sign_out(_portal(request).store, _portal(request).settings)
    if result.previous is None:
        session.flash("You were not signed in; nothing to do.")
    elif result.revoked is False:
        session.flash(
            "Signed out. The provider could not be reached to revoke the token; it was removed here.",
            "warning",
        )
    else:
        session.flash("Signed out. The credentials were removed from the config file.", "success")
    return _home()


@router.post("/device", name="device_start")
async def device_start(request: Request) -> Response:
    await _checked_form(request)
    portal = _portal(request)
    metadata = await _metadata(portal)
    settings = portal.settings
    device = await start_device_flow(
        metadata, client_id=settings.client_id, scope=settings.scope, timeout=settings.timeout
    )
    _cancel_device(portal)  # one pending sign-in with a code at a time
    login = DeviceLogin(device=device)
    login.task = asyncio.create_task(_run_device_login(portal, metadata, login))
    portal.device = login
    return RedirectResponse("/device", status_code=303)


async def _run_device_login(portal: Portal, metadata: ProviderMetadata, login: DeviceLogin) -> None:
    try:
        result = await complete_device_login(
            metadata, login.device, settings=portal.settings, store=portal.store
        )
    except PortalError as exc:
        login.outcome = ("error", f"Sign-in with a code failed: {exc.message}")
        if portal.on_login is not None:
            portal.on_login(None, login.outcome[1])
        return
    who = f" as {result.email}" if result.email else ""
    login.outcome = ("success", f"Signed in{who}. The Codex CLI will use this account.")
    if portal.on_login is not None:
        portal.on_login(await asyncio.to_thread(portal.store.load), login.outcome[1])


def _cancel_device(portal: Portal) -> None:
    if portal.device is not None and portal.device.task is not None:
        portal.device.task.cancel()
    portal.device = None


@router.get("/device", name="device_page")
async def device_page(request: Request) -> Response:
    session = _require_session(request)
    portal = _portal(request)
    login = portal.device
    if login is None:
        return _home()
    if login.outcome is not None:
        session.flash(login.outcome[1], login.outcome[0])
        portal.device = None
        return _home()
    context = {
        "device": login.device,
        "seconds_left": login.device.seconds_left(),
        "csrf_token": session.csrf_token,
    }
    return _render(request, "device.html", context)


@router.get("/api/device", name="api_device")
async def api_device(request: Request) -> Response:
    _require_session(request)
    login = _portal(request).device
    if login is None:
        return JSONResponse({"state": "none"})
    state = "pending" if login.outcome is None else login.outcome[0]
    return JSONResponse({"state": state, "seconds_left": login.device.seconds_left()})


@router.post("/device/cancel", name="device_cancel")
async def device_cancel(request: Request) -> Response:
    session, _ = await _checked_form(request)
    portal = _portal(request)
    if portal.device is not None:
        _cancel_device(portal)
        session.flash("Sign-in with a code cancelled. Nothing was changed.")
    return _home()
