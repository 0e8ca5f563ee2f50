"""Another local user, who can reach the loopback port but has not got the launch token, against
the real server: nothing is revealed, nothing changes, the launch token cannot be guessed and is in
no log line and no process's argv. And the sign-in callback abused against the real provider: no
pending sign-in, a wrong state, a replay, the same callback twice at once, markup in `error`."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
import pytest

import webapp.files
import webapp.stores.config_toml
from tests.conftest import free_port
from tests.idp import TestProvider
from tests.portal import PortalServer, page_csrf
from webapp.security import Sessions
from webapp.settings import Settings

USER_FILE = '# my settings\nmodel = "o3"\n\n[tools]\nweb_search = true  # keep me\n'
VICTIM_EMAIL = "victim@example.test"
API_KEY = "sk-victim-0123456789abcdefWXYZ"
LOGGERS = (
    "codex_portal",
    "codex_portal.access",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
)
GUESSES = 200
CODEX_PORTAL = Path(sys.executable).parent / "codex-portal"


def _jwt_with(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass(frozen=True)
class Victim:
    """What a signed-in person's portal holds, and must never show to someone without the session."""

    settings: Settings
    launch_token: str
    secrets: tuple[str, ...]  # never in any answer to the other user

    @property
    def path(self) -> Path:
        return self.settings.config_path


def _victim(tmp_path: Path, issuer: str, client_id: str, method: str) -> Victim:
    path = tmp_path / "victim-home" / "config.toml"
    path.parent.mkdir()
    access, refresh = "at-victim-" + secrets.token_hex(8), "rt-victim-" + secrets.token_hex(8)
    id_token = _jwt_with({"email": VICTIM_EMAIL, "sub": "victim"})
    if method == "oauth":
        auth = (
            f'access_token = "{access}"\nrefresh_token = "{refresh}"\nexpires_at = 4000000000\n'
            f'id_token = "{id_token}"\nissuer = "{issuer}"\nclient_id = "{client_id}"\n'
        )
        shown: tuple[str, ...] = (VICTIM_EMAIL, access, refresh, id_token)
    else:
        auth = f'api_key = "{API_KEY}"\n'
        shown = (API_KEY, "sk-…WXYZ", "WXYZ")
    path.write_text(USER_FILE + "\n[auth]\n" + auth)
    path.chmod(0o600)
    settings = Settings(
        config_path=path, issuer=issuer, client_id=client_id, port=free_port(), open_browser=False, timeout=5
    )
    launch = Sessions.new_launch_token()
    return Victim(settings, launch, (*shown, str(path), str(path.parent), "victim-home", launch))


@contextlib.contextmanager
def _serving(victim: Victim) -> Iterator[tuple[PortalServer, httpx2.Client]]:
    """The real server, and the victim's own browser holding the session."""
    with (
        PortalServer(victim.settings, launch_token=victim.launch_token) as server,
        httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=20) as owner,
    ):
        assert owner.get(server.launch_url).status_code == 303
        yield server, owner


def _stranger(server: PortalServer, cookies: dict[str, str] | None = None) -> httpx2.Client:
    """The other local user: same machine, same port, no launch token (and no cookie, or a made-up
    one). Posts carry the portal's own Origin, so that only the missing session can stop them."""
    return httpx2.Client(
        base_url=server.base_url,
        follow_redirects=False,
        timeout=20,
        headers={"Origin": server.base_url},
        cookies=cookies,
    )


def _assert_reveals_nothing(response: httpx2.Response, victim: Victim) -> None:
    assert "set-cookie" not in response.headers
    text = response.text
    for secret in victim.secrets:
        assert secret not in text, f"{response.request.method} {response.request.url.path} reveals {secret!r}"


# ---- the other local user, without the session ---------------------------------------------------
REFUSED = [
    ("GET", "/", 403),
    ("GET", "/api/status", 403),
    ("GET", "/logout", 403),
    ("GET", "/device", 403),
    ("GET", "/api/device", 403),
    ("POST", "/login", 403),
    ("POST", "/logout", 403),
    ("POST", "/device", 403),
    ("POST", "/device/cancel", 403),
    ("POST", "/refresh", 403),
    ("POST", "/api-key", 403),
]


@pytest.mark.parametrize("method", ["oauth", "api_key"])
def test_without_the_session_nothing_is_revealed_and_nothing_changes(
    idp: TestProvider, tmp_path: Path, method: str
) -> None:
    victim = _victim(tmp_path, idp.issuer, idp.client_id, method)
    before = victim.path.read_bytes()
    with _serving(victim) as (server, owner):
        # The victim is in the middle of a sign-in with a code: its user code must not leak either.
        assert owner.post("/device", data={"csrf_token": page_csrf(owner)}).status_code == 303
        device_page = owner.get("/device").text
        match = re.search(r'id="user-code"[^>]*>([^<]+)<', device_page)
        assert match
        user_code = match.group(1).strip()
        owner_page = owner.get("/").text
        assert (VICTIM_EMAIL if method == "oauth" else "sk-…WXYZ") in owner_page  # what is at stake
        assert str(victim.path) in owner_page
        victim = Victim(victim.settings, victim.launch_token, (*victim.secrets, user_code))

        forged = {f"codex_portal_{victim.settings.port}": secrets.token_urlsafe(32)}
        for cookies in (None, forged):
            with _stranger(server, cookies) as stranger:
                for verb, path, status in REFUSED:
                    form = {"csrf_token": "guess", "api_key": "sk-attacker-key-0000000000"}
                    response = stranger.request(verb, path, data=form if verb == "POST" else None)
                    assert response.status_code == status, (verb, path, response.status_code)
                    _assert_reveals_nothing(response, victim)
        with _stranger(server) as stranger:
            for _ in range(GUESSES // 4):  # results of sign-ins finished in another browser
                response = stranger.get("/auth/done", params={"result": secrets.token_urlsafe(16)})
                assert response.status_code == 404
                _assert_reveals_nothing(response, victim)

        assert victim.path.read_bytes() == before
        assert owner.get("/api/device").json()["state"] == "pending"  # not cancelled by the stranger
        assert owner.get("/").status_code == 200  # the victim's session still works


def test_the_result_of_a_sign_in_cannot_be_guessed_and_shows_once(idp: TestProvider, tmp_path: Path) -> None:
    """A sign-in finished in a browser without the session (as `codex-portal login` does it) parks its
    result under a random id: guessing finds nothing; the right id shows it once."""
    victim = _victim(tmp_path, idp.issuer, idp.client_id, "api_key")
    with _serving(victim) as (server, owner):
        start = owner.post("/login", data={"csrf_token": page_csrf(owner)})
        callback = idp.login_without_browser(start.headers["location"], login="victim")
        with httpx2.Client(follow_redirects=False, timeout=20) as other_browser:
            done = other_browser.get(callback)
        assert done.status_code == 303 and done.headers["location"].startswith("/auth/done?result=")
        with _stranger(server) as stranger:
            for _ in range(GUESSES):
                response = stranger.get("/auth/done", params={"result": secrets.token_urlsafe(16)})
                assert response.status_code == 404 and VICTIM_EMAIL not in response.text
            shown = stranger.get(done.headers["location"])  # whoever has the id: it is one-time
            assert shown.status_code == 200 and "Signed in as victim@example.test" in shown.text
            assert stranger.get(done.headers["location"]).status_code == 404


# ---- the launch token ------------------------------------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def _logs() -> Iterator[list[str]]:
    """Every line the portal's and uvicorn's loggers write, at the levels the portal set. Attach once
    the server has started: uvicorn configures its loggers when it starts. (Lowering the levels would
    log what the portal does not: uvicorn's access log is off only as long as "uvicorn.access" has no
    handler and a level above INFO; its access logger is also filtered, see the test below.)"""
    handler = _Lines()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler.lines
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    saved = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name in LOGGERS
        for logger in [logging.getLogger(name)]
    }
    try:
        yield
    finally:
        for name, (level, handlers, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled


def _near_misses(token: str) -> list[str]:
    flipped = ("A" if token[0] != "A" else "B") + token[1:]
    return [token[:-1], token[1:], token + "A", flipped, token.swapcase(), token[: len(token) // 2], "", " "]


def test_the_launch_token_cannot_be_guessed_and_is_in_no_log_line(idp: TestProvider, tmp_path: Path) -> None:
    victim = _victim(tmp_path, idp.issuer, idp.client_id, "oauth")
    token = victim.launch_token
    with PortalServer(victim.settings, launch_token=token) as server, _logs() as lines:
        guesses = _near_misses(token)
        guesses += [Sessions.new_launch_token() for _ in range(GUESSES - len(guesses))]
        with _stranger(server) as stranger:
            for guess in guesses:
                response = stranger.get("/", params={"token": guess})
                assert response.status_code == 403, guess
                _assert_reveals_nothing(response, victim)
            assert not stranger.cookies
        with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=20) as owner:
            opened = owner.get(server.launch_url)  # the real one still works after all the guessing
            assert opened.status_code == 303 and opened.headers["location"] == "/"
            assert "set-cookie" in opened.headers and owner.get("/").status_code == 200
            session = str(next(iter(owner.cookies.values())))
            # A whole sign-in, so that codes and states pass through too.
            start = owner.post("/login", data={"csrf_token": page_csrf(owner)})
            callback = idp.login_without_browser(start.headers["location"])
            assert owner.get(callback).status_code == 303
            query = dict(parse_qsl(urlsplit(callback).query))
        with _stranger(server) as again:
            assert again.get(server.launch_url).status_code == 403  # one-time
        saved = victim.path.read_text()
    assert any('"GET /auth/callback" 303' in line for line in lines), lines  # the capture works
    secret_values = [token, session, query["code"], query["state"], *re.findall(r'_token = "([^"]+)"', saved)]
    for line in lines:
        for secret in secret_values:
            assert secret not in line, f"a secret is in the log line {line!r}"


def test_the_launch_token_stays_out_of_the_log_when_the_process_also_runs_another_uvicorn(
    tmp_path: Path,
) -> None:
    victim = _victim(tmp_path, "http://127.0.0.1:9", "c", "api_key")
    with (
        _logging_restored(),
        PortalServer(victim.settings, launch_token=victim.launch_token) as server,
    ):
        import uvicorn

        uvicorn.Config(app=_no_app, log_level="info")  # what the embedding app's own server does
        with _logs() as lines, httpx2.Client(follow_redirects=False, timeout=20) as browser:
            assert browser.get(server.launch_url).status_code == 303
    assert not any(victim.launch_token in line for line in lines), lines


async def _no_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never served")


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "BROWSER"))}
    env.update(
        CODEX_HOME=str(tmp_path / "codex"),
        CODEX_PORTAL_PORT=str(free_port()),
        CODEX_PORTAL_ISSUER="http://127.0.0.1:9",  # nobody listens: the portal must not need it here
        **extra,
    )
    return env


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "codex-portal printed nothing"
    return proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)  # uvicorn stops gracefully; atexit handlers run
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=5)


def _proc_file(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")


def _serve(tmp_path: Path, *flags: str, **env: str) -> subprocess.Popen[str]:
    """`codex-portal serve` as a person starts it, in its own process."""
    return subprocess.Popen(
        [str(CODEX_PORTAL), "serve", *flags],
        env=_cli_env(tmp_path, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _launch_token(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["token"]


def test_serve_keeps_the_launch_token_out_of_argv_and_its_log(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--no-browser")
    try:
        url = _first_line(proc)
        token = _launch_token(url)
        assert len(token) >= 43  # 256 bits, base64url
        assert token not in _proc_file(proc.pid, "cmdline")
        assert token not in _proc_file(proc.pid, "environ")
        with httpx2.Client(follow_redirects=False, timeout=20) as browser:
            assert browser.get(url).status_code == 303
            assert browser.get(url.split("?")[0]).status_code == 200
            assert browser.get(url).status_code == 303  # used again, with the session: no new one
    finally:
        out, err = _stop(proc)
    assert '"GET /" 303' in err  # the access log is there, and it has no query strings
    assert token not in err and token not in out.replace(url, "")


def test_the_browser_is_sent_a_private_file_not_the_token(tmp_path: Path) -> None:
    record = tmp_path / "browser.json"
    browser = tmp_path / "record-browser"
    browser.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "from urllib.parse import unquote, urlsplit\n"
        "path = unquote(urlsplit(sys.argv[1]).path)\n"
        "with open(f'/proc/{os.getpid()}/cmdline', 'rb') as f:\n"
        "    cmdline = f.read().decode().split('\\0')\n"
        "with open(path) as f:\n"
        "    content = f.read()\n"
        "info = {'argv': sys.argv, 'cmdline': cmdline, 'path': path, 'content': content,\n"
        "        'mode': os.stat(path).st_mode & 0o777,\n"
        "        'dir_mode': os.stat(os.path.dirname(path)).st_mode & 0o777}\n"
        f"with open({str(record) + '.tmp'!r}, 'w') as f:\n"
        "    json.dump(info, f)\n"
        f"os.replace({str(record) + '.tmp'!r}, {str(record)!r})\n"
    )
    browser.chmod(0o700)
    temp = tmp_path / "data"  # $XDG_DATA_HOME: the redirect file is under the home, not /tmp
    temp.mkdir()
    proc = _serve(tmp_path, BROWSER=str(browser), XDG_DATA_HOME=str(temp))
    try:
        url = _first_line(proc)
        token = _launch_token(url)
        deadline = time.monotonic() + 20
        while not record.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert record.exists(), "the browser was never started"
        seen = json.loads(record.read_text())
    finally:
        out, err = _stop(proc)
    opened = Path(seen["path"])
    assert seen["argv"] == [str(browser), opened.as_uri()]  # only the file:// path
    assert token not in " ".join(seen["cmdline"]) and token not in " ".join(seen["argv"])
    assert opened.parent == temp / "codex-portal" / "runtime" and opened.name.startswith("open-")
    assert seen["mode"] == 0o600 and seen["dir_mode"] == 0o700
    assert html.escape(url, quote=True) in seen["content"]  # the file leads to the portal
    assert not opened.exists()  # removed when the portal stopped
    assert token not in err and "No web browser could be opened" not in err


def test_no_browser_to_open_is_said_and_leaves_no_file(tmp_path: Path) -> None:
    temp = tmp_path / "data"
    temp.mkdir()
    proc = _serve(tmp_path, BROWSER=str(tmp_path / "no-such-browser"), XDG_DATA_HOME=str(temp))
    try:
        url = _first_line(proc)
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(2)]  # "serving ...", then the browser's fate
    finally:
        _stop(proc)
    assert url.startswith("http://localhost:")
    assert lines[1] == "No web browser could be opened here: open the link above in yours.\n", lines
    assert list((temp / "codex-portal" / "runtime").iterdir()) == []  # gone at once, not after a minute


# ---- the callback against the real provider ----------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path, idp: TestProvider) -> Settings:
    path = tmp_path / "codex" / "config.toml"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    return Settings(
        config_path=path,
        issuer=idp.issuer,
        client_id=idp.client_id,
        port=free_port(),
        open_browser=False,
        timeout=5,
    )


@pytest.fixture
def portal(home: Settings) -> Iterator[tuple[PortalServer, httpx2.Client]]:
    with (
        PortalServer(home, launch_token=Sessions.new_launch_token()) as server,
        httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=20) as browser,
    ):
        assert browser.get(server.launch_url).status_code == 303
        yield server, browser


def _code_exchanges(idp: TestProvider) -> int:
    """Authorization codes the portal presented to the provider, accepted or not."""
    return sum(
        1
        for event in idp.events()
        if event.get("event") in ("grant.success", "grant.error")
        and event.get("grant_type") == "authorization_code"
    )


@pytest.fixture
def writes(home: Settings, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every write of the config file (the store's one way to write it)."""
    seen: list[Path] = []
    original = webapp.files.write_atomic

    def counting(path: Path, text: str) -> None:
        seen.append(path)
        original(path, text)

    monkeypatch.setattr(webapp.stores.config_toml, "write_atomic", counting)
    return seen


def _refused(response: httpx2.Response) -> None:
    assert response.status_code == 400
    assert "This sign-in is unknown, was already completed, or has expired" in response.text
    assert "Nothing was changed" in response.text


@pytest.mark.parametrize("with_session", [True, False])
def test_a_callback_without_a_pending_sign_in_changes_nothing(
    idp: TestProvider,
    home: Settings,
    portal: tuple[PortalServer, httpx2.Client],
    writes: list[Path],
    with_session: bool,
) -> None:
    server, browser = portal
    exchanges = _code_exchanges(idp)
    forged = {"code": "forged-" + secrets.token_urlsafe(16), "state": secrets.token_urlsafe(32)}
    with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=20) as stranger:
        client = browser if with_session else stranger
        for query in (forged, {"code": forged["code"]}, {"state": forged["state"]}, {}, {"error": "x"}):
            response = client.get(f"/auth/callback?{urlencode(query)}")
            _refused(response)
            assert forged["code"] not in response.text and forged["state"] not in response.text
    assert home.config_path.read_text() == USER_FILE and writes == []
    assert _code_exchanges(idp) == exchanges


def test_a_wrong_state_is_refused_and_the_right_one_still_works(
    idp: TestProvider, home: Settings, portal: tuple[PortalServer, httpx2.Client], writes: list[Path]
) -> None:
    _, browser = portal
    start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
    callback = idp.login_without_browser(start.headers["location"])
    query = dict(parse_qsl(urlsplit(callback).query))
    exchanges = _code_exchanges(idp)
    for state in (secrets.token_urlsafe(32), query["state"][:-1], query["state"].upper(), ""):
        _refused(browser.get("/auth/callback", params={**query, "state": state}))
    assert _code_exchanges(idp) == exchanges and writes == []
    assert home.config_path.read_text() == USER_FILE
    done = browser.get(callback)
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert "Signed in as alice@example.test" in browser.get("/").text
    assert _code_exchanges(idp) == exchanges + 1 and len(writes) == 1


def test_a_replayed_callback_is_refused(
    idp: TestProvider, home: Settings, portal: tuple[PortalServer, httpx2.Client], writes: list[Path]
) -> None:
    server, browser = portal
    start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
    callback = idp.login_without_browser(start.headers["location"])
    assert browser.get(callback).status_code == 303
    saved = home.config_path.read_text()
    exchanges = _code_exchanges(idp)
    _refused(browser.get(callback))
    with httpx2.Client(follow_redirects=False, timeout=20) as stranger:
        _refused(stranger.get(callback))
    assert home.config_path.read_text() == saved and len(writes) == 1
    assert _code_exchanges(idp) == exchanges


def _twice_at_once(cookies: httpx2.Cookies, url: str) -> list[int]:
    """Send `url` from two connections at the same instant (as a double click or a racing tab would)."""
    barrier = threading.Barrier(2, timeout=10)
    answers: list[int] = []

    def deliver() -> None:
        with httpx2.Client(cookies=cookies, follow_redirects=False, timeout=20) as tab:
            request = tab.build_request("GET", url)
            barrier.wait()
            answers.append(tab.send(request).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return answers


def test_the_same_callback_twice_at_once_exchanges_the_code_once(
    idp: TestProvider, home: Settings, portal: tuple[PortalServer, httpx2.Client], writes: list[Path]
) -> None:
    server, browser = portal
    for round_ in range(3):
        start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
        callback = idp.login_without_browser(start.headers["location"])
        exchanges = _code_exchanges(idp)
        consumed = len(idp.events("authorization_code.consumed"))
        written = len(writes)
        answers = _twice_at_once(browser.cookies, callback)
        assert sorted(answers) == [303, 400], (round_, answers)
        assert _code_exchanges(idp) == exchanges + 1, round_
        assert len(idp.events("authorization_code.consumed")) == consumed + 1
        assert len(writes) == written + 1
    status = browser.get("/api/status").json()
    assert status["signed_in"] and status["email"] == "alice@example.test"


MARKUP_ERROR = "<script>alert(1)</script>"
MARKUP_DESCRIPTION = '"><img src=x onerror=alert(document.cookie)>'


def _assert_escaped(page: str) -> None:
    assert MARKUP_ERROR not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, escaped
    # The description has '"', outside RFC 6749's character set for it: not shown at all.
    assert "img src=x" not in page and "onerror" not in page


@pytest.mark.parametrize("ends_on", ["status page flash", "/auth/done"])
def test_markup_in_the_providers_error_is_escaped(
    idp: TestProvider,
    home: Settings,
    portal: tuple[PortalServer, httpx2.Client],
    writes: list[Path],
    ends_on: str,
) -> None:
    server, browser = portal
    start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
    state = dict(parse_qsl(urlsplit(start.headers["location"]).query))["state"]
    query = urlencode({"error": MARKUP_ERROR, "error_description": MARKUP_DESCRIPTION, "state": state})
    exchanges = _code_exchanges(idp)
    if ends_on == "status page flash":
        response = browser.get(f"/auth/callback?{query}")
        assert response.status_code == 303 and response.headers["location"] == "/"
        page = browser.get("/")
    else:  # the callback reached a browser without the session (as with `codex-portal login`)
        with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=20) as other:
            response = other.get(f"/auth/callback?{query}")
            assert response.status_code == 303
            assert response.headers["location"].startswith("/auth/done?result=")
            page = other.get(response.headers["location"])
        assert page.status_code == 400
    assert "the provider refused the sign-in" in page.text
    _assert_escaped(page.text)
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert home.config_path.read_text() == USER_FILE and writes == []
    assert _code_exchanges(idp) == exchanges
