"""The real Codex CLI (npm `@openai/codex`, pinned in tests/codex/package.json) driven by the tests.

``make codex`` (a step of ``make test``) runs ``npm ci`` in tests/codex; the package ships the native
binary, so nothing is downloaded at test time. Every call runs with a clean environment: ``HOME`` is
the parent of the given ``codex_home`` (never the real ~/.codex), ``CODEX_HOME`` is ``codex_home``, no
API key variable is inherited.

    run_codex(home, "--version")                      # CompletedProcess, stderr without the PATH warning
    login_status(home)                                # (1, "Not logged in")
    login_with_api_key(home, "sk-test-...")           # auth.json {"auth_mode": "apikey", ...}
    write_auth_json(home, id_token=..., ...)          # a ChatGPT login as `codex login` writes it
    refresh_with_codex(home, idp_token_endpoint)      # the CLI refreshes once; returns the new auth.json

What the binary does (0.169.0, checked): it reads and writes ``$CODEX_HOME/auth.json`` (0600) only,
prints everything of ``login``/``logout`` on stderr, and creates ``auth.lock`` (0644) and
``auth.json.lock`` (0600) in ``CODEX_HOME`` (``login`` also a ``log/`` folder; an ``exec`` that runs on
past its refresh also sessions/, skills/ and SQLite files). It refreshes only when the access token is
a JWT whose ``exp`` is within 5 minutes (with a shorter-lived token: on every run, at its start),
sending a JSON body ``{client_id, grant_type, refresh_token}`` with client id
``app_EMoamEEZ73f0CkXaXp7hrann`` to ``CODEX_REFRESH_TOKEN_URL_OVERRIDE``. After a refresh auth.json holds
exactly ``auth_mode, OPENAI_API_KEY, tokens{id_token, access_token, refresh_token, account_id},
last_refresh`` (nanosecond ``...Z`` timestamp): keys it does not know are dropped.

Every run is hermetic: requests to anything but loopback go to a proxy nobody listens on.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.idp import TestProvider

CODEX_BIN = Path(__file__).parent / "codex" / "node_modules" / ".bin" / "codex"
CODEX_VERSION = "0.169.0"
# The client id the Codex CLI signs in and refreshes with (start the test provider with it).
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
# Its scope (the test provider accepts the two connector scopes).
CODEX_SCOPE = "openid profile email offline_access api.connectors.read api.connectors.invoke"
OPENAI_AUTH_CLAIM = "https://api.openai.com/auth"
# It refreshes when the access token expires within this many seconds.
REFRESH_WINDOW = 300

# Harmless: under /tmp it refuses to create its helper binaries ("could not create PATH aliases").
_NOISE = ("could not create PATH aliases",)
# Where its requests to the internet go (HTTPS_PROXY and friends; loopback is exempt): nowhere.
DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK = "127.0.0.1,localhost,::1"
_INHERITED = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


class CodexCliError(RuntimeError):
    """The real Codex CLI is missing, or did not do what a harness function waited for."""


def _require_binary() -> None:
    if not CODEX_BIN.exists():
        raise CodexCliError(
            f"the real Codex CLI is missing ({CODEX_BIN}): run `make codex` "
            "(it runs `npm ci` in tests/codex; `make test` does it too)"
        )


def _clean(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if not any(n in line for n in _NOISE))


def codex_env(codex_home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Codex CLI run: PATH and locale kept, nothing of the person's own setup."""
    clean = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    clean.update(
        {
            "HOME": str(codex_home.parent),
            "CODEX_HOME": str(codex_home),
            "NO_COLOR": "1",
            "RUST_LOG": "error",
            # Hermetic even where there is a network: every request but loopback (the test provider)
            # goes to a proxy nobody listens on, so the CLI never reaches OpenAI with test tokens.
            **{name: DEAD_PROXY for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")},
            **{name: DEAD_PROXY for name in ("https_proxy", "http_proxy", "all_proxy")},
            "NO_PROXY": LOOPBACK,
            "no_proxy": LOOPBACK,
        }
    )
    clean.update(env or {})
    for key in ("OPENAI_API_KEY", "CODEX_API_KEY"):
        if not (env and key in env):
            clean.pop(key, None)
    return clean


def run_codex(
    codex_home: Path,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`codex <args>` with CODEX_HOME=codex_home; stderr without the harmless PATH-aliases warning."""
    _require_binary()
    codex_home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(CODEX_BIN), *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=codex_env(codex_home, env),
        cwd=codex_home,
        timeout=timeout,
        check=False,
    )
    done.stderr = _clean(done.stderr)
    return done


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr).strip()


def login_status(codex_home: Path) -> tuple[int, str]:
    """`codex login status`: exit code and its text ("Logged in using ChatGPT", "Not logged in", ...)."""
    done = run_codex(codex_home, "login", "status")
    return done.returncode, _output(done)


def login_with_api_key(codex_home: Path, key: str) -> subprocess.CompletedProcess[str]:
    """`codex login --with-api-key`, the key on stdin; raises when it fails."""
    done = run_codex(codex_home, "login", "--with-api-key", input=f"{key}\n")
    if done.returncode != 0:
        raise CodexCliError(f"codex login --with-api-key failed ({done.returncode}): {_output(done)}")
    return done


def logout(codex_home: Path) -> subprocess.CompletedProcess[str]:
    """`codex logout` (it deletes auth.json; exit 0 also when nobody was logged in)."""
    return run_codex(codex_home, "logout")


def read_auth_json(codex_home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((codex_home / "auth.json").read_text())
    return data


def _fingerprint(path: Path) -> tuple[int, int, bytes] | None:
    try:
        info = path.stat()
        return info.st_ino, info.st_mtime_ns, path.read_bytes()
    except FileNotFoundError:
        return None


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop a Codex CLI run (node wrapper and native binary: its own process group) and collect its output."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        stdout, stderr = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = process.communicate(timeout=5)
    return stdout, _clean(stderr)


def refresh_with_codex(codex_home: Path, token_url: str, timeout: float = 60) -> dict[str, Any]:
    """Let the real Codex CLI refresh the login in codex_home at `token_url`; returns the new auth.json.

    Runs `codex exec --skip-git-repo-check "hi"` with CODEX_REFRESH_TOKEN_URL_OVERRIDE=token_url, waits
    until auth.json changes, then stops it (its next step, the model API, is unreachable: see
    `codex_env`). The CLI refreshes only a JWT access token that expires within 5 minutes: give the
    provider a TTL below 300 s (it refreshes at the start of every run, ~0.1 s) or 310 s and let
    ~10 s pass (it ran ~10 s, then refreshed). Raises CodexCliError, with the CLI's output, when
    auth.json did not change within `timeout` or the CLI exited without changing it.
    """
    _require_binary()
    auth = codex_home / "auth.json"
    before = _fingerprint(auth)
    if before is None:
        raise CodexCliError(f"{auth} does not exist: nothing to refresh")
    process = subprocess.Popen(
        [str(CODEX_BIN), "exec", "--skip-git-repo-check", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=codex_env(codex_home, {"CODEX_REFRESH_TOKEN_URL_OVERRIDE": token_url}),
        cwd=codex_home,
        start_new_session=True,  # its own process group: stopped with the native binary it spawns
    )
    deadline = time.monotonic() + timeout
    changed = False
    exited: int | None = None  # its own exit code, when it ended before it was stopped
    try:
        while time.monotonic() < deadline:
            now = _fingerprint(auth)
            if now is not None and now != before:
                changed = True
                break
            exited = process.poll()
            if exited is not None:
                # exited: one last look (it may have written just before exiting)
                now = _fingerprint(auth)
                changed = now is not None and now != before
                break
            time.sleep(0.02)
    finally:
        stdout, stderr = _stop(process)
    if not changed:
        how = f"exited with code {exited}" if exited is not None else "was still running: stopped"
        raise CodexCliError(
            f"the Codex CLI did not rewrite {auth} within {timeout:.0f} s (it {how});\n"
            f"stdout:\n{stdout}\nstderr:\n{stderr}"
        )
    return read_auth_json(codex_home)


def codex_provider(access_token_ttl: int) -> TestProvider:
    """The test provider as the Codex CLI needs it: its client id, its claim, JWT access tokens
    (start it with `with codex_provider(290).start() as idp:`)."""
    from tests.idp import TestProvider

    return TestProvider(
        access_token_ttl=access_token_ttl,
        openai_auth_claim=True,
        jwt_access_tokens=True,
        extra_env={"IDP_CLIENT_ID": CODEX_CLIENT_ID},
    )


def codex_home_with_config(parent: Path) -> Path:
    """A private CODEX_HOME (0700) holding a config.toml the real Codex CLI accepts."""
    folder = parent / ".codex"
    folder.mkdir(mode=0o700)
    realistic_config(folder / "config.toml")
    return folder


def realistic_config(path: Path) -> str:
    """Write a config.toml the real Codex CLI accepts (model, a trusted project, an MCP server)."""
    text = (
        "# Codex CLI configuration, as a person keeps it (tests/codex_cli.py)\n"
        'model = "gpt-5"  # a string for the Codex CLI, never a table\n'
        'model_reasoning_effort = "medium"\n'
        "\n"
        "# Projects the person trusts\n"
        '[projects."/home/someone/project"]\n'
        'trust_level = "trusted"\n'
        "\n"
        "# A local MCP server\n"
        "[mcp_servers.x]\n"
        'command = "true"\n'
        'args = ["--flag"]  # kept as written\n'
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(claims: Mapping[str, Any]) -> str:
    """A JWT the Codex CLI can parse (it reads the payload, never checks the signature)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "hand-made"}
    parts = (json.dumps(header).encode(), json.dumps(dict(claims)).encode(), b"not a signature")
    return ".".join(_b64(part) for part in parts)


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified."""
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def _account_id(id_token: str) -> str | None:
    """The ID token's chatgpt_account_id, or None (also for a token that is not a JWT)."""
    try:
        auth = jwt_claims(id_token).get(OPENAI_AUTH_CLAIM)
    except (IndexError, ValueError):
        return None
    value = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return value if isinstance(value, str) else None


def chatgpt_id_token(
    email: str = "alice@example.test",
    account_id: str | None = "acct-alice",
    **claims: Any,
) -> str:
    """An unsigned ID token with the email and the `https://api.openai.com/auth` claim."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "https://auth.openai.com",
        "aud": CODEX_CLIENT_ID,
        "sub": "user-alice",
        "iat": now,
        "exp": now + 3600,
        "email": email,
        "email_verified": True,
    }
    if account_id is not None:
        payload[OPENAI_AUTH_CLAIM] = {"chatgpt_account_id": account_id, "chatgpt_plan_type": "plus"}
    payload.update(claims)
    return unsigned_jwt(payload)


def write_auth_json(
    codex_home: Path,
    *,
    api_key: str | None = None,
    id_token: str | None = None,
    access_token: str = "access-token-not-a-jwt",
    refresh_token: str = "refresh-token-hand-made",
    account_id: str | None = None,
    last_refresh: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write $CODEX_HOME/auth.json (0600) as the Codex CLI does (SPEC section 7); returns what was written.

    With `api_key`: ``{"auth_mode": "apikey", "OPENAI_API_KEY": key}``. Otherwise a ChatGPT login:
    `id_token` defaults to `chatgpt_id_token()`; `account_id` defaults to the ID token's
    ``chatgpt_account_id`` (null when absent). `extra` adds keys at the top level.
    """
    data: dict[str, Any]
    if api_key is not None:
        data = {"auth_mode": "apikey", "OPENAI_API_KEY": api_key}
    else:
        id_token = id_token if id_token is not None else chatgpt_id_token()
        if account_id is None:
            account_id = _account_id(id_token)
        when = (last_refresh or datetime.now(UTC)).astimezone(UTC)
        data = {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": id_token,
                "access_token": access_token,
                "refresh_token": refresh_token,
                "account_id": account_id,
            },
            "last_refresh": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
    data.update(extra or {})
    codex_home.mkdir(parents=True, exist_ok=True)
    path = codex_home / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(data, indent=2))
    os.chmod(path, 0o600)
    return data
