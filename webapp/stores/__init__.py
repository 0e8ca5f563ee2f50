"""Where a login lives. One backend per place, each a `Store` (protocol.py):

    config_toml.py   the `[auth]` table of $CODEX_HOME/config.toml: the portal's contract
    auth_json.py     $CODEX_HOME/auth.json: what the Codex CLI itself reads
    sync.py          the two kept in step (`Stores`): the one object the rest of the portal uses

An OS keyring backend (the Codex CLI's `cli_auth_credentials_store = "keyring"`) would be one more
module here, implementing `Store`, chosen in `open_stores`.
"""

from __future__ import annotations

from webapp.settings import Settings
from webapp.stores.auth_json import AuthJsonStore
from webapp.stores.config_toml import ConfigTomlStore
from webapp.stores.sync import Stores


def open_stores(settings: Settings, *, lock_timeout: float = 30.0) -> Stores:
    """The stores of the settings' CODEX_HOME (auth.json left out under --no-codex-sync)."""
    config = ConfigTomlStore(settings.config_path, lock_timeout=lock_timeout)
    codex = (
        AuthJsonStore(settings.config_path.parent, lock_timeout=lock_timeout) if settings.codex_sync else None
    )
    return Stores(config, codex)


__all__ = ["AuthJsonStore", "ConfigTomlStore", "Stores", "open_stores"]
