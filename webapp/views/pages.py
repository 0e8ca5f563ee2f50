"""The status page and what it does: browser sign-in and its callback, API key, refresh, sign-out."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from webapp.checks import config_warnings
from webapp.credentials import Credentials, account_name, status_report, validate_api_key
from webapp.errors import AccessDenied, ConfigError, PortalError, sentence
from webapp.humanize import format_utc
from webapp.oauth import LoginRequest, authorization_url, exchange_code
from webapp.portal import Portal
from webapp.provider import clean_text
from webapp.security import Session
from webapp.views.common import (
    InlineAssets,
    checked_form,
    cookie_name,
    current_view,
    home,
    portal_of,
    render,
    require_session,
    session_of,
    signed_in_message,
)

router = APIRouter()


@router.get("/", name="status_page")
async def status_page(request: Request) -> Response:
    portal = portal_of(request)
    token = request.query_params.get("token")
    if token is not None:
        session_id = portal.sessions.redeem(token)
        if session_id is None and session_of(request) is None:
            raise AccessDenied(
                "This link was already used or is not valid. "
                "Run codex-portal again in a terminal for a new link."
            )
        response = home()  # the token leaves the address bar
        if session_id is not None:
            response.set_cookie(cookie_name(portal), session_id, httponly=True, samesite="lax", path="/")
            portal.opened_at = request.headers.get("host")
        return response
    session = require_session(request)
    return await _render_status(request, session)


def _refuse_form(session: Session, field_id: str, message: str) -> Response:
    """A form the person must correct: the page, reached by a redirect (a reload posts nothing
    again), says why at the top and under the field."""
    session.form_error = (field_id, sentence(message))
    return home()


async def _render_status(request: Request, session: Session) -> Response:
    portal = portal_of(request)
    config_error = None
    creds = codex = None
    try:
        creds, codex = await current_view(portal)
    except ConfigError as exc:
        config_error = exc.message
    accounts = []
    if config_error is None:
        try:
            accounts = portal.account.accounts(creds)  # no thread hop: a stat and the cached parse
        except ConfigError as exc:
            config_error = exc.message
    context = {
        "creds": creds,
        "accounts": accounts,
        "saved_accounts": [entry for entry in accounts if not entry.active],
        "codex": codex,
        "status": status_report(creds, config_path=str(portal.settings.config_path)),
        "config_error": config_error,
        "csrf_token": session.csrf_token,
        "flashes": session.take_flashes(),
        "form_error": session.take_form_error(),
        "now": int(time.time()),
        "settings": portal.settings,
        "seen": _seen_digest(creds.access_token) if creds else "",
        # Known once the issuer refused both RFC 8628 and the Codex CLI's device protocol.
        "device_unavailable": portal.device_unavailable,
        "warnings": config_warnings(portal.settings.config_path, codex=codex),
    }
    return render(request, "status.html", context)


@router.get("/api/status", name="api_status")
async def api_status(request: Request) -> Response:
    require_session(request)
    portal = portal_of(request)
    creds, codex = await current_view(portal)
    report = status_report(creds, config_path=str(portal.settings.config_path), codex_cli=codex.report())
    return JSONResponse(report)


@router.post("/login", name="login_start")
async def login_start(request: Request) -> Response:
    session, form = await checked_form(request)
    portal = portal_of(request)
    try:
        name = account_name(form["account_name"]) if form.get("account_name", "").strip() else None
    except PortalError as exc:
        return _refuse_form(session, "login_account_name", exc.message)
    signed_in = await asyncio.to_thread(portal.account.load) is not None
    url = await start_login(portal, LoginRequest(name=name, choose=signed_in))
    return RedirectResponse(url, status_code=303)


async def start_login(portal: Portal, request: LoginRequest | None = None) -> str:
    """A new pending sign-in and the provider URL that begins it."""
    metadata = await portal.discover()
    return authorization_url(metadata, portal.logins.new(portal.settings, request))


@router.get("/auth/callback", name="login_callback")
async def login_callback(request: Request) -> Response:
    result = await finish_login(portal_of(request), request.query_params)
    if result is None:
        return render(
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
    return _finish(request, *result)


async def finish_login(portal: Portal, params: Mapping[str, str]) -> tuple[Credentials | None, str] | None:
    """The end of a browser sign-in, from the callback's parameters: those the browser brings to
    /auth/callback, or those of the address pasted in the terminal (`login`), checked the same way.

    None when no pending sign-in has that `state` (unknown, already used, expired): nothing changed.
    Otherwise the pending sign-in is spent (one use), and the outcome is (the saved credentials, or
    None, and the message to show); the code goes to the token endpoint with its PKCE verifier.
    """
    login = portal.logins.pop(params.get("state", ""))
    if login is None:
        return None
    try:
        if "error" in params:
            raise PortalError(_provider_refusal(params.get("error", ""), params.get("error_description")))
        code = params.get("code")
        if not code:
            raise PortalError("the provider sent no authorization code; nothing was changed")
        creds = await exchange_code(portal.account.providers.get(login.issuer), login, code)
        await portal.account.sign_in(creds, name=login.request.name)
    except PortalError as exc:
        return None, f"Sign-in failed: {exc.message}"
    return creds, signed_in_message(creds.email)


def _provider_refusal(error: str, description: str | None) -> str:
    text = f"the provider refused the sign-in ({clean_text(error, 64) or 'error'})"
    said = (clean_text(description) or "").rstrip(".")  # (ours ends the sentence)
    if said:
        text += f": {said}"
    return text + "; nothing was changed"


def _finish(request: Request, creds: Credentials | None, message: str) -> Response:
    """Report the outcome, then leave the callback URL (it carries the code) for a page showing it."""
    portal = portal_of(request)
    kind = "success" if creds is not None else "error"
    session = session_of(request)
    if session is not None:
        session.flash(message, kind)
        response = home()
    else:
        response = RedirectResponse(f"/auth/done?result={portal.keep_result(kind, message)}", status_code=303)
    if portal.on_login is not None:
        portal.on_login(creds, message)  # (after keep_result: a one-shot login waits for the page)
    return response


@router.get("/auth/done", name="login_done")
async def login_done(request: Request) -> Response:
    result = portal_of(request).take_result(request.query_params.get("result", ""))
    if result is None:
        return render(
            request, "error.html", {"status": 404, "message": "There is no sign-in result to show."}, 404
        )
    kind, message = result
    inline: InlineAssets = request.app.state.inline_assets
    context = {"kind": kind, "message": message, "inline": inline}
    status = 200 if kind == "success" else 400
    return render(request, "done.html", context, status, {"content-security-policy": inline.csp})


@router.post("/api-key", name="api_key_save")
async def api_key_save(request: Request) -> Response:
    session, form = await checked_form(request)
    portal = portal_of(request)
    try:
        key = validate_api_key(form.get("api_key", ""))
    except PortalError as exc:
        return _refuse_form(session, "api_key", exc.message)
    try:
        name = account_name(form["account_name"]) if form.get("account_name", "").strip() else None
    except PortalError as exc:
        return _refuse_form(session, "key_account_name", exc.message)
    creds = await portal.account.save_key(key, name=name)
    hint = f" {creds.api_key_hint}" if creds.api_key_hint else ""
    session.flash(f"API key{hint} saved. The Codex CLI will use it.", "success")
    return home()


@router.post("/refresh", name="token_refresh")
async def token_refresh(request: Request) -> Response:
    session, form = await checked_form(request)
    portal = portal_of(request)
    seen = form.get("seen")  # names the token the page showed, to refresh it only once
    try:
        creds = await asyncio.to_thread(portal.account.load)
        if creds is not None and seen and seen != _seen_digest(creds.access_token):
            fresh = creds  # refreshed by someone else since the page was shown
        else:
            seen_token = creds.access_token if creds else None
            fresh = await portal.account.refresh(force=True, seen_access_token=seen_token)
    except PortalError as exc:
        session.flash(exc.message, "error")  # "Could not refresh: ..."
        return home()
    now = time.strftime("%H:%M:%S UTC", time.gmtime())
    left = f" The new one expires {format_utc(fresh.expires_at)}." if fresh.expires_at else ""
    session.flash(f"Access token refreshed just now ({now}).{left}", "success")
    return home()


def _seen_digest(access_token: str | None) -> str:
    """Names the token the page showed without putting the token in the page."""
    return hashlib.sha256((access_token or "").encode()).hexdigest()[:16]


@router.get("/logout", name="logout_confirm")
async def logout_confirm(request: Request) -> Response:
    session = require_session(request)
    creds, _ = await current_view(portal_of(request))
    return render(request, "logout.html", {"creds": creds, "csrf_token": session.csrf_token})


@router.post("/logout", name="logout")
async def logout(request: Request) -> Response:
    session, _ = await checked_form(request)
    result = await portal_of(request).account.sign_out()
    if result.previous is None:
        session.flash("You were not signed in; nothing to do.")
    elif result.revoked is False:
        session.flash(
            "Signed out. The provider could not be reached to revoke the token; it was removed here.",
            "warning",
        )
    else:
        session.flash("Signed out. The credentials were removed from the config file.", "success")
    return home()
