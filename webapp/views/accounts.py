"""The saved accounts on the page: switch to one, remove one (behind a confirmation)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from webapp.credentials import account_name
from webapp.errors import PortalError
from webapp.views.common import checked_form, home, portal_of, render

router = APIRouter()


@router.post("/accounts/switch", name="account_switch")
async def account_switch(request: Request) -> Response:
    session, form = await checked_form(request)
    try:
        entry = await portal_of(request).account.switch(account_name(form.get("name", "")))
    except PortalError as exc:
        session.flash(f"Could not switch: {exc.message}", "error")
        return home()
    email = entry.credentials.email
    who = f" ({email})" if email and email != entry.name else ""
    session.flash(f"Now using {entry.name}{who}. The Codex CLI follows.", "success")
    return home()


@router.post("/accounts/remove", name="account_remove")
async def account_remove(request: Request) -> Response:
    """Without `confirm`, the confirmation page; with it, the account is revoked and forgotten."""
    session, form = await checked_form(request)
    try:
        name = account_name(form.get("name", ""))
    except PortalError as exc:
        session.flash(f"Could not remove: {exc.message}", "error")
        return home()
    if form.get("confirm") != "yes":
        return render(request, "remove.html", {"name": name, "csrf_token": session.csrf_token})
    try:
        result = await portal_of(request).account.sign_out(name)
    except PortalError as exc:
        session.flash(f"Could not remove: {exc.message}", "error")
        return home()
    if result.revoked is False:
        session.flash(f"Removed {name}. The provider could not be reached to revoke its token.", "warning")
    else:
        session.flash(f"Removed {name}; its credentials are gone from this machine.", "success")
    return home()
