"""`make bench`: the portal's figures beside a baseline measured in the same run, and the targets.

    .venv/bin/python bench/bench.py [--json PATH] [--only a,b,...] [--generator auto|wrk|httpx2]

(a) start: `codex-portal serve --no-browser --port P` to the first 200 on its launch URL (303 + cookie
    followed) vs bench/hello_app.py (a hello-world FastAPI app under uvicorn, same flags) to the first
    200 on GET /; both subprocesses, interleaved, median of 7.                      target ratio <= 1.25
(b) requests/s: the full status page (GET / with the session cookie; it reads a signed-in config
    file with an [auth] table and 50 other lines) vs the hello app's JSON endpoint; one uvicorn worker
    each, loopback, 8 connections, two alternating rounds of 3 s each (6 s in all) after a 1 s
    warm-up, with wrk (or an asyncio + httpx2 generator when wrk is missing: it saturates before the
    servers do, so then the figure is requests per server CPU-second).              target ratio >= 0.6
(c) `codex-portal status` wall time vs `python -c pass` (the same interpreter), interleaved, median of
    15; beside them the floor: the stdlib modules the command needs (tomllib, argparse, datetime)
    imported alone.                                                                 target ratio <= 1.6
(d) peak memory (VmHWM) of the serving portal after the load of (b); the hello app's beside it.
                                                                                    target <= 80 MiB
(e) one locked atomic update of the config file (CredentialStore.save_api_key, alternating two keys,
    50-line file), median of 200; beside it a bare atomic write (mkstemp, fsync, rename, fsync dir)
    of the same bytes.                                                              target <= 5 ms
(f) browser sign-in against the real test provider (tests/idp.py), Debian Chromium via Playwright,
    from the click on "Sign in" to the status page saying "Signed in as"; median of 5. No target.
(g) CPU time (user + system) of `codex-portal status` and of `codex-portal token` (a valid token: no
    refresh) beside the real Codex CLI's own `codex login status` (tests/codex, `make codex`), on the
    same CODEX_HOME (config.toml and auth.json in step), interleaved, median of 15. No target.

Beside the wall-clock figures, which other load on the machine skews, the bench prints CPU times
(server CPU at the first 200 in (a), server CPU per request in (b), CPU of the command in (c), of one
update in (e)): less sensitive to a busy machine, they show where a ratio comes from.

Every server listens on loopback only, on ports below 32768 (the ephemeral range would collide
with the load generator's own connections). Nothing here is a target but 127.0.0.1 / ::1.
The exit status is 0 when every figure was measured (a MISS is a finding, not a failure); 1 when a
measurement could not be made. With --strict a MISS exits 1 too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import errno
import json
import os
import platform
import random
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # webapp and tests, from this checkout

PYTHON = sys.executable
PORTAL = Path(PYTHON).parent / "codex-portal"
HELLO_APP = Path(__file__).resolve().parent / "hello_app.py"
DEAD_ISSUER = "http://127.0.0.1:9"  # loopback discard port: the portal's discovery fails at once, locally
START_RUNS = 7
STATUS_RUNS = 15
SAVE_RUNS = 200
BROWSER_RUNS = 5
LOAD_CONNECTIONS = 8
LOAD_ROUNDS = 2
LOAD_ROUND_SECONDS = 3  # whole seconds: wrk takes no fractions
WARMUP_SECONDS = 1
START_TIMEOUT = 30.0
PORT_RANGE = (20000, 32000)
EMAIL = "alice@example.test"
MIB = 1024 * 1024


# ---- results -----------------------------------------------------------------------------------
@dataclass
class Figure:
    key: str
    name: str
    unit: str
    value: float | None = None
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""  # e.g. "ratio <= 1.25", "<= 80 MiB", "" for none
    verdict: str = "-"  # PASS, MISS, - (no target), ERROR
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def judge(self, check: Callable[[Figure], bool] | None) -> None:
        if self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline
        if check is not None:
            self.verdict = "PASS" if check(self) else "MISS"


def _median(values: list[float]) -> float:
    return statistics.median(values)


# ---- processes and ports -----------------------------------------------------------------------
_used_ports: set[int] = set()
_processes: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """A port below the ephemeral range, free on 127.0.0.1 and ::1 (where the portal listens)."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if port in _used_ports:
            continue
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    try:
                        sock.bind((host, port))
                    except OSError as exc:
                        if family == socket.AF_INET6 and exc.errno in (
                            errno.EADDRNOTAVAIL,
                            errno.EAFNOSUPPORT,
                        ):
                            continue
                        raise
        except OSError:
            continue
        _used_ports.add(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def spawn(
    argv: list[str], env: dict[str, str], log: Path, *, stdout: int | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, cwd=ROOT)
    _processes.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    if proc in _processes:
        _processes.remove(proc)


def stop_all() -> None:
    for proc in list(_processes):
        stop(proc)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the process prints on stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no line on stdout within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the process exited (code {proc.wait(5)}) before printing a line")
            data += chunk
    return data.split(b"\n", 1)[0].decode()


def vm_hwm(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- the config file ---------------------------------------------------------------------------
OTHER_LINES = """\
# Codex CLI settings, edited by hand
model = "o3"  # the default model
model_provider = "openai"
approval_policy = "on-request"
sandbox_mode = "workspace-write"
model_reasoning_effort = "high"
model_reasoning_summary = "auto"
hide_agent_reasoning = false
file_opener = "vscode"
disable_response_storage = false

[tools]
web_search = true  # keep me

[history]
persistence = "save-all"
max_bytes = 10485760

[shell_environment_policy]
inherit = "core"
ignore_default_excludes = false
exclude = ["AWS_*", "AZURE_*"]
set = { CI = "1" }

[sandbox_workspace_write]
network_access = false
writable_roots = ["/tmp", "~/scratch"]

[mcp_servers.docs]
command = "npx"
args = ["-y", "docs-server"]
env = { "DOCS_ROOT" = "~/docs" }

[mcp_servers.github]
command = "github-mcp"
args = ["--read-only"]
startup_timeout_ms = 20000

[profiles.fast]
model = "o4-mini"
approval_policy = "never"
model_reasoning_effort = "low"

[profiles.review]
model = "o3"
approval_policy = "untrusted"

[tui]
notifications = ["agent-turn-complete"]
theme = "dark"
"""


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], size: int) -> str:
    head = _b64({"alg": "RS256", "kid": "bench-key", "typ": "JWT"})
    body = _b64(claims)
    return f"{head}.{body}.{_b64(bytes(random.getrandbits(8) for _ in range(size)))}"


def signed_in_config() -> str:
    """50 lines of the user's own settings and a signed-in [auth] table, as the portal writes it."""
    assert len(OTHER_LINES.splitlines()) == 50, len(OTHER_LINES.splitlines())
    now = int(time.time())
    claims = {"iss": DEAD_ISSUER, "aud": "app_bench", "sub": "user-1", "iat": now, "exp": now + 30 * 86400}
    access = _jwt({**claims, "scope": "openid profile email offline_access"}, 256)
    id_token = _jwt({**claims, "email": EMAIL, "email_verified": True, "name": "Alice"}, 256)
    refresh = base64.urlsafe_b64encode(os.urandom(48)).decode().rstrip("=")
    auth = (
        "[auth]\n"
        f'access_token = "{access}"\n'
        f'refresh_token = "{refresh}"\n'
        f"expires_at = {now + 30 * 86400}\n"
        f'id_token = "{id_token}"\n'
        f'issuer = "{DEAD_ISSUER}"\n'
        'client_id = "app_bench"\n'
    )
    return OTHER_LINES + "\n" + auth


def make_home(parent: Path, name: str, text: str | None) -> Path:
    home = parent / name
    home.mkdir(mode=0o700)
    if text is not None:
        config = home / "config.toml"
        config.write_text(text)
        config.chmod(0o600)
    return home


def portal_env(home: Path, issuer: str = DEAD_ISSUER, client_id: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_")}
    env["CODEX_HOME"] = str(home)
    env["CODEX_PORTAL_ISSUER"] = issuer
    if client_id:
        env["CODEX_PORTAL_CLIENT_ID"] = client_id
    return env


# ---- servers -----------------------------------------------------------------------------------
@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    base_url: str
    cookie: tuple[str, str] | None = None  # the portal's session cookie (name, value)
    launch_url: str = ""


def start_portal(home: Path, work: Path, env: dict[str, str] | None = None) -> Running:
    port = free_port()
    proc = spawn(
        [str(PORTAL), "serve", "--no-browser", "--port", str(port)],
        env or portal_env(home),
        work / f"portal-{port}.log",
        stdout=subprocess.PIPE,
    )
    try:
        url = read_line(proc, START_TIMEOUT)
    except RuntimeError as exc:
        stop(proc)
        raise RuntimeError(f"codex-portal serve: {exc}\n{tail(work / f'portal-{port}.log')}") from None
    if not url.startswith(f"http://localhost:{port}/"):
        stop(proc)
        raise RuntimeError(f"unexpected first line from codex-portal serve: {url[:40]!r}")
    return Running(proc, port, f"http://localhost:{port}", launch_url=url)


def open_session(portal: Running) -> None:
    """Redeem the launch URL once; keep the session cookie for the load generator."""
    with httpx2.Client(timeout=10, follow_redirects=False) as client:
        response = client.get(portal.launch_url)
        if response.status_code != 303:
            raise RuntimeError(f"launch URL answered {response.status_code}, not 303")
        name = f"codex_portal_{portal.port}"
        value = client.cookies.get(name)
        if not value:
            raise RuntimeError("the launch URL set no session cookie")
        portal.cookie = (name, value)


def start_hello(work: Path) -> Running:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_")}
    proc = spawn([PYTHON, str(HELLO_APP), str(port)], env, work / f"hello-{port}.log")
    base = f"http://127.0.0.1:{port}"
    with httpx2.Client(timeout=5) as client:
        _until_200(client, base + "/", proc)
    return Running(proc, port, base)


def _until_200(client: httpx2.Client, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            response = client.get(url)
        except httpx2.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}") from None
            time.sleep(0.002)
            continue
        if response.status_code == 200:
            return
        raise RuntimeError(f"{url} answered {response.status_code}")
    raise RuntimeError(f"{url} gave no 200 within {START_TIMEOUT:.0f} s")


# ---- (a) start to first 200 --------------------------------------------------------------------
def bench_start(work: Path) -> Figure:
    figure = Figure(
        "a", "start to first 200", "ms", baseline_name="hello-world FastAPI app", target="ratio <= 1.25"
    )
    home = make_home(work, "start-home", signed_in_config())
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(START_RUNS):
        figure.samples.append(_start_portal_once(home, work, cpu[0]) * 1000)
        figure.baseline_samples.append(_start_hello_once(work, cpu[1]) * 1000)
    figure.value = _median(figure.samples)
    figure.baseline = _median(figure.baseline_samples)
    ours, theirs = _median(cpu[0]), _median(cpu[1])
    figure.notes = (
        f"CPU time of the server process at its first 200, medians (10 ms ticks): portal {ours:.0f} ms, "
        f"hello app {theirs:.0f} ms, ratio {ours / theirs:.2f}"
    )
    figure.extra = {"portal_cpu_ms": ours, "hello_cpu_ms": theirs}
    figure.judge(lambda f: f.ratio is not None and f.ratio <= 1.25)
    return figure


def _start_portal_once(home: Path, work: Path, cpu: list[float]) -> float:
    port = free_port()
    log = work / f"portal-{port}.log"
    with httpx2.Client(timeout=10, follow_redirects=True) as client:
        began = time.perf_counter()
        proc = spawn(
            [str(PORTAL), "serve", "--no-browser", "--port", str(port)],
            portal_env(home),
            log,
            stdout=subprocess.PIPE,
        )
        try:
            url = read_line(proc, START_TIMEOUT)
            response = client.get(url)
            elapsed = time.perf_counter() - began
            cpu.append(cpu_seconds(proc.pid) * 1000)
        except (RuntimeError, httpx2.HTTPError) as exc:
            raise RuntimeError(f"codex-portal serve: {exc}\n{tail(log)}") from None
        finally:
            stop(proc)
    if response.status_code != 200 or [r.status_code for r in response.history] != [303]:
        raise RuntimeError(
            f"launch URL: {[r.status_code for r in response.history]} then {response.status_code}"
        )
    return elapsed


def _start_hello_once(work: Path, cpu: list[float]) -> float:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_")}
    with httpx2.Client(timeout=10) as client:
        began = time.perf_counter()
        proc = spawn([PYTHON, str(HELLO_APP), str(port)], env, work / f"hello-{port}.log")
        try:
            _until_200(client, f"http://127.0.0.1:{port}/", proc)
            elapsed = time.perf_counter() - began
            cpu.append(cpu_seconds(proc.pid) * 1000)
        finally:
            stop(proc)
    return elapsed


# ---- (b) requests per second, (d) peak memory --------------------------------------------------
@dataclass
class Load:
    requests: int
    seconds: float
    errors: int  # non-2xx/3xx answers, socket errors, timeouts

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk_load(url: str, headers: dict[str, str], seconds: int) -> Load:
    argv = ["wrk", "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30)
    out = done.stdout
    if done.returncode != 0:  # (the command line carries the session cookie: not shown)
        raise RuntimeError(f"wrk exited {done.returncode}: {(done.stderr or out).strip()[:300]}")
    found = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if not found:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[found.group(3)]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(n) for n in match.groups())
    return Load(int(found.group(1)), float(found.group(2)) * scale, errors)


def httpx_load(url: str, headers: dict[str, str], seconds: int) -> Load:
    async def run() -> Load:
        limits = httpx2.Limits(max_connections=LOAD_CONNECTIONS, max_keepalive_connections=LOAD_CONNECTIONS)
        async with httpx2.AsyncClient(headers=headers, limits=limits, timeout=5) as client:
            counts = [0, 0]
            began = time.perf_counter()
            deadline = began + seconds

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    try:
                        response = await client.get(url)
                        counts[0 if response.status_code < 400 else 1] += 1
                    except httpx2.HTTPError:
                        counts[1] += 1

            await asyncio.gather(*(worker() for _ in range(LOAD_CONNECTIONS)))
            return Load(counts[0] + counts[1], time.perf_counter() - began, counts[1])

    return asyncio.run(run())


def bench_throughput(work: Path, generator: str) -> tuple[Figure, Figure]:
    load = wrk_load if generator == "wrk" else httpx_load
    rps = Figure(
        "b",
        "status page requests/s",
        "req/s",
        baseline_name="hello-world JSON endpoint",
        target="ratio >= 0.6",
    )
    rps.notes = (
        f"{generator}, {LOAD_CONNECTIONS} connections, {LOAD_ROUNDS} alternating rounds of "
        f"{LOAD_ROUND_SECONDS} s each after a {WARMUP_SECONDS} s warm-up; loopback; one uvicorn worker each"
    )
    memory = Figure("d", "portal peak memory (VmHWM) after (b)", "MiB", baseline_name="hello app after (b)")
    memory.target = "<= 80 MiB"
    home = make_home(work, "load-home", signed_in_config())
    portal = start_portal(home, work)
    try:
        open_session(portal)
        assert portal.cookie is not None
        portal_url = f"http://127.0.0.1:{portal.port}/"
        portal_headers = {"Cookie": f"{portal.cookie[0]}={portal.cookie[1]}"}
        with httpx2.Client(timeout=10, headers=portal_headers) as client:
            page = client.get(portal_url)
        signed_in = re.search(r"<h1[^>]*>\s*Signed in\s*</h1>", page.text) and EMAIL in page.text
        if page.status_code != 200 or not signed_in:
            raise RuntimeError(
                f"the status page with the session is not the signed-in page ({page.status_code})"
            )
        hello = start_hello(work)
        try:
            hello_url = hello.base_url + "/"
            load(portal_url, portal_headers, WARMUP_SECONDS)
            load(hello_url, {}, WARMUP_SECONDS)
            ours: list[Load] = []
            theirs: list[Load] = []
            cpu = {portal.proc.pid: 0.0, hello.proc.pid: 0.0}  # server CPU seconds under load

            def measured(server: Running, url: str, headers: dict[str, str]) -> Load:
                before = cpu_seconds(server.proc.pid)
                result = load(url, headers, LOAD_ROUND_SECONDS)
                cpu[server.proc.pid] += cpu_seconds(server.proc.pid) - before
                return result

            for _ in range(LOAD_ROUNDS):
                ours.append(measured(portal, portal_url, portal_headers))
                theirs.append(measured(hello, hello_url, {}))
            for name, loads in (("portal", ours), ("hello app", theirs)):
                if failed := sum(x.errors for x in loads):
                    raise RuntimeError(f"{name}: {failed} requests failed under load")
            rps.samples = [x.rate for x in ours]
            rps.baseline_samples = [x.rate for x in theirs]
            rps.value = sum(x.requests for x in ours) / sum(x.seconds for x in ours)
            rps.baseline = sum(x.requests for x in theirs) / sum(x.seconds for x in theirs)
            ours_us = cpu[portal.proc.pid] / sum(x.requests for x in ours) * 1e6
            theirs_us = cpu[hello.proc.pid] / sum(x.requests for x in theirs) * 1e6
            rps.notes += (
                f"\nserver CPU per request (less sensitive to other load on the machine): portal "
                f"{ours_us:.0f} us, hello app {theirs_us:.0f} us, ratio {theirs_us / ours_us:.2f}"
            )
            if generator != "wrk":
                # A Python client on this machine saturates before the hello app does, so both rates
                # are the generator's: the figure becomes the servers' capacity, requests per CPU-second.
                rps.notes += (
                    f"\nmeasured with {generator}: {rps.value:,.0f} vs {rps.baseline:,.0f} req/s, bound by "
                    "the generator; the figure shown is requests per server CPU-second (1 / CPU per request)"
                )
                rps.name = "status page requests per server CPU-second"
                rps.value, rps.baseline = 1e6 / ours_us, 1e6 / theirs_us
            rps.judge(lambda f: f.ratio is not None and f.ratio >= 0.6)
            rps.extra = {"portal_cpu_us_per_request": ours_us, "hello_cpu_us_per_request": theirs_us}
            memory.value = vm_hwm(portal.proc.pid)
            memory.baseline = vm_hwm(hello.proc.pid)
            memory.judge(lambda f: f.value is not None and f.value <= 80)
        finally:
            stop(hello.proc)
    finally:
        stop(portal.proc)
    return rps, memory


# ---- (c) codex-portal status -------------------------------------------------------------------
def bench_status(work: Path) -> Figure:
    figure = Figure(
        "c", "`codex-portal status` wall time", "ms", baseline_name=f"{Path(PYTHON).name} -c pass"
    )
    figure.target = "ratio <= 1.6"
    home = make_home(work, "status-home", signed_in_config())
    env = portal_env(home)
    status = [str(PORTAL), "status"]
    empty = [PYTHON, "-c", "pass"]
    # Not a baseline, a floor: the stdlib modules the command cannot do without, and nothing else.
    floor = [PYTHON, "-c", "import tomllib, argparse, datetime"]

    cpu: dict[str, list[float]] = {"status": [], "pass": []}
    floor_samples: list[float] = []

    def once(argv: list[str], name: str = "") -> float:
        began = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        _, code, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(code)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
        if name:
            cpu[name].append((usage.ru_utime + usage.ru_stime) * 1000)
        return elapsed * 1000

    once(status), once(empty), once(floor)  # the files in the page cache
    for _ in range(STATUS_RUNS):
        figure.samples.append(once(status, "status"))
        figure.baseline_samples.append(once(empty, "pass"))
        floor_samples.append(once(floor))
    figure.value = _median(figure.samples)
    figure.baseline = _median(figure.baseline_samples)
    ours, theirs, least = _median(cpu["status"]), _median(cpu["pass"]), _median(floor_samples)
    figure.notes = (
        f"CPU time (user + system), medians: status {ours:.1f} ms, baseline {theirs:.1f} ms, "
        f"ratio {ours / theirs:.2f}\n"
        f"floor: `{Path(PYTHON).name} -c '{floor[2]}'` alone takes {least:.1f} ms, "
        f"ratio {least / figure.baseline:.2f}"
    )
    figure.extra = {"status_cpu_ms": ours, "baseline_cpu_ms": theirs, "floor_ms": least}
    figure.judge(lambda f: f.ratio is not None and f.ratio <= 1.6)
    return figure


# ---- (g) the portal's commands beside the Codex CLI's own ----------------------------------------
def bench_codex(work: Path) -> Figure:
    from tests.codex_cli import CODEX_BIN, codex_env
    from webapp.settings import Settings
    from webapp.stores import open_stores

    figure = Figure("g", "`codex-portal status` CPU", "ms", baseline_name="`codex login status` CPU")
    home = make_home(work, "codex-home", signed_in_config())
    with open_stores(Settings(config_path=home / "config.toml")).transaction():
        pass  # brings auth.json in step, as the portal's first look does
    assert (home / "auth.json").exists()
    env = {**portal_env(home), **{k: v for k, v in codex_env(home).items() if k != "PATH"}}
    commands = {
        "status": [str(PORTAL), "status"],
        "token": [str(PORTAL), "token"],
        "codex": [str(CODEX_BIN), "login", "status"],
    }
    cpu: dict[str, list[float]] = {name: [] for name in commands}

    def once(name: str) -> None:
        proc = subprocess.Popen(
            commands[name],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, code, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(code) != 0:
            raise RuntimeError(f"{' '.join(commands[name])} exited {os.waitstatus_to_exitcode(code)}")
        cpu[name].append((usage.ru_utime + usage.ru_stime) * 1000)

    for name in commands:
        once(name)  # the files in the page cache
        cpu[name].clear()
    for _ in range(STATUS_RUNS):
        for name in commands:
            once(name)
    figure.samples, figure.baseline_samples = cpu["status"], cpu["codex"]
    figure.value, figure.baseline = _median(cpu["status"]), _median(cpu["codex"])
    token = _median(cpu["token"])
    figure.notes = f"`codex-portal token` CPU {token:.1f} ms (ratio {token / figure.baseline:.2f})"
    figure.extra = {"token_cpu_ms": token}
    figure.judge(None)
    return figure


# ---- (e) one locked atomic update --------------------------------------------------------------
def bench_save(work: Path) -> Figure:
    from webapp.stores import ConfigTomlStore

    figure = Figure("e", "locked atomic update of config.toml", "ms", target="<= 5 ms")
    figure.baseline_name = "bare atomic write of the same bytes"
    home = make_home(work, "save-home", OTHER_LINES + '\n[auth]\napi_key = "sk-bench-0000000000000000aaaa"\n')
    config = home / "config.toml"
    store = ConfigTomlStore(config)
    keys = ("sk-bench-1111111111111111wxyz", "sk-bench-2222222222222222abcd")
    store.save_api_key(keys[1])  # imports tomlkit and filelock once, as a running portal has them
    cpu: list[float] = []
    for i in range(SAVE_RUNS):
        began, began_cpu = time.perf_counter(), time.thread_time()
        store.save_api_key(keys[i % 2])
        figure.samples.append((time.perf_counter() - began) * 1000)
        cpu.append((time.thread_time() - began_cpu) * 1000)
    if f'api_key = "{keys[(SAVE_RUNS - 1) % 2]}"' not in config.read_text():
        raise RuntimeError("the last save is not in the file")
    text = config.read_bytes()
    for _ in range(SAVE_RUNS):
        began = time.perf_counter()
        _bare_atomic_write(config, text)
        figure.baseline_samples.append((time.perf_counter() - began) * 1000)
    figure.value = _median(figure.samples)
    figure.baseline = _median(figure.baseline_samples)
    figure.notes = (
        f"on the file system of {work} (fsync included); CPU time of one update, median {_median(cpu):.2f} ms"
    )
    figure.extra = {"cpu_ms": _median(cpu)}
    figure.judge(lambda f: f.value is not None and f.value <= 5)
    return figure


def _bare_atomic_write(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with open(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---- (f) browser sign-in -----------------------------------------------------------------------
def bench_browser(work: Path) -> Figure:
    figure = Figure("f", "browser sign-in, click to 'Signed in as'", "ms", target="")
    from playwright.sync_api import expect, sync_playwright

    from tests.browser import launch_chromium
    from tests.idp import TestProvider
    from webapp.settings import Settings
    from webapp.stores import open_stores

    home = make_home(work, "browser-home", OTHER_LINES)
    with TestProvider(extra_env={"IDP_PORT": str(free_port())}) as idp:
        portal = start_portal(home, work, env=portal_env(home, idp.issuer, idp.client_id))
        try:
            open_session(portal)
            assert portal.cookie is not None
            cookie = {"name": portal.cookie[0], "value": portal.cookie[1], "url": portal.base_url}
            interaction = re.compile(rf"^{re.escape(idp.issuer)}/interaction/")
            with sync_playwright() as driver:
                browser = launch_chromium(driver)
                try:
                    for _ in range(BROWSER_RUNS):
                        # A new context each time: the provider remembers no login, every run is the first.
                        context = browser.new_context()
                        try:
                            context.add_cookies([cookie])  # type: ignore[list-item]
                            page = context.new_page()
                            page.set_default_timeout(30_000)
                            page.goto(portal.base_url + "/")
                            expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
                            page.wait_for_load_state("load")
                            began = time.perf_counter()
                            page.get_by_role("button", name="Sign in", exact=True).click()
                            expect(page).to_have_url(interaction, timeout=30_000)
                            page.locator('input[name="login"]').fill("alice")
                            page.locator('input[name="password"]').fill("any password at all")
                            page.get_by_role("button", name="Sign-in", exact=True).click()
                            page.get_by_role("button", name="Continue", exact=True).click()
                            expect(page.get_by_role("status")).to_contain_text(
                                f"Signed in as {EMAIL}", timeout=30_000
                            )
                            figure.samples.append((time.perf_counter() - began) * 1000)
                        finally:
                            context.close()
                        with open_stores(Settings(config_path=home / "config.toml")).transaction() as tx:
                            tx.save(None)  # signed out in both stores, nothing revoked
                finally:
                    browser.close()
        finally:
            stop(portal.proc)
    figure.value = _median(figure.samples)
    figure.notes = "headless Debian Chromium (Playwright), real oidc-provider on loopback; no target"
    return figure


# ---- the run -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def pick_generator(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "httpx2"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --generator httpx2")
    return choice


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"


def print_table(figures: list[Figure]) -> None:
    rows = [("", "figure", "value", "baseline", "ratio", "target", "")]
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        base = _fmt(f.baseline, f.unit) if f.baseline is not None else "-"
        rows.append((f.key, f.name, _fmt(f.value, f.unit), base, ratio, f.target or "(none)", f.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for f in figures:
        if f.baseline_name:
            print(f"({f.key}) baseline: {f.baseline_name}")
        for line in f.notes.splitlines():
            print(f"({f.key}) {line}")
        for label, samples in (("samples", f.samples), ("baseline samples", f.baseline_samples)):
            if samples:
                print(f"({f.key}) {label}: {_summary(samples)}")


def _summary(samples: list[float]) -> str:
    if len(samples) <= 15:
        return ", ".join(f"{x:.1f}" for x in samples)
    deciles = statistics.quantiles(samples, n=10)
    return (
        f"{len(samples)} runs: min {min(samples):.2f}, median {_median(samples):.2f}, "
        f"p90 {deciles[-1]:.2f}, max {max(samples):.2f}"
    )


def compile_bytecode() -> None:
    """Write webapp's .pyc files, as pip does for an installed wheel and Python does on a first run.

    The editable install has none, and where PYTHONDONTWRITEBYTECODE is set (it is on this machine)
    every run of the portal would compile its modules from source: ~13 ms of (c) and more of (a),
    which no user with an installed wheel pays.
    """
    import compileall

    if not compileall.compile_dir(ROOT / "webapp", quiet=1):
        raise SystemExit("compileall failed on webapp/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--only", default="a,b,c,d,e,f,g", help="comma-separated parts to run (default: all)")
    parser.add_argument(
        "--generator", choices=("auto", "wrk", "httpx2"), default="auto", help="load generator"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not PORTAL.exists():
        raise SystemExit(f"{PORTAL} is missing: run the bench with the venv's python after `make install`")
    generator = pick_generator(args.generator)
    compile_bytecode()
    began = time.monotonic()
    info = machine()
    print(
        f"codex-portal bench, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {info['nproc']} cores, "
        f"{info['memory_gib']} GiB, Python {info['python']}, load average {info['load_average_at_start']}",
        flush=True,
    )
    figures: list[Figure] = []
    errors: list[str] = []
    steps: list[tuple[set[str], Callable[[Path], list[Figure]]]] = [
        ({"a"}, lambda w: [bench_start(w)]),
        ({"b", "d"}, lambda w: list(bench_throughput(w, generator))),
        ({"c"}, lambda w: [bench_status(w)]),
        ({"e"}, lambda w: [bench_save(w)]),
        ({"f"}, lambda w: [bench_browser(w)]),
        ({"g"}, lambda w: [bench_codex(w)]),
    ]
    with tempfile.TemporaryDirectory(prefix="codex-portal-bench-") as tmp:
        work = Path(tmp)
        try:
            for keys, step in steps:
                if not keys & only:
                    continue
                step_began = time.monotonic()
                print(f"({'/'.join(sorted(keys))}) ...", end=" ", flush=True)
                try:
                    got = [f for f in step(work) if f.key in only]
                except Exception as exc:  # reported and counted; the other parts still run
                    message = f"{type(exc).__name__}: {exc}"
                    errors.append(f"({'/'.join(sorted(keys))}) {message}")
                    got = [
                        Figure(k, "not measured", "", verdict="ERROR", notes=message)
                        for k in sorted(keys & only)
                    ]
                figures.extend(got)
                print(f"{time.monotonic() - step_began:.1f} s", flush=True)
        finally:
            stop_all()
    figures.sort(key=lambda f: f.key)
    print()
    print_table(figures)
    total = time.monotonic() - began
    print(f"\ngenerator: {generator}; whole bench {total:.0f} s")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if args.json:
        report = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": info,
            "generator": generator,
            "seconds": round(total, 1),
            "figures": [asdict(f) for f in figures],
            "errors": errors,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if errors:
        return 1
    if args.strict and any(f.verdict == "MISS" for f in figures):
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    stop_all()
    sys.exit(130)
