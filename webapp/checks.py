"""Things about this machine a person should know before trusting the saved login."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

# Variables the Codex CLI (or the OpenAI SDK under it) may prefer over the config file.
PREFERRED_ENV = ("OPENAI_API_KEY", "CODEX_API_KEY")


def config_warnings(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """Plain-language warnings; never a secret (variables are named, their values never shown)."""
    env = os.environ if environ is None else environ
    warnings = [
        f"{name} is set in the environment codex-portal runs in: the Codex CLI may use it "
        "instead of the credentials saved here."
        for name in PREFERRED_ENV
        if env.get(name)
    ]
    try:
        if path.is_symlink():
            warnings.append(
                f"{path} is a symlink to {os.path.realpath(path)}; saves update that file and keep the link."
            )
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return warnings
    if mode & 0o077:
        warnings.append(
            f"{path} can be read by other users of this machine (mode {mode:04o}). "
            f"The next save makes it 0600; or run: chmod 600 {path}"
        )
    return warnings
