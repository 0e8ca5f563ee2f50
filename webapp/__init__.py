"""codex-portal: manage the Codex CLI's login from a localhost web page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from webapp.accounts import get_access_token
    from webapp.server import ServerOptions, run_login_server

__all__ = ["ServerOptions", "__version__", "get_access_token", "run_login_server"]


def __getattr__(name: str) -> Any:
    # The programmatic API is imported lazily so `codex-portal status` never loads the web stack.
    if name in ("ServerOptions", "run_login_server"):
        from webapp import server

        return getattr(server, name)
    if name == "get_access_token":
        from webapp import accounts

        return accounts.get_access_token
    raise AttributeError(f"module 'webapp' has no attribute {name!r}")
