"""auth.json, the Codex CLI's own store, and the two stores kept in step (SPEC section 7).

These drive the stores directly; tests/test_codex_interop.py has the real Codex CLI binary judge
what it sees.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.codex_cli import realistic_config
from webapp.cli import main
from webapp.credentials import OPENAI_AUTH_CLAIM, Credentials, fingerprint
from webapp.settings import Settings
from webapp.stores import ConfigTomlStore, open_stores
from webapp.stores.sync import RECORD_NAME

KEY = "sk-proj-0123456789abcdefghijWXYZ"
OTHER_KEY = "sk-other-9876543210zyxwvuts-abcd"


def jwt(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def login(n: int = 1, *, email: str = "ada@example.com", account: str = "acct-ada") -> Credentials:
    return Credentials.oauth(
        access_token=jwt({"exp": 1_900_000_000 + n, "n": n}),
        refresh_token=f"rt-{n}",
        expires_at=1_900_000_000 + n,
        id_token=jwt(
            {
                "iss": "https://auth.example.com",
                "aud": "app_test",
                "sub": email,
                "email": email,
                OPENAI_AUTH_CLAIM: {"chatgpt_account_id": account, "chatgpt_plan_type": "plus"},
            }
        ),
        issuer="https://auth.example.com",
        client_id="app_test",
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "codex"
    folder.mkdir(mode=0o700)
    realistic_config(folder / "config.toml")
    return folder


def save(home: Path, creds: Credentials | None) -> None:
    with open_stores(Settings(config_path=home / "config.toml")).transaction() as tx:
        tx.save(creds)


def auth_json(home: Path) -> dict[str, object]:
    data = json.loads((home / "auth.json").read_text())
    assert isinstance(data, dict)
    return data


# ---- the file, as the Codex CLI writes it ----------------------------------------------------------
def test_a_sign_in_is_written_in_the_codex_format(home: Path) -> None:
    creds = login()
    save(home, creds)
    data = auth_json(home)
    assert data["auth_mode"] == "chatgpt" and data["OPENAI_API_KEY"] is None
    assert data["tokens"] == {
        "id_token": creds.id_token,
        "access_token": creds.access_token,
        "refresh_token": "rt-1",
        "account_id": "acct-ada",
    }
    refreshed = str(data["last_refresh"])
    assert refreshed.endswith("Z") and abs(time.time() - _epoch(refreshed)) < 60
    assert stat.S_IMODE(os.stat(home / "auth.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home / "auth.lock").st_mode) == 0o600


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_key_is_written_in_the_codex_format_and_tokens_go(home: Path) -> None:
    save(home, login())
    save(home, Credentials.key(KEY))
    assert auth_json(home) == {"auth_mode": "apikey", "OPENAI_API_KEY": KEY}


def test_sign_out_removes_the_file_and_the_table(home: Path) -> None:
    before = (home / "config.toml").read_text()
    save(home, login())
    save(home, None)
    assert not (home / "auth.json").exists()
    assert (home / "config.toml").read_text() == before


def test_keys_we_do_not_know_are_kept(home: Path) -> None:
    (home / "auth.json").write_text(
        json.dumps(
            {
                "OPENAI_API_KEY": None,
                "tokens": {**_tokens(login(1)), "extra": [1, 2]},
                "future_field": {"x": 1},
                "last_refresh": "2026-01-01T00:00:00Z",
            }
        )
    )
    save(home, login(2))
    data = auth_json(home)
    assert data["future_field"] == {"x": 1}
    tokens = data["tokens"]
    assert isinstance(tokens, dict) and tokens["extra"] == [1, 2] and tokens["refresh_token"] == "rt-2"


def _tokens(creds: Credentials) -> dict[str, object]:
    return {
        "id_token": creds.id_token,
        "access_token": creds.access_token,
        "refresh_token": creds.refresh_token,
        "account_id": creds.account_id,
    }


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.dictionaries(st.text(min_size=1, max_size=10), JSON_VALUES, max_size=4))
def test_property_any_content_we_do_not_own_survives(home: Path, extra: dict[str, object]) -> None:
    ours = {"auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh"}
    extra = {k: v for k, v in extra.items() if k not in ours}
    (home / "auth.json").write_text(json.dumps({**extra, "OPENAI_API_KEY": OTHER_KEY, "auth_mode": "apikey"}))
    (home / RECORD_NAME).unlink(missing_ok=True)
    save(home, login(3))
    data = auth_json(home)
    assert {k: v for k, v in data.items() if k not in ours} == extra
    save(home, Credentials.key(KEY))
    assert {k: v for k, v in auth_json(home).items() if k not in ours} == extra


def test_a_symlinked_auth_json_stays_a_symlink(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"OPENAI_API_KEY": OTHER_KEY, "auth_mode": "apikey"}))
    (home / "auth.json").symlink_to(target)
    save(home, Credentials.key(KEY))
    assert (home / "auth.json").is_symlink()
    assert json.loads(target.read_text())["OPENAI_API_KEY"] == KEY
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_a_world_readable_auth_json_is_tightened_and_warned_about(home: Path) -> None:
    (home / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": KEY, "auth_mode": "apikey"}))
    os.chmod(home / "auth.json", 0o644)
    from webapp.checks import config_warnings

    _, codex = open_stores(Settings(config_path=home / "config.toml")).view(sync=False)
    assert any(
        "auth.json can be read by other users" in w
        for w in config_warnings(home / "config.toml", {}, codex=codex)
    )
    save(home, Credentials.key(OTHER_KEY))
    assert stat.S_IMODE(os.stat(home / "auth.json").st_mode) == 0o600


# ---- bad input: never overwritten, one clear line naming the file ----------------------------------
BAD: dict[str, Callable[[Path], object]] = {
    "not JSON": lambda p: p.write_text("{not json"),
    "not an object": lambda p: p.write_text("[1, 2]"),
    "deeply nested": lambda p: p.write_text("[" * 100_000),
    "a directory": lambda p: p.mkdir(),
    "a FIFO": lambda p: os.mkfifo(p),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_auth_json_is_named_and_never_overwritten(
    home: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = home / "auth.json"
    BAD[kind](path)
    before = path.read_bytes() if path.is_file() else None
    save(home, Credentials.key(KEY))  # config.toml goes on alone
    assert ConfigTomlStore(home / "config.toml").load() == Credentials.key(KEY)
    assert (path.read_bytes() if path.is_file() else None) == before
    creds, codex = open_stores(Settings(config_path=home / "config.toml")).view()
    assert creds == Credentials.key(KEY) and not codex.in_sync
    assert codex.problem is not None and str(path) in codex.problem
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODEX_HOME", str(home))
        assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"Codex CLI: {codex.problem}" in out and "Traceback" not in out
    assert (path.read_bytes() if path.is_file() else None) == before


# ---- both ways: the newest change wins -------------------------------------------------------------
def test_an_existing_codex_login_at_first_start_is_the_login_shown(home: Path) -> None:
    creds = login()
    (home / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": None, "tokens": _tokens(creds)}))
    shown, codex = open_stores(Settings(config_path=home / "config.toml")).view()
    assert shown is not None and shown.access_token == creds.access_token and shown.email == "ada@example.com"
    assert shown.issuer == "https://auth.example.com" and shown.client_id == "app_test"
    assert shown.expires_at == 1_900_000_001  # the access token's exp
    assert codex.in_sync and codex.signed_in
    assert ConfigTomlStore(home / "config.toml").load() == shown  # [auth] follows


def test_a_refresh_by_the_codex_cli_reaches_config_toml(home: Path) -> None:
    save(home, login(1))
    data = auth_json(home)
    data["tokens"] = _tokens(login(2))  # what the Codex CLI writes after it refreshed
    (home / "auth.json").write_text(json.dumps(data))
    shown = open_stores(Settings(config_path=home / "config.toml")).load()
    assert shown is not None and shown.refresh_token == "rt-2"
    config = ConfigTomlStore(home / "config.toml").load()
    assert config is not None and config.refresh_token == "rt-2"


def test_codex_logout_signs_the_portal_out(home: Path) -> None:
    save(home, login(1))
    (home / "auth.json").unlink()  # what `codex logout` does
    assert open_stores(Settings(config_path=home / "config.toml")).load() is None
    assert ConfigTomlStore(home / "config.toml").load() is None


def test_a_hand_edit_of_config_toml_reaches_auth_json(home: Path) -> None:
    save(home, login(1))
    ConfigTomlStore(home / "config.toml").save_api_key(KEY)  # another writer of [auth] only
    assert open_stores(Settings(config_path=home / "config.toml")).load() == Credentials.key(KEY)
    assert auth_json(home) == {"auth_mode": "apikey", "OPENAI_API_KEY": KEY}


def test_when_both_changed_the_newer_file_wins(home: Path) -> None:
    save(home, login(1))
    ConfigTomlStore(home / "config.toml").save_api_key(KEY)
    (home / "auth.json").write_text(json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": OTHER_KEY}))
    old = time.time() - 100
    os.utime(home / "config.toml", (old, old))
    assert open_stores(Settings(config_path=home / "config.toml")).load() == Credentials.key(OTHER_KEY)


def test_without_a_record_auth_json_wins_a_tie(home: Path) -> None:
    ConfigTomlStore(home / "config.toml").save_api_key(KEY)
    (home / "auth.json").write_text(json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": OTHER_KEY}))
    assert open_stores(Settings(config_path=home / "config.toml")).load() == Credentials.key(OTHER_KEY)


def test_without_a_record_a_login_wins_over_none(home: Path) -> None:
    ConfigTomlStore(home / "config.toml").save_api_key(KEY)
    assert open_stores(Settings(config_path=home / "config.toml")).load() == Credentials.key(KEY)
    assert auth_json(home)["OPENAI_API_KEY"] == KEY


def test_the_record_holds_no_secret(home: Path) -> None:
    creds = login()
    save(home, creds)
    text = (home / RECORD_NAME).read_text()
    for secret in (creds.access_token, creds.refresh_token, creds.id_token):
        assert secret and secret not in text
    assert json.loads(text) == {"config.toml": fingerprint(creds), "auth.json": fingerprint(creds)}
    assert stat.S_IMODE(os.stat(home / RECORD_NAME).st_mode) == 0o600


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path sits under a 0700 folder)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="codex-portal-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_read_only_home_shows_the_newest_and_writes_nothing(open_tmp: Path) -> None:
    """Run by a user who can read the home but not write it (root ignores permissions, so the
    check runs as `nobody`): the stores are found apart, the newest login is shown, and nothing
    is created or changed."""
    import subprocess
    import sys

    tmp_path = open_tmp
    home = tmp_path / "ro"
    home.mkdir()
    realistic_config(home / "config.toml")
    ConfigTomlStore(home / "config.toml").save_api_key(KEY)
    (home / "auth.json").write_text(json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": OTHER_KEY}))
    for path in home.iterdir():
        os.chmod(path, 0o644)  # readable by `nobody`, writable by nobody but root
    os.chmod(tmp_path, 0o755)
    os.chmod(home, 0o555)
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    as_root = os.geteuid() == 0
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if as_root else []
    done = subprocess.run(
        [*command, sys.executable, "-m", "webapp", "status", "--json"],
        env={"PATH": os.environ["PATH"], "CODEX_HOME": str(home), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["api_key_hint"] == "sk-…abcd"  # auth.json's, which wins without a record
    assert report["codex_cli"]["in_sync"] is False
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before


def test_a_login_without_an_id_token_is_not_given_to_the_codex_cli(home: Path) -> None:
    creds = Credentials.oauth(
        access_token="opaque",
        refresh_token="rt",
        expires_at=None,
        id_token=None,
        issuer="https://auth.example.com",
        client_id="app_test",
    )
    save(home, creds)
    assert not (home / "auth.json").exists()
    shown, codex = open_stores(Settings(config_path=home / "config.toml")).view()
    assert shown == creds and not codex.in_sync and not codex.signed_in
    assert codex.problem == "the Codex CLI cannot use this sign-in: the provider issued no ID token"


# ---- the person's choices ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["keyring", "auto", "ephemeral"])
def test_another_codex_store_gets_no_auth_json(home: Path, mode: str) -> None:
    with (home / "config.toml").open("a") as file:
        file.write(f'\ncli_auth_credentials_store = "{mode}"\n')
    config = (home / "config.toml").read_text()
    config = config.replace(f'\ncli_auth_credentials_store = "{mode}"\n', "")
    (home / "config.toml").write_text(f'cli_auth_credentials_store = "{mode}"\n' + config)
    save(home, login())
    assert not (home / "auth.json").exists()
    _, codex = open_stores(Settings(config_path=home / "config.toml")).view()
    assert codex.report() == {"store": mode, "path": None, "signed_in": False, "in_sync": False}
    assert "which codex-portal does not reach" in codex.summary()


def test_a_leftover_auth_json_under_the_keyring_is_named_and_left_alone(home: Path) -> None:
    text = (home / "config.toml").read_text()
    (home / "config.toml").write_text('cli_auth_credentials_store = "keyring"\n' + text)
    leftover = json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": OTHER_KEY})
    (home / "auth.json").write_text(leftover)
    save(home, Credentials.key(KEY))
    assert (home / "auth.json").read_text() == leftover
    from webapp.checks import config_warnings

    _, codex = open_stores(Settings(config_path=home / "config.toml")).view()
    assert any("plaintext copy" in w for w in config_warnings(home / "config.toml", {}, codex=codex))


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_no_codex_sync_leaves_auth_json_alone(
    home: Path, how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "auth.json").write_text(json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": OTHER_KEY}))
    before = (home / "auth.json").read_bytes()
    monkeypatch.setenv("CODEX_HOME", str(home))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(KEY))
    args = ["login", "--api-key"]
    if how == "flag":
        args.append("--no-codex-sync")
    else:
        monkeypatch.setenv("CODEX_PORTAL_CODEX_SYNC", "0")
    assert main(args) == 0
    assert (home / "auth.json").read_bytes() == before
    assert ConfigTomlStore(home / "config.toml").load() == Credentials.key(KEY)
    status = ["status", "--json"] + (["--no-codex-sync"] if how == "flag" else [])
    capsys.readouterr()
    assert main(status) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["api_key_hint"] == "sk-…WXYZ" and report["codex_cli"]["store"] == "off"


def test_a_bad_sync_variable_is_named(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CODEX_HOME", str(home))
    monkeypatch.setenv("CODEX_PORTAL_CODEX_SYNC", "maybe")
    assert main(["status"]) == 1
    assert "CODEX_PORTAL_CODEX_SYNC" in capsys.readouterr().err


# ---- the default issuer gets what `codex login` asks for -------------------------------------------
def _authorize_query(issuer: str, scope: str | None = None) -> dict[str, list[str]]:
    from urllib.parse import parse_qs, urlsplit

    from webapp.oauth import PendingLogins, authorization_url
    from webapp.provider import ProviderMetadata

    settings = Settings(config_path=Path("/nonexistent/config.toml"), issuer=issuer)
    if scope is not None:
        settings = settings.with_overrides(scope=scope)
    metadata = ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=f"{issuer}/oauth/authorize",
        token_endpoint=f"{issuer}/oauth/token",
    )
    return parse_qs(urlsplit(authorization_url(metadata, PendingLogins().new(settings))).query)


def test_the_default_issuer_is_asked_what_the_codex_cli_asks() -> None:
    query = _authorize_query("https://auth.openai.com")
    assert query["scope"] == ["openid profile email offline_access api.connectors.read api.connectors.invoke"]
    assert query["id_token_add_organizations"] == ["true"]
    assert query["codex_cli_simplified_flow"] == ["true"]
    assert query["originator"] == ["codex_cli_rs"]
    assert query["code_challenge_method"] == ["S256"] and query["client_id"] == [
        "app_EMoamEEZ73f0CkXaXp7hrann"
    ]


def test_another_issuer_or_a_chosen_scope_gets_no_codex_extras() -> None:
    other = _authorize_query("https://idp.example.com")
    assert other["scope"] == ["openid profile email offline_access"]
    assert not {"id_token_add_organizations", "codex_cli_simplified_flow", "originator"} & set(other)
    chosen = _authorize_query("https://auth.openai.com", scope="openid email")
    assert chosen["scope"] == ["openid email"]


def test_sign_out_through_a_symlinked_auth_json_removes_the_secrets(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "codex-auth.json"
    target.parent.mkdir()
    target.write_text("{}")
    (home / "auth.json").symlink_to(target)
    save(home, Credentials.key(KEY))
    assert KEY in target.read_text()
    save(home, None)
    assert not target.exists()  # the credentials are gone, not only the link to them
    assert (home / "auth.json").is_symlink()  # the person's link stays, for the next sign-in
    save(home, Credentials.key(OTHER_KEY))
    assert OTHER_KEY in target.read_text()


def test_saving_with_a_broken_auth_json_says_where_it_went(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "auth.json").write_text("{not json")
    monkeypatch.setenv("CODEX_HOME", str(home))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(KEY))
    assert main(["login", "--api-key"]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"Saved API key sk-…WXYZ to {home / 'config.toml'} only ({home / 'auth.json'} is not valid JSON "
        "(line 1); codex-portal will not overwrite it: fix it or remove it).\n"
    )
