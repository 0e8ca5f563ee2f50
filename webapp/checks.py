"""Things about this machine a person should know before trusting the saved login."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webapp.stores.sync import CodexView

# Variables the Codex CLI (or the OpenAI SDK under it) may prefer over the config file.
PREFERRED_ENV = ("OPENAI_API_KEY", "CODEX_API_KEY")


def config_warnings(
    path: Path, environ: Mapping[str, str] | None = None, *, codex: CodexView | None = None
) -> list[str]:
    """Plain-language warnings; never a secret (variables are named, their values never shown)."""
    env = os.environ if environ is None else environ
    warnings = [
        f"{name} is set in the environment codex-portal runs in: the Codex CLI may use it "
        "instead of the credentials saved here."
        for name in PREFERRED_ENV
        if env.get(name)
    ]
    auth_json = path.parent / "auth.json"
    if codex is not None and codex.store in ("keyring", "auto", "ephemeral") and auth_json.exists():
        warnings.append(
            f"{auth_json} is a plaintext copy of a login that the Codex CLI no longer reads "
            f'(cli_auth_credentials_store = "{codex.store}"); codex-portal leaves it alone. Remove it if '
            "you do not need it."
        )
    if codex is not None and codex.store == "file":
        warnings.extend(_mode_warning(auth_json))
    try:
        if path.is_symlink():
            warnings.append(
                f"{path} is a symlink to {os.path.realpath(path)}; saves update that file and keep the link."
            )
    except OSError:
        return warnings
    return warnings + _mode_warning(path) + _folder_warning(path.parent)


def _folder_warning(folder: Path) -> list[str]:
    """Another user who can write in the folder can put their own credentials there under the
    names both tools read (a file's own mode does not stop that)."""
    try:
        mode = stat.S_IMODE(os.stat(folder).st_mode)
    except OSError:
        return []
    if not mode & 0o022:
        return []
    return [
        f"{folder} can be changed by other users of this machine (mode {mode:04o}): they could put "
        f"their own credentials there for codex-portal and the Codex CLI to use. Run: chmod 700 {folder}"
    ]


def _mode_warning(path: Path) -> list[str]:
    try:
        st = os.stat(path)
    except OSError:
        return []
    warnings = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        warnings.append(
            f"{path} can be read by other users of this machine (mode {mode:04o}). "
            f"The next save makes it 0600; or run: chmod 600 {path}"
        )
    if st.st_nlink > 1:
        warnings.append(
            f"{path} has {st.st_nlink - 1} other name(s) (hard links). A save replaces this name only: "
            "the others keep the old content, credentials included, even after sign-out."
        )
    return warnings
