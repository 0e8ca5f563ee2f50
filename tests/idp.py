"""A real OpenID provider for the tests: npm `oidc-provider` run by node on loopback.

The provider itself is ``tests/provider/provider.js`` (its dependencies are installed by ``make test``,
which runs ``npm ci`` in ``tests/provider``). This module starts it on a free port, collects the
``EVENT {...}`` lines it prints, and drives its own login/consent and device pages without a browser.

    with TestProvider().start() as idp:
        idp.issuer, idp.client_id
        # switches (tests/provider/provider.js): TestProvider(access_token_ttl=310, email_in_id_token=True,
        #   openai_auth_claim=True, jwt_access_tokens=True, extra_env={"IDP_CLIENT_ID": "..."})
        location = idp.login_without_browser(authorize_url)   # ".../auth/callback?code=...&state=..."
        idp.approve_device(user_code)
        idp.events("grant.success")

Pages a browser test meets (oidc-provider's devInteractions, Google font stripped):
  login     GET /interaction/<uid>: input[name=login], input[name=password], button "Sign-in";
            link "[ Cancel ]" denies (redirects with error=access_denied)
  consent   GET /interaction/<uid>: button "Continue"; link "[ Cancel ]" denies
  device    GET /device: input[name=user_code] (placeholder "Enter code"), button "Continue";
            then a confirmation page: button "Continue", or button "[ Abort ]" to deny;
            then login and consent as above; then "Sign-in Success".
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx2

PROVIDER_DIR = Path(__file__).resolve().parent / "provider"
PROVIDER_JS = PROVIDER_DIR / "provider.js"
# It starts in ~0.3 s. The bound is for a provider that hangs, not for a slow start: a CI machine once
# stalled one for 20 s before it printed anything past its first warning.
START_TIMEOUT = 30.0
# Node has been seen, rarely (1 start in 36 with 12 at once; once on a CI machine), to sit in a futex
# with 0.3 s of CPU and never listen. That is the test tool, not the portal: a second process is
# started, and the stall is kept in `start_stalls` (its /proc state) rather than hidden.
START_ATTEMPTS = 2
MARK_EVENT = "test.mark"


def _process_state(pid: int) -> str:
    """What a stalled process is doing, from /proc: its state, where it sleeps and the CPU it used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
    except OSError as error:
        return f"no /proc state: {error.strerror}"
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return f"state {fields[0]}, waiting in {wchan}, {cpu:.1f} s of CPU used"


class ProviderError(RuntimeError):
    """The test provider could not start, or one of its pages did not go as expected."""


class _Form:
    def __init__(self, attrs: dict[str, str]) -> None:
        self.id = attrs.get("id", "")
        self.action = attrs.get("action", "")
        self.method = attrs.get("method", "get").lower()
        self.fields: dict[str, str] = {}


class _PageParser(HTMLParser):
    """Collects the forms (with their named inputs), the links and the error paragraphs of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.links: dict[str, str] = {}  # text -> href
        self.errors: list[str] = []
        self.text: list[str] = []  # the visible text
        self._skip = 0  # inside <style>, <script> or <title>
        self._current: _Form | None = None
        self._link: str | None = None
        self._in_error = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag in ("style", "script", "title"):
            self._skip += 1
        elif tag == "form":
            self._current = _Form(values)
            self.forms.append(self._current)
        elif tag == "input" and "name" in values:
            owner = self._form_by_id(values["form"]) if "form" in values else self._current
            if owner is not None and values.get("type") != "submit":
                owner.fields[values["name"]] = values.get("value", "")
        elif tag == "a" and "href" in values:
            self._link, self._text = values["href"], []
        elif tag == "p" and "red" in values.get("class", "").split():
            self._in_error, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag == "form":
            self._current = None
        elif tag == "a" and self._link is not None:
            self.links["".join(self._text).strip()] = self._link
            self._link = None
        elif tag == "p" and self._in_error:
            self.errors.append("".join(self._text).strip())
            self._in_error = False

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        if not self._skip and data.strip():
            self.text.append(" ".join(data.split()))

    def _form_by_id(self, form_id: str) -> _Form | None:
        return next((form for form in self.forms if form.id == form_id), None)

    def form_with(self, field: str, value: str | None = None) -> _Form | None:
        for form in self.forms:
            if field in form.fields and (value is None or form.fields[field] == value):
                return form
        return None


def _parse(response: httpx2.Response) -> _PageParser:
    parser = _PageParser()
    parser.feed(response.text)
    parser.close()
    return parser


class TestProvider:
    """One oidc-provider process on 127.0.0.1 with one public client (see tests/provider/provider.js)."""

    __test__ = False  # not a test class, whatever its name

    issuer: str
    client_id: str

    def __init__(
        self,
        *,
        access_token_ttl: int = 3600,
        email_in_id_token: bool = True,
        openai_auth_claim: bool = False,
        jwt_access_tokens: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.client_id = (extra_env or {}).get("IDP_CLIENT_ID", "codex-portal-test")
        self.issuer = ""
        self._env = {
            "IDP_PORT": "0",
            "IDP_CLIENT_ID": self.client_id,
            "IDP_ACCESS_TOKEN_TTL": str(access_token_ttl),
            "IDP_EMAIL_IN_ID_TOKEN": "1" if email_in_id_token else "0",
            "IDP_OPENAI_AUTH_CLAIM": "1" if openai_auth_claim else "0",
            "IDP_JWT_ACCESS_TOKENS": "1" if jwt_access_tokens else "0",
            "IDP_EXIT_ON_STDIN_EOF": "1",  # no orphan provider if the test run is killed
            **(extra_env or {}),
        }
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()
        self._lines: list[str] = []
        self._eof = False  # the provider closed its output: it exited
        self._events: list[dict[str, Any]] = []
        self._marks = itertools.count(1)
        self.start_stalls: list[str] = []

    # ---- process -------------------------------------------------------------------------------
    def start(self) -> TestProvider:
        if self._process is not None or self.issuer:
            raise ProviderError("a TestProvider starts once: create a new one")
        if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
            raise ProviderError(
                f"{PROVIDER_DIR / 'node_modules'} is missing: run `make test` "
                "(it runs `npm ci --no-audit --no-fund` in tests/provider)"
            )
        node = shutil.which("node")
        if node is None:
            raise ProviderError("`node` is not on PATH: the test provider needs Node.js 20 or later")
        stalls: list[str] = []
        for _ in range(START_ATTEMPTS):
            reason = self._spawn(node)
            if reason is None:
                self.start_stalls = stalls
                return self
            output = self.output()
            self.stop()
            if not reason.startswith("did not listen"):
                break  # it exited: a second try would exit the same way
            stalls.append(reason)
        raise ProviderError(f"the test provider (node {PROVIDER_JS}) {reason}; its output:\n{output}")

    def _spawn(self, node: str) -> str | None:
        """Start node and wait for its LISTENING line; None when it listens, else why not."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
        env.update(self._env)
        with self._changed:
            self._lines, self._eof = [], False
        self._process = subprocess.Popen(
            [node, str(PROVIDER_JS)],
            cwd=PROVIDER_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, name="test-provider-output", daemon=True)
        self._reader.start()
        with self._changed:
            ready = self._changed.wait_for(lambda: bool(self.issuer) or self._eof, timeout=START_TIMEOUT)
        if self.issuer:
            return None
        if ready:
            return "exited"
        return f"did not listen within {START_TIMEOUT:.0f} s ({_process_state(self._process.pid)})"

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            with self._changed:
                self._lines.append(line)
                if line.startswith("EVENT "):
                    try:
                        self._events.append(json.loads(line[len("EVENT ") :]))
                    except ValueError:
                        pass
                elif line.startswith("LISTENING ") and not self.issuer:
                    self.issuer = line[len("LISTENING ") :].strip()
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.close()
        except OSError:
            pass
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        process.stdout.close()
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> TestProvider:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def output(self) -> str:
        """Everything the provider printed so far (stdout and stderr)."""
        with self._changed:
            return "\n".join(self._lines)

    # ---- events --------------------------------------------------------------------------------
    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The provider's events so far, including those of every request already answered.

        Events are read from a pipe by a thread; a marker request to the provider is awaited first so
        that nothing emitted before this call is still in transit.
        """
        self._sync()
        with self._changed:
            return [
                dict(event)
                for event in self._events
                if event.get("event") != MARK_EVENT and (name is None or event.get("event") == name)
            ]

    def _sync(self) -> None:
        process = self._process
        if process is None or process.poll() is not None or not self.issuer:
            return
        mark = str(next(self._marks))
        with httpx2.Client(trust_env=False, timeout=5) as client:
            client.get(f"{self.issuer}/__test__/mark", params={"id": mark}).raise_for_status()
        with self._changed:
            if not self._changed.wait_for(
                lambda: any(e.get("event") == MARK_EVENT and e.get("id") == mark for e in self._events),
                timeout=5,
            ):
                raise ProviderError("the test provider did not report its marker event")

    # ---- the provider's own pages, without a browser -------------------------------------------
    def _client(self) -> httpx2.Client:
        if not self.issuer:
            raise ProviderError("the test provider is not started")
        return httpx2.Client(trust_env=False, follow_redirects=False, timeout=10)

    def _is_ours(self, url: str) -> bool:
        ours, other = urlsplit(self.issuer), urlsplit(url)
        return (other.scheme, other.netloc) == (ours.scheme, ours.netloc)

    def _drive(
        self, client: httpx2.Client, response: httpx2.Response, login: str, approve: bool
    ) -> str | None:
        """Follow the provider's redirects and answer its login and consent pages.

        Returns the first redirect that leaves the provider's origin (not requested), or None when a
        page of the provider without a login or consent form ends the journey (device flow success).
        """
        for _ in range(20):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if not self._is_ours(location):
                    return location
                response = client.get(location)
                continue
            if response.status_code != 200:
                raise ProviderError(self._describe(response))
            page = _parse(response)
            login_form = page.form_with("login")
            consent_form = page.form_with("prompt", "consent")
            if not approve and (login_form or consent_form) and "[ Cancel ]" in page.links:
                response = client.get(urljoin(str(response.url), page.links["[ Cancel ]"]))
            elif login_form is not None:
                fields = {**login_form.fields, "login": login, "password": "any password"}
                response = client.post(urljoin(str(response.url), login_form.action), data=fields)
            elif consent_form is not None:
                response = client.post(
                    urljoin(str(response.url), consent_form.action), data=consent_form.fields
                )
            else:
                return None
        raise ProviderError("too many steps on the provider's pages")

    @staticmethod
    def _describe(response: httpx2.Response) -> str:
        page = _parse(response)
        detail = "; ".join(page.errors) or " ".join(page.text)[:2000]
        where = f"{response.request.method} {response.url.copy_with(query=None)}"
        return f"{where} -> {response.status_code}: {detail}"

    def login_without_browser(self, authorize_url: str, *, login: str = "alice", approve: bool = True) -> str:
        """Sign in as `login` (any password) and consent, as a person would in the provider's pages.

        Returns the redirect to the client's redirect_uri (with ``code`` and ``state``, or with
        ``error=access_denied`` when ``approve`` is False), without requesting it.
        """
        with self._client() as client:
            location = self._drive(client, client.get(authorize_url), login, approve)
        if location is None:
            raise ProviderError("the provider never redirected back to the client")
        return location

    def approve_device(self, user_code: str, *, login: str = "alice") -> None:
        """RFC 8628 user step at /device: enter the code, confirm, sign in, consent."""
        with self._client() as client:
            response = self._submit_user_code(client, user_code, abort=False)
            if self._drive(client, response, login, approve=True) is not None:
                raise ProviderError("the device flow unexpectedly redirected away from the provider")

    def deny_device(self, user_code: str) -> None:
        """RFC 8628 user step at /device: enter the code, then abort; the device gets access_denied."""
        with self._client() as client:
            response = self._submit_user_code(client, user_code, abort=True)
            errors = _parse(response).errors
            if not any("interrupted" in error for error in errors):
                raise ProviderError(self._describe(response))

    def _submit_user_code(self, client: httpx2.Client, user_code: str, *, abort: bool) -> httpx2.Response:
        response = client.get(f"{self.issuer}/device")
        form = _parse(response).form_with("xsrf") if response.status_code == 200 else None
        if form is None:
            raise ProviderError(self._describe(response))
        response = client.post(
            urljoin(str(response.url), form.action), data={**form.fields, "user_code": user_code}
        )
        page = _parse(response)
        confirm = page.form_with("confirm", "yes")
        if response.status_code != 200 or confirm is None:
            raise ProviderError(self._describe(response))
        fields = {**confirm.fields, **({"abort": "yes"} if abort else {})}
        return client.post(urljoin(str(response.url), confirm.action), data=fields)
