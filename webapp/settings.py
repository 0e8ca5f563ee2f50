"""Settings: flags > environment > defaults, read once and passed in explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_ISSUER = "https://auth.openai.com"
DEFAULT_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
DEFAULT_SCOPE = "openid profile email offline_access"
DEFAULT_PORT = 1455
FALLBACK_PORT = 1457  # the Codex CLI's other registered redirect port, when 1455 is taken
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


def default_codex_home(environ: Mapping[str, str]) -> Path:
    """As the Codex CLI finds it (codex-rs `find_codex_home`): CODEX_HOME unless it is empty; a blank
    one is a path to both tools, not a reason to fall back to ~/.codex behind the Codex CLI's back."""
    home = environ.get("CODEX_HOME")
    return Path(home).expanduser() if home else Path.home() / ".codex"


@dataclass(frozen=True)
class Settings:
    config_path: Path
    issuer: str = DEFAULT_ISSUER
    client_id: str = DEFAULT_CLIENT_ID
    scope: str = DEFAULT_SCOPE
    port: int = DEFAULT_PORT
    bind_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allow_remote: bool = False
    open_browser: bool = True
    timeout: float = 10.0  # seconds for each call to the provider
    revoke_timeout: float = 5.0
    codex_sync: bool = True  # keep the Codex CLI's auth.json in step (SPEC section 7)
    port_chosen: bool = False  # --port or CODEX_PORTAL_PORT: that port or nothing (no fallback)
    publish_link: bool = False  # `serve`: record port + secret in CODEX_HOME for `codex-portal open`

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, with_port: bool = True) -> Settings:
        env = os.environ if environ is None else environ
        settings = cls(config_path=default_codex_home(env) / "config.toml")
        port = _set(env, "CODEX_PORTAL_PORT") if with_port else None
        return settings.with_overrides(
            codex_sync=_sync_flag(env.get("CODEX_PORTAL_CODEX_SYNC")),
            issuer=_set(env, "CODEX_PORTAL_ISSUER"),
            client_id=_set(env, "CODEX_PORTAL_CLIENT_ID"),
            scope=_set(env, "CODEX_PORTAL_SCOPE"),
            port=parse_port(port, name="CODEX_PORTAL_PORT") if port else None,
            port_chosen=True if port else None,
        )

    def with_overrides(self, **values: object) -> Settings:
        """A copy with every value that is not None replaced (flags win over the environment)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]

    @property
    def codex_home(self) -> Path:
        return self.config_path.parent

    @property
    def redirect_uri(self) -> str:
        return f"http://localhost:{self.port}/auth/callback"

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def may_fall_back(self) -> bool:
        """The Codex CLI's client at the default issuer, on 1455 because nobody chose a port: when
        1455 is taken, 1457 (also registered for that client) is used instead."""
        return (
            not self.port_chosen
            and self.port == DEFAULT_PORT
            and self.issuer.rstrip("/") == DEFAULT_ISSUER
            and self.client_id == DEFAULT_CLIENT_ID
        )


def _set(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value; an empty or blank one (`VAR=` in a script) counts as unset."""
    value = env.get(name, "").strip()
    return value or None


def _sync_flag(text: str | None) -> bool | None:
    if text is None or not text.strip():
        return None
    from webapp.errors import PortalError

    value = text.strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise PortalError(f"invalid CODEX_PORTAL_CODEX_SYNC {text!r}: use 1 (keep auth.json in step) or 0")


def parse_port(text: str, *, name: str = "") -> int:
    from webapp.errors import PortalError

    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        where = f" in {name}" if name else ""
        raise PortalError(f"invalid port {text!r}{where}: use a number from 1 to 65535")
    return port
