from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from webapp.cli import main

KEY = "sk-test-0123456789abcdefwxyz"


@pytest.fixture(autouse=True)
def codex_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex"))
    for name in ("CODEX_PORTAL_ISSUER", "CODEX_PORTAL_CLIENT_ID", "CODEX_PORTAL_SCOPE", "CODEX_PORTAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "codex"


def test_status_signed_out(capsys: pytest.CaptureFixture[str], codex_home: Path) -> None:
    assert main(["status"]) == 1
    assert "Not signed in" in capsys.readouterr().out
    assert main(["status", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "signed_in": False,
        "method": None,
        "expires_at": None,
        "expired": False,
        "email": None,
        "api_key_hint": None,
        "config_path": str(codex_home / "config.toml"),
    }


def test_api_key_from_stdin_then_status_token_logout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, codex_home: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"  {KEY}\n"))
    assert main(["login", "--api-key"]) == 0
    err = capsys.readouterr().err
    assert "sk-…wxyz" in err and KEY not in err
    assert tomllib.loads((codex_home / "config.toml").read_text())["auth"] == {"api_key": KEY}
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "api_key" and report["api_key_hint"] == "sk-…wxyz"
    assert main(["token"]) == 0
    assert capsys.readouterr().out.strip() == KEY
    assert main(["logout"]) == 0
    assert "Signed out" in capsys.readouterr().err
    assert main(["status"]) == 1


@pytest.mark.parametrize("raw", ["", "\n", "sk-abc\n[evil]\n", "sk-\x00abc", "k" * 70_000])
def test_bad_api_key_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, raw: str, codex_home: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(raw))
    assert main(["login", "--api-key"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "evil" not in err
    assert not (codex_home / "config.toml").exists()


def test_api_key_is_never_taken_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["login", "--api-key", KEY]) == 2
    assert KEY not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "0"],
        ["--port", "http"],
        ["status", "--bogus"],
        ["login", "--device", "--api-key"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_token_when_signed_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token"]) == 1
    assert capsys.readouterr().err.startswith("Error: not signed in")


def test_corrupt_config_names_file_and_line(capsys: pytest.CaptureFixture[str], codex_home: Path) -> None:
    codex_home.mkdir()
    (codex_home / "config.toml").write_text('model = "o3"\n[auth\n')
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert str(codex_home / "config.toml") in err and "line 2" in err
    assert (codex_home / "config.toml").read_text() == 'model = "o3"\n[auth\n'


def test_remote_bind_needs_allow_remote(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--no-browser", "--host", "0.0.0.0"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_taken_port_is_a_clear_error(codex_home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "webapp", "serve", "--no-browser", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "CODEX_PORTAL_ISSUER": "http://127.0.0.1:9"},
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: port {port} is already in use (is codex-portal already running?); "
        "stop it or choose another with --port"
    )


def test_status_does_not_import_the_web_stack(codex_home: Path) -> None:
    heavy = ("fastapi", "starlette", "uvicorn", "httpx2", "authlib", "tomlkit", "jinja2")
    code = (
        "import sys; from webapp.cli import main; main(['status']); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.stdout.strip().splitlines()[-1] == "[]"
