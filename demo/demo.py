"""Try codex-portal offline: the test OpenID provider and the portal, both on this machine.

    make demo                       # = python demo/demo.py (after `make install provider`)
    python demo/demo.py --no-browser --port 1456 --codex-home /tmp/codex-demo
    python demo/demo.py --fresh     # a throwaway CODEX_HOME, removed at the end

It starts the test provider of the suite (npm oidc-provider on 127.0.0.1:1459, any name and password
sign in; see tests/idp.py), then `codex-portal serve` pointed at it, with CODEX_HOME in the demo's own
folder (~/.local/state/codex-portal-demo, kept between runs: the same provider address and the same
folder each time, so a printed `export` line stays good), so your own ~/.codex is never touched. It
prints the portal's one-time link (and the portal opens it in your browser unless --no-browser),
tells you when the config file changes (key names only, never values), and stops both on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python demo/demo.py` puts demo/ first, not the checkout

from tests.idp import PROVIDER_DIR, ProviderError, TestProvider  # noqa: E402

START_TIMEOUT = 30.0  # seconds for the portal to print its link
STOP_TIMEOUT = 5.0  # seconds for the portal to stop before it is killed
WATCH_INTERVAL = 0.5  # seconds between looks at the config file
PROVIDER_PORT = 1459  # the same each run, so the provider's address (the issuer) does not change


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make demo ARGS='...'  or  python demo/demo.py",
        description="Run codex-portal against a local test provider: no account, no internet needed.",
    )
    parser.add_argument("--port", type=int, default=1455, help="the portal's port (default 1455)")
    parser.add_argument(
        "--provider-port",
        type=int,
        default=PROVIDER_PORT,
        help=f"the test provider's port (default {PROVIDER_PORT}, the same every run; 0: any free port)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--codex-home",
        type=Path,
        help="keep the config file in this folder (default: ~/.local/state/codex-portal-demo)",
    )
    where.add_argument("--fresh", action="store_true", help="use a throwaway CODEX_HOME, removed at the end")
    parser.add_argument("--no-browser", action="store_true", help="print the link only")
    return parser


def say(text: str = "") -> None:
    print(text, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        print(
            f"Error: the test provider is not installed ({PROVIDER_DIR / 'node_modules'} is missing): "
            "run `make demo`, or `make provider` first.",
            file=sys.stderr,
        )
        return 1
    _stop_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    try:
        with ExitStack() as stack:  # undone in reverse: the portal, the provider, the folder, the message
            kept = not args.fresh
            stack.callback(
                say,
                "\nStopped the portal and the test provider"
                + ("." if kept else "; removed the throwaway folder."),
            )
            if args.fresh:
                codex_home = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="codex-portal-demo-"))
                )
            else:
                codex_home = (args.codex_home or _demo_home()).expanduser().resolve()
                codex_home.mkdir(mode=0o700, parents=True, exist_ok=True)
            provider = TestProvider(extra_env={"IDP_PORT": str(args.provider_port)})
            stack.callback(provider.stop)  # registered first: a Ctrl-C during its start stops it too
            provider.start()
            config = codex_home / "config.toml"
            say("codex-portal demo: everything runs on this machine; nothing goes to the internet.")
            say()
            say(f"  Test provider: {provider.issuer}  (any name and any password sign in)")
            say(f"  Config file:   {config}")
            where = "kept between runs" if kept else "a throwaway CODEX_HOME, removed at the end"
            say(f"                 ({where}; your own ~/.codex is not touched)")
            say()
            _warn_about_an_earlier_provider(config, provider.issuer)
            return _run_portal(args, provider, codex_home)
    except KeyboardInterrupt:
        return 0
    except ProviderError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _demo_home() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "codex-portal-demo"


def _warn_about_an_earlier_provider(config: Path, issuer: str) -> None:
    """A kept CODEX_HOME may hold tokens of an earlier demo run, which its provider has forgotten."""
    try:
        auth = tomllib.loads(config.read_text(encoding="utf-8")).get("auth")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # no file yet, or one the portal will name the fault of
    earlier = auth.get("issuer") if isinstance(auth, dict) else None
    if isinstance(earlier, str) and earlier != issuer:
        say(f"Note: the config file holds a sign-in from another provider ({earlier}); Refresh goes")
        say("there, and an earlier demo's provider is gone by now. Sign in again here (or Sign out)")
        say("to start afresh.")
        say()
    elif isinstance(earlier, str):
        say("Note: the config file holds a sign-in from an earlier run. The test provider forgets its")
        say("sign-ins when it stops, so Refresh will say the session expired: sign in again.")
        say()


def _stop_on(*signals: signal.Signals) -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop the demo: the first one unwinds it (both children are stopped,
    the throwaway folder removed); any further one is ignored so that nothing cuts the cleanup short."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for other in signals:
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt

    for signum in signals:
        signal.signal(signum, interrupt)


def _run_portal(args: argparse.Namespace, provider: TestProvider, codex_home: Path) -> int:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CODEX_PORTAL_")}
    env.update(
        CODEX_HOME=str(codex_home),
        CODEX_PORTAL_ISSUER=provider.issuer,
        CODEX_PORTAL_CLIENT_ID=provider.client_id,
        CODEX_PORTAL_PORT=str(args.port),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "webapp", "serve", "--port", str(args.port)]  # = codex-portal serve
    if args.no_browser:
        command.append("--no-browser")
    portal = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with _forwarded(portal) as link:
        try:
            url = link.get(timeout=START_TIMEOUT)
        except queue.Empty:
            print(f"Error: the portal printed no link within {START_TIMEOUT:.0f} s.", file=sys.stderr)
            return 1
        if url is not None:
            config = codex_home / "config.toml"
            before = _snapshot(config)  # before anyone has the link
            if before is not None:
                say(f"{config.name} now: {_describe(config)}")
                say()
            names = ("CODEX_HOME", "CODEX_PORTAL_ISSUER", "CODEX_PORTAL_CLIENT_ID", "CODEX_PORTAL_PORT")
            exports = "export " + " ".join(f"{name}={shlex.quote(env[name])}" for name in names)
            _show_instructions(url, config, opened=not args.no_browser, cli_environment=exports)
            _watch(portal, config, before)
        return _exit_status(portal)


@contextmanager
def _forwarded(portal: subprocess.Popen[bytes]) -> Iterator[queue.Queue[str | None]]:
    """The portal's first stdout line (its link) arrives on the queue (None: it exited first); its
    stderr (errors, the request log without query strings) is passed through."""
    link: queue.Queue[str | None] = queue.Queue()
    assert portal.stdout is not None and portal.stderr is not None

    def read_stdout(stream: IO[bytes]) -> None:
        first = True
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if first:
                link.put(line)
                first = False
            else:
                say(line)
        link.put(None)

    def read_stderr(stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            if not line.startswith("codex-portal is serving"):  # the instructions say it already
                sys.stderr.write("portal: " + line)
                sys.stderr.flush()

    threads = [
        threading.Thread(target=read_stdout, args=(portal.stdout,), daemon=True),
        threading.Thread(target=read_stderr, args=(portal.stderr,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield link
    finally:
        _stop(portal)
        for thread in threads:
            thread.join(timeout=STOP_TIMEOUT)
        portal.stdout.close()
        portal.stderr.close()


def _show_instructions(url: str, config: Path, *, opened: bool, cli_environment: str) -> None:
    if opened:
        say("The portal opens this link in your browser (if nothing opens, open it yourself; it works once):")
    else:
        say("Open this link in your browser (it works once):")
    say()
    say(url)
    say()
    say('Then press "Sign in". On the test provider\'s page type any name (a name, not an e-mail:')
    say('"alice" becomes alice@example.test) and any password, press "Sign-in", then "Continue":')
    say('you are back on the portal, signed in. "Sign in with a code", "Save API key", "Refresh"')
    say('and "Sign out" work too, and each of them changes')
    say(f"  {config}")
    say()
    say("The command line works against the same provider; in another terminal:")
    say(f"  {cli_environment}")
    say("  .venv/bin/codex-portal status      (or token, logout, login --device, login --api-key)")
    say()
    say("Press Ctrl-C to stop the portal and the test provider.")
    say()


def _watch(portal: subprocess.Popen[bytes], config: Path, seen: tuple[int, int] | None) -> None:
    """Wait for the portal to exit, telling which keys [auth] holds whenever the file changes."""
    while True:
        try:
            portal.wait(timeout=WATCH_INTERVAL)
            return
        except subprocess.TimeoutExpired:
            pass
        now = _snapshot(config)
        if now != seen:
            say(f"{config.name} changed: {_describe(config)}")
            seen = now


def _snapshot(config: Path) -> tuple[int, int] | None:
    try:
        stat = config.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _describe(config: Path) -> str:
    try:
        auth = tomllib.loads(config.read_text(encoding="utf-8")).get("auth")
    except FileNotFoundError:
        return "no file"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"cannot read it ({type(exc).__name__})"
    if not isinstance(auth, dict) or not auth:
        return "no [auth] table (signed out)"
    return "[auth] has " + ", ".join(sorted(auth)) + " (values not shown)"


def _exit_status(portal: subprocess.Popen[bytes]) -> int:
    """The portal stopped by itself (e.g. its port was taken; it said why on stderr)."""
    code = portal.wait()
    print(f"The portal exited (status {code}).", file=sys.stderr)
    return 1 if code < 0 else code or 1


def _stop(portal: subprocess.Popen[bytes]) -> None:
    """SIGTERM: uvicorn shuts down gracefully, also when a terminal's Ctrl-C reached the portal too
    (a second SIGINT would force its exit, with a traceback); then SIGKILL if it hangs."""
    if portal.poll() is not None:
        return
    portal.terminate()
    try:
        portal.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        portal.kill()
        portal.wait(timeout=STOP_TIMEOUT)


if __name__ == "__main__":
    raise SystemExit(main())
