"""POST /api/link: a new one-time launch link for `codex-portal open` (webapp.reopen).

No browser session is needed (the person lost it): the caller presents the secret that this portal
recorded in $CODEX_HOME/codex-portal-serve.json, which only the person can read. Compared in
constant time; without it, or with another, a 403 and nothing minted. A browser cannot send it
from another site: a custom header needs a CORS preflight, which is never granted, and
cross-origin POSTs are refused by SecurityMiddleware before they get here.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from webapp.reopen import LINK_HEADER
from webapp.security import same_secret
from webapp.views.common import portal_of

router = APIRouter()


@router.post("/api/link", name="api_link")
async def api_link(request: Request) -> Response:
    portal = portal_of(request)
    if not same_secret(request.headers.get(LINK_HEADER), portal.link_secret):
        return JSONResponse(
            {"error": "A new link is given only to the codex-portal command of the same user."},
            status_code=403,
        )
    return JSONResponse({"token": portal.sessions.mint_launch_token()})
