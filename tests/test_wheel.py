"""The built wheel carries its templates and static files: install it into a fresh venv and run it
from another folder, away from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx2

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_installed_wheel_serves_its_pages(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("codex_portal-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    env = {**os.environ, "CODEX_HOME": str(tmp_path / "home"), "CODEX_PORTAL_ISSUER": "http://127.0.0.1:9"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [str(env_dir / "bin" / "codex-portal"), "serve", "--no-browser", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith(f"http://localhost:{port}/?token=")
        with httpx2.Client(follow_redirects=True, timeout=10) as client:
            page = client.get(url)
            assert page.status_code == 200 and "Not signed in" in page.text
            assert client.get(f"http://localhost:{port}/static/portal.css").status_code == 200
        where = subprocess.run(
            [str(python), "-c", "import webapp; print(webapp.__file__)"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        assert str(env_dir) in where.stdout, where.stdout  # the installed copy, not this checkout
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err
