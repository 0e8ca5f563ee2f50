from __future__ import annotations

import os
from pathlib import Path

from starlette.testclient import TestClient

from webapp.checks import config_warnings


def test_no_warnings_for_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0o600)
    assert config_warnings(path, {}) == []
    assert config_warnings(tmp_path / "missing.toml", {}) == []


def test_file_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0o644)
    [warning] = config_warnings(path, {})
    assert "can be read by other users" in warning and "0644" in warning and f"chmod 600 {path}" in warning


def test_symlinked_file(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "codex.toml"
    target.parent.mkdir()
    target.write_text("")
    target.chmod(0o600)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    [warning] = config_warnings(link, {})
    assert "is a symlink to" in warning and str(target) in warning


def test_environment_variables_are_named_never_shown(tmp_path: Path) -> None:
    warnings = config_warnings(
        tmp_path / "config.toml", {"OPENAI_API_KEY": "sk-secret-value", "CODEX_API_KEY": ""}
    )
    assert len(warnings) == 1
    assert "OPENAI_API_KEY is set" in warnings[0] and "sk-secret-value" not in warnings[0]


def test_status_page_shows_warnings_and_the_expired_state(
    browser_client: TestClient, config_path: Path
) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text('[auth]\naccess_token = "at"\nexpires_at = 1000\n')
    os.chmod(config_path, 0o644)
    page = browser_client.get("/").text
    assert "Session expired" in page
    assert "cannot be\n  refreshed: sign in again" in page
    assert "can be read by other users" in page
    status = browser_client.get("/api/status").json()
    assert status["signed_in"] is False and status["expired"] is True and status["method"] == "oauth"
    config_path.write_text('[auth]\naccess_token = "at"\nrefresh_token = "rt"\nexpires_at = 1000\n')
    assert browser_client.get("/api/status").json()["signed_in"] is True
    page = browser_client.get("/").text
    assert "press <strong>Refresh</strong> now" in page
    assert 'data-expires="1000"' in page and "expired" in page


def test_a_hard_linked_config_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[auth]\napi_key = "sk-test-0123456789abcdef"\n')
    os.chmod(config, 0o600)
    os.link(config, tmp_path / "backup.toml")
    warnings = config_warnings(config, {})
    assert any("1 other name(s) (hard links)" in w and "even after sign-out" in w for w in warnings), warnings


def test_a_folder_others_can_write_in_is_named(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    path = home / "config.toml"
    path.write_text("")
    path.chmod(0o600)
    for mode in (0o700, 0o755, 0o1700):
        home.chmod(mode)
        assert config_warnings(path, {}) == [], oct(mode)  # read or list by others: the files are 0600
    for mode in (0o770, 0o777, 0o1777):
        home.chmod(mode)
        [warning] = config_warnings(path, {})
        assert f"{home} can be changed by other users" in warning and f"chmod 700 {home}" in warning
        assert f"mode {mode:04o}" in warning
