"""The portal's pages: status, sign-in and its callback, API key, refresh, sign-out, sign-in with a
code, and the status APIs.

Every view but the callback (guarded by state + PKCE) needs the session the launch URL opened;
every POST needs that session's CSRF token. POSTs end in a 303 redirect.
"""

from __future__ import annotations

from fastapi import APIRouter

from webapp.views import accounts, device, link, pages
from webapp.views.pages import finish_login, start_login

router = APIRouter()
router.include_router(pages.router)
router.include_router(device.router)
router.include_router(accounts.router)
router.include_router(link.router)

__all__ = ["finish_login", "router", "start_login"]
