"""Port 1457: when 1455 is taken by another program, the default issuer's sign-in uses 1457, the
Codex CLI's other registered redirect (codex-rs/login/src/server.rs falls back the same way, from
its default port only). A port given by --port or CODEX_PORTAL_PORT is that port or nothing.

1455 is held by a plain socket of the test's own; if something else on this machine holds it
already, it is taken all the same, and every assertion still holds. The default issuer is never
reached: the port choice is tested, and the one end-to-end run (`serve`, `login`) sends its
discovery request to a proxy on a closed loopback port, so it falls back to the Codex CLI's paths
at once and never leaves this machine.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support import held
from webapp.cli import _settings, build_parser
from webapp.errors import PortalError
from webapp.server import ServerOptions, bind_sockets, choose_port
from webapp.settings import DEFAULT_ISSUER, DEFAULT_PORT, FALLBACK_PORT, Settings

FALLBACK_LINE = (
    f"Port {DEFAULT_PORT} is in use by another program; using {FALLBACK_PORT}, the Codex CLI's other "
    "registered sign-in port.\n"
)


def _is_free(port: int) -> bool:
    try:
        for sock in bind_sockets(Settings(config_path=Path("/nonexistent/config.toml"), port=port)):
            sock.close()
    except PortalError:
        return False
    return True


@pytest.fixture
def default_issuer(tmp_path: Path) -> Settings:
    """The default issuer and client, on the default port that nobody chose."""
    return Settings(config_path=tmp_path / "codex" / "config.toml", open_browser=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_1455_taken_moves_the_default_issuers_sign_in_to_1457(
    default_issuer: Settings, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert default_issuer.issuer == DEFAULT_ISSUER and default_issuer.may_fall_back
    if host == "::1" and not socket.has_ipv6:
        host = "127.0.0.1"
    with held(DEFAULT_PORT, host):
        chosen = choose_port(default_issuer)
    assert chosen.port == FALLBACK_PORT
    assert chosen.redirect_uri == "http://localhost:1457/auth/callback"
    assert capsys.readouterr().err == FALLBACK_LINE


def test_1455_free_is_kept(default_issuer: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    if _is_free(DEFAULT_PORT):
        assert choose_port(default_issuer).port == DEFAULT_PORT
        assert capsys.readouterr().err == ""
    else:  # another program has it on this machine: that is the fallback's case
        assert choose_port(default_issuer).port == FALLBACK_PORT


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"port_chosen": True}, id="a port given"),
        pytest.param({"issuer": "https://idp.example"}, id="another issuer"),
        pytest.param({"client_id": "another-client"}, id="another client"),
    ],
)
def test_no_fallback_for_a_chosen_port_or_another_issuer(
    default_issuer: Settings, settings: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    configured = default_issuer.with_overrides(**settings)
    assert not configured.may_fall_back
    with held(DEFAULT_PORT):
        assert choose_port(configured).port == DEFAULT_PORT  # and binding it says it is in use
        with pytest.raises(PortalError, match=f"port {DEFAULT_PORT} is already in use"):
            bind_sockets(configured)
    assert capsys.readouterr().err == ""


def test_flag_and_environment_choose_the_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path))
    for name in ("CODEX_PORTAL_PORT", "CODEX_PORTAL_ISSUER", "CODEX_PORTAL_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    parser, _ = build_parser()
    assert _settings(parser.parse_args(["login"])).may_fall_back
    assert not _settings(parser.parse_args(["login", "--port", "1455"])).may_fall_back
    assert not ServerOptions(port=1455).settings().may_fall_back
    assert ServerOptions().settings().may_fall_back
    monkeypatch.setenv("CODEX_PORTAL_PORT", "1455")
    assert not _settings(parser.parse_args(["serve"])).may_fall_back
    assert not Settings.from_env().may_fall_back
    assert not ServerOptions().settings().may_fall_back


# ---- end to end, never leaving this machine ----------------------------------------------------
def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "SSH_", "BROWSER"))}
    env = {
        k: v
        for k, v in env.items()
        if k.lower() not in ("https_proxy", "http_proxy", "all_proxy", "no_proxy")
    }
    # The default issuer's discovery goes to a proxy that is not there: refused at once, so the
    # Codex CLI's own paths are used, and nothing leaves loopback.
    return {**env, "CODEX_HOME": str(tmp_path / "codex"), "HTTPS_PROXY": "http://127.0.0.1:9", **extra}


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "nothing printed"
    return proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    return err


@pytest.mark.parametrize("command", ["serve", "login"])
def test_serve_and_login_use_1457_when_1455_is_taken(command: str, tmp_path: Path) -> None:
    if not _is_free(FALLBACK_PORT):
        pytest.fail(f"port {FALLBACK_PORT} is taken on this machine: the fallback cannot be shown")
    with held(DEFAULT_PORT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "webapp", command, "--no-browser"],
            env=_env(tmp_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = _first_line(proc)
        finally:
            err = _stop(proc)
    assert err.startswith(FALLBACK_LINE), err
    if command == "serve":
        assert re.fullmatch(r"http://localhost:1457/\?token=[A-Za-z0-9_-]{43}", line), line
    else:
        assert line.startswith(f"{DEFAULT_ISSUER}/oauth/authorize?")
        query = parse_qs(urlsplit(line).query)
        assert query["redirect_uri"] == ["http://localhost:1457/auth/callback"]
        assert "Waiting for the browser to come back to http://localhost:1457/auth/callback." in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_chosen_1455_that_is_taken_is_an_error(how: str, tmp_path: Path) -> None:
    flags = ["--port", "1455"] if how == "flag" else []
    extra = {"CODEX_PORTAL_PORT": "1455"} if how == "environment" else {}
    with held(DEFAULT_PORT):
        done = subprocess.run(
            [sys.executable, "-m", "webapp", "login", "--no-browser", *flags],
            env=_env(tmp_path, **extra),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"Error: port {DEFAULT_PORT} is already in use"), done.stderr
    assert "1457" not in done.stderr
