"""The programmatic API, by running the README's example unchanged: `$BROWSER` stands in for the
person's browser (it records what it was asked to open) and the test plays the person."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.conftest import free_port
from tests.idp import TestProvider

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- example: programmatic -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its programmatic example"
    return match.group(1)


def _opened_url(log: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().strip():
            opened = log.read_text().split()[0]
            assert opened.startswith("file://")  # never the URL itself: it would sit in argv
            page = Path(opened.removeprefix("file://")).read_text()
            assert oct(Path(opened.removeprefix("file://")).stat().st_mode & 0o777) == "0o600"
            match = re.search(r'content="0;url=([^"]+)"', page)
            assert match
            return html.unescape(match.group(1))
        time.sleep(0.05)
    raise AssertionError("the browser was never opened")


def test_readme_example_signs_in_and_gets_a_token(idp: TestProvider, tmp_path: Path) -> None:
    log = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {log}\n')
    browser.chmod(0o755)
    env = {
        **os.environ,
        "CODEX_HOME": str(tmp_path / "codex"),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
        "CODEX_PORTAL_PORT": str(free_port()),
        "BROWSER": str(browser),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _readme_example()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        authorize = _opened_url(log)
        assert authorize.startswith(f"{idp.issuer}/auth?") and "code_challenge_method=S256" in authorize
        callback = idp.login_without_browser(authorize)
        done = httpx2.get(callback, follow_redirects=True)
        assert done.status_code == 200 and "Sign-in complete" in done.text
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    assert "signed in as alice@example.test until" in out
    assert "same token: True" in out
    opened = Path(log.read_text().split()[0].removeprefix("file://"))
    assert not opened.exists()  # the private redirect file is removed on exit
    assert authorize in err  # the link is printed too, for when no browser opens
