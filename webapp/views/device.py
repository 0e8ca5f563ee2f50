"""Sign in with a code on the page (RFC 8628, or the Codex CLI's device protocol for an issuer
without it): start, the waiting page, its status API, cancel."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from webapp.codex_device import DeviceUnavailable
from webapp.device import PHISHING_WARNING, complete_device_login, start_device_flow
from webapp.errors import PortalError
from webapp.portal import DeviceLogin, Portal
from webapp.views.common import (
    checked_form,
    home,
    portal_of,
    render,
    require_session,
    signed_in_message,
)

router = APIRouter()


@router.post("/device", name="device_start")
async def device_start(request: Request) -> Response:
    session, _ = await checked_form(request)
    portal = portal_of(request)
    await portal.discover()
    settings = portal.settings
    try:
        device = await start_device_flow(
            portal.account.provider, client_id=settings.client_id, scope=settings.scope
        )
    except DeviceUnavailable as exc:
        portal.device_unavailable = True  # the button is disabled from now on, and says why
        session.flash(exc.message, "error")
        return home()
    _cancel_device(portal)  # one pending sign-in with a code at a time
    login = DeviceLogin(device=device)
    login.task = asyncio.create_task(_run_device_login(portal, login))
    portal.device = login
    return RedirectResponse("/device", status_code=303)


async def _run_device_login(portal: Portal, login: DeviceLogin) -> None:
    account = portal.account
    try:
        creds = await complete_device_login(
            account.provider, login.device, client_id=portal.settings.client_id
        )
        await account.sign_in(creds)
    except PortalError as exc:
        login.outcome = ("error", f"Sign-in with a code failed: {exc.message}")
        if portal.on_login is not None:
            portal.on_login(None, login.outcome[1])
        return
    login.outcome = ("success", signed_in_message(creds.email))
    if portal.on_login is not None:
        portal.on_login(creds, login.outcome[1])


def _cancel_device(portal: Portal) -> None:
    if portal.device is not None and portal.device.task is not None:
        portal.device.task.cancel()
    portal.device = None


@router.get("/device", name="device_page")
async def device_page(request: Request) -> Response:
    session = require_session(request)
    portal = portal_of(request)
    login = portal.device
    if login is None:
        return home()
    if login.outcome is not None:
        session.flash(login.outcome[1], login.outcome[0])
        portal.device = None
        return home()
    context = {
        "device": login.device,
        "phishing_warning": PHISHING_WARNING,
        "seconds_left": login.device.seconds_left(),
        "csrf_token": session.csrf_token,
    }
    return render(request, "device.html", context)


@router.get("/api/device", name="api_device")
async def api_device(request: Request) -> Response:
    require_session(request)
    login = portal_of(request).device
    if login is None:
        return JSONResponse({"state": "none"})
    state = "pending" if login.outcome is None else login.outcome[0]
    return JSONResponse({"state": state, "seconds_left": login.device.seconds_left()})


@router.post("/device/cancel", name="device_cancel")
async def device_cancel(request: Request) -> Response:
    session, _ = await checked_form(request)
    portal = portal_of(request)
    if portal.device is not None:
        _cancel_device(portal)
        session.flash("Sign-in with a code cancelled. Nothing was changed.")
    return home()
