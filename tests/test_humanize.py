"""Time left, as the terminal and the page's server text say it, and as static/status.js keeps it;
and how a message ends, in the terminal and on a page."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from webapp.errors import full_stop, sentence
from webapp.humanize import format_time_left

STATUS_JS = Path(__file__).resolve().parent.parent / "static" / "status.js"
SPANS = [1, 30, 59, 60, 61, 3599, 3600, 3661, 86399, 86400, 90061, 364 * 86400, 365 * 86400, 2 * 365 * 86400]
SPANS += [20782 * 86400 + 3 * 3600]  # an expires_at of 1000, seen in 2026


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "less than a minute left"),
        (-30, "expired less than a minute ago"),
        (3661, "1 h 1 min left"),
        (-90061, "expired 1 d 1 h 1 min ago"),
        (364 * 86400 + 60, "364 d 1 min left"),
        (365 * 86400, "over 1 year left"),
        (-(20782 * 86400 + 3 * 3600), "expired over 56 years ago"),
    ],
)
def test_time_left_reads_well(seconds: int, text: str) -> None:
    assert format_time_left(seconds) == text


def test_the_page_script_says_what_the_server_says() -> None:
    """status.js run by node against a stand-in document: one span per case, read back after update()."""
    node = shutil.which("node")
    assert node is not None, "node is needed (make test installs the test provider with it)"
    now = int(time.time()) + 3600  # the spans' anchor; each case is an offset from the script's clock
    cases = [s for span in SPANS for s in (span, -span)]
    harness = f"""
const cases = {json.dumps(cases)};
const now = {now};
Date.now = () => now * 1000;
const spans = cases.map((offset) => ({{
  textContent: "", getAttribute: (name) => (name === "data-expires" ? String(now + offset) : null),
}}));
globalThis.document = {{ querySelectorAll: () => spans }};
globalThis.setInterval = () => 0;
eval(require("fs").readFileSync({json.dumps(str(STATUS_JS))}, "utf8"));
console.log(JSON.stringify(spans.map((span) => span.textContent)));
"""
    done = subprocess.run([node, "-e", harness], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [format_time_left(offset) for offset in cases]


@pytest.mark.parametrize(
    ("clause", "line", "notice"),
    [
        ("no API key given; nothing was changed", "no API key given; nothing was changed.", None),
        (
            "fix it or remove it (see above)",
            "fix it or remove it (see above).",
            "Fix it or remove it (see above).",
        ),
        ("Already a sentence.", "Already a sentence.", "Already a sentence."),
        ("is it? ", "is it?", "Is it?"),
        ("/path/config.toml is not valid TOML", "/path/config.toml is not valid TOML.", None),
        ("", "", ""),
    ],
)
def test_messages_end_once_where_they_are_shown(clause: str, line: str, notice: str | None) -> None:
    assert full_stop(clause) == line and full_stop(line) == line
    assert sentence(clause) == (notice or line[:1].upper() + line[1:])
