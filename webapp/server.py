"""Serving the portal: loopback sockets, uvicorn, the launch URL, and the programmatic login API."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import html
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webapp.credentials import Credentials
from webapp.errors import PortalError
from webapp.oauth import LOGIN_TTL
from webapp.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from webapp.portal import Portal


@dataclass(frozen=True)
class ServerOptions:
    """Options of `run_login_server`; None means: from the environment, else the default."""

    port: int | None = None
    issuer: str | None = None
    client_id: str | None = None
    scope: str | None = None
    codex_home: Path | None = None
    open_browser: bool = True
    codex_sync: bool | None = None  # keep the Codex CLI's auth.json in step (default: yes)
    account_name: str | None = None  # the new account's name (default: its email)
    login_hint: str | None = None  # the account to sign in to; another one is refused

    def settings(self) -> Settings:
        settings = Settings.from_env()
        config_path = self.codex_home / "config.toml" if self.codex_home else None
        return settings.with_overrides(
            port=self.port,
            port_chosen=True if self.port is not None else None,  # that port, no fallback
            issuer=self.issuer,
            client_id=self.client_id,
            scope=self.scope,
            config_path=config_path,
            open_browser=self.open_browser,
            codex_sync=self.codex_sync,
        )


class PortInUse(PortalError):
    """The port is taken (by another program, or a portal serving another CODEX_HOME)."""


def port_in_use_message(settings: Settings) -> str:
    from webapp.reopen import unwritable_note

    port, home = settings.port, settings.codex_home
    if unwritable_note(home):
        return (
            f"port {port} is already in use. If it is codex-portal serving {home}, it could not "
            f"record itself there ({home} cannot be written), so it cannot give a new link: stop it "
            "and start it again. Otherwise choose another port with --port"
        )
    return (
        f"port {port} is already in use, by another program or by a codex-portal serving another "
        "CODEX_HOME (it gives no link to this one); stop it or choose another with --port"
    )


def choose_port(settings: Settings) -> Settings:
    """The default issuer's sign-in moves to 1457 (the Codex CLI's other registered redirect) when
    1455 is taken; a port given by --port or CODEX_PORTAL_PORT is that port or nothing."""
    from webapp.settings import FALLBACK_PORT

    if not settings.may_fall_back:
        return settings
    try:
        for sock in bind_sockets(settings):  # a probe: serve_portal binds again at once
            sock.close()
    except PortInUse:
        print(
            f"Port {settings.port} is in use by another program; using {FALLBACK_PORT}, the Codex "
            "CLI's other registered sign-in port.",
            file=sys.stderr,
            flush=True,
        )
        return settings.with_overrides(port=FALLBACK_PORT)
    return settings


def bind_sockets(settings: Settings) -> list[socket.socket]:
    """Listening sockets on the loopback addresses (both families when this machine has them)."""
    sockets: list[socket.socket] = []
    for host in settings.bind_hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, settings.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and family == socket.AF_INET6:
                continue  # no IPv6 loopback here: 127.0.0.1 is enough
            for other in sockets:
                other.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(port_in_use_message(settings)) from None
            raise PortalError(f"cannot listen on {host} port {settings.port}: {exc.strerror}") from None
        sockets.append(sock)
    return sockets


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the redirect file goes: under the person's home, as Jupyter keeps its runtime files
    ($XDG_DATA_HOME/codex-portal/runtime, else ~/.local/share/codex-portal/runtime). Not the
    system /tmp, nor $XDG_RUNTIME_DIR (/run/user/UID): snap and flatpak browsers see a /tmp of
    their own and cannot read /run/user."""
    env = os.environ if environ is None else environ
    data = env.get("XDG_DATA_HOME", "")
    base = Path(data) if os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "codex-portal" / "runtime"


def _private_folder(folder: Path) -> Path:
    """`folder`, created 0700 where missing; an existing one must be a folder of ours (not a link),
    and is made 0700."""
    from webapp.files import create_private

    create_private(folder)
    st = os.lstat(folder)
    if not os.path.isdir(folder) or os.path.islink(folder) or st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"{folder} is not a private folder of this user")
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


def open_in_browser(url: str) -> bool:
    """Open `url` without putting it in any process's argv (other users can read argv): the
    browser is pointed at a private 0600 file that redirects, the way Jupyter does it, kept under
    the person's home (`runtime_dir`) where snap and flatpak browsers can reach it (the system
    /tmp is a last resort). The file is removed a minute later, or at exit. False when no browser
    could be started."""
    import secrets
    import webbrowser

    link = html.escape(url, quote=True)
    page = (
        f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={link}">'
        f'<title>codex-portal</title><p><a href="{link}">Open codex-portal</a></p>'
    )
    try:
        path = _private_folder(runtime_dir()) / f"open-{secrets.token_hex(8)}.html"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        remove: Callable[[], None] = functools.partial(_unlink_quietly, path)
    except (OSError, RuntimeError):  # no home, or one that cannot be written: the system /tmp
        folder = tempfile.mkdtemp(prefix="codex-portal-")
        path = Path(folder) / "open.html"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        remove = functools.partial(shutil.rmtree, folder, ignore_errors=True)
    with os.fdopen(fd, "w") as f:
        f.write(page)
    atexit.register(remove)  # whichever comes first: a minute for the browser to read it, or exit
    timer = threading.Timer(60.0, remove)
    timer.daemon = True
    timer.start()
    opened = webbrowser.open(path.as_uri())
    if not opened:
        remove()
    return opened


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def raise_open_files_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; the soft limit in force after."""
    try:
        import resource
    except ImportError:  # not a Unix
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    # An infinite hard limit (macOS) is refused: try large finite ones, down to its OPEN_MAX.
    for wanted in (hard,) if hard != resource.RLIM_INFINITY else (1 << 20, 65536, 10240):
        if wanted <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            continue
        return wanted
    return soft


LISTEN_QUEUE = 2048  # connections the kernel queues for accept() (uvicorn's default backlog)
FD_RESERVE = 32  # descriptors for the process itself: listening sockets, files, calls to the provider


def connection_limits(open_files: int, wanted: int) -> tuple[int, int]:
    """(the cap on open connections, the accept backlog) for a process allowed `open_files`
    descriptors. Up to `wanted` connections, at most a quarter of the descriptors; asyncio accepts
    up to a backlog's worth at a time, and about three of those can be in flight before the
    connections over the cap are closed: the backlog keeps that within the limit."""
    cap = max(8, min(wanted, open_files // 4))
    backlog = max(8, min(2048, (open_files - FD_RESERVE - cap) // 3))
    return cap, backlog


PEER_CHECK_ON = "Connections from other users of this machine are refused."


def peer_check_off_reason(settings: Settings) -> str | None:
    """Why the peer check (connections from another uid refused) cannot run; None when it runs."""
    from webapp import peers

    if settings.allow_remote:
        return (
            "with --allow-remote it cannot tell which user a connection comes from (a browser "
            "outside, or behind a port mapping, is no user of this machine)"
        )
    if not peers.available():
        return "this system does not show which user a connection comes from"
    return None


def peer_check_line(settings: Settings) -> str:
    reason = peer_check_off_reason(settings)
    if reason is None:
        return PEER_CHECK_ON
    return (
        f"Note: connections from other users of this machine are NOT refused: {reason}. Another "
        "user's server on localhost that receives your session cookie can use the portal as you."
    )


def _drop(record: logging.LogRecord) -> bool:
    return False


def _configure_logging(log_requests: bool) -> None:
    # uvicorn's access log prints query strings (launch tokens, codes). access_log=False is not
    # enough inside a process that configures uvicorn's loggers for something else too.
    logging.getLogger("uvicorn.access").addFilter(_drop)
    from webapp.protocol import ACCEPT_ERRORS

    logging.getLogger("asyncio").addFilter(ACCEPT_ERRORS)  # once a minute, one line
    logger = logging.getLogger("codex_portal")
    if log_requests:
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # again: something else in this process may have changed it


async def serve_portal(
    settings: Settings,
    *,
    launch_token: str,
    on_ready: Callable[[], None],
    stop: asyncio.Event | None = None,
    on_login: Callable[[Credentials | None, str], None] | None = None,
    app_ready: Callable[[FastAPI], None] | None = None,
    log_requests: bool = True,
) -> None:
    """Run the portal until `stop` is set (or a signal); `on_ready` runs once it answers.

    `log_requests`: print a line per request on stderr (the path, never the query string).
    """
    import uvicorn

    from webapp.app import create_app
    from webapp.protocol import PortalProtocol

    open_files = raise_open_files_limit()
    cap, backlog = connection_limits(open_files, PortalProtocol.max_connections)
    protocol = PortalProtocol.configured(
        peer_check=peer_check_off_reason(settings) is None, max_connections=cap
    )
    sockets = bind_sockets(settings)
    app = create_app(settings, launch_token=launch_token, on_login=on_login)
    if app_ready is not None:
        app_ready(app)
    config = uvicorn.Config(
        app,
        lifespan="off",  # run below instead: a second Ctrl-C must not cancel it half-way
        log_level="warning",
        access_log=False,  # uvicorn's would print query strings, which carry codes
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=2,
        h11_max_incomplete_event_size=16 * 1024,
        http=protocol,
        backlog=backlog,
    )
    _configure_logging(log_requests)
    try:
        async with app.router.lifespan_context(app):
            await _run_until_stopped(uvicorn.Server(config), sockets, on_ready=on_ready, stop=stop)
    finally:
        for sock in sockets:
            sock.close()


async def _run_until_stopped(
    server: uvicorn.Server,
    sockets: list[socket.socket],
    *,
    on_ready: Callable[[], None],
    stop: asyncio.Event | None,
) -> None:
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    for sock in sockets:
        # asyncio gave the kernel's queue of connections waiting to be accepted the size of its
        # accept batch (`backlog`, kept small for the descriptor limit); queued connections hold
        # no descriptor of ours, so a burst may wait there rather than see its SYNs dropped.
        with contextlib.suppress(OSError):
            sock.listen(LISTEN_QUEUE)
    on_ready()
    if stop is None:
        await task
        return
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    server.should_exit = True
    await task


FAREWELL = 5.0  # seconds a one-shot login waits, after the outcome, for its page to be fetched


async def _result_shown(portal: Portal) -> None:
    """The browser that brought the callback is sent to a page with the outcome (`/auth/done`):
    wait until it is served (its assets are inside it), for at most FAREWELL seconds. Stopping
    sooner would refuse it. A pasted address leaves no page to wait for."""
    if portal.results:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(portal.result_taken.wait(), FAREWELL)


NO_BROWSER = "No web browser could be opened here: open the link above in yours."


def sign_in_prompt(open_browser: bool) -> str:
    if open_browser:
        return "Opening your browser to sign in. If it does not open, use this link:"
    return "To sign in, open this link in your browser:"


def launch_url(settings: Settings, token: str) -> str:
    return f"http://localhost:{settings.port}/?token={token}"


def run_serve(settings: Settings) -> int:
    from webapp import reopen

    # A portal already serving this CODEX_HOME gives a new link (before any port fallback).
    found = reopen.find_link(settings)
    if found.url is not None:
        return reopen.announce(settings, found)
    settings = choose_port(settings).with_overrides(publish_link=True)
    from webapp.security import Sessions

    token = Sessions.new_launch_token()
    url = launch_url(settings, token)

    def ready() -> None:
        print(url, flush=True)
        print(
            f"codex-portal is serving {settings.config_path}; press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        if settings.open_browser and not open_in_browser(url):
            print(NO_BROWSER, file=sys.stderr, flush=True)
        print(peer_check_line(settings), file=sys.stderr, flush=True)

    if settings.allow_remote:
        print(
            "Warning: listening beyond loopback (--allow-remote); anyone who can reach this port "
            "and has the printed link can manage your credentials.",
            file=sys.stderr,
            flush=True,
        )
    asyncio.run(serve_portal(settings, launch_token=token, on_ready=ready))
    return 0


async def run_login_server(
    options: ServerOptions | None = None,
    *,
    on_url: Callable[[str], None] | None = None,
    paste: bool = False,
) -> Credentials:
    """Browser sign-in as the Codex CLI's `codex-login` does it: serve the callback, open the
    provider's page, return the saved credentials once the tokens are in the config file.

    `paste`: also take the address the browser ended on from standard input (webapp.paste), for
    a browser on another machine; over SSH the `ssh -L` line is printed too."""
    from webapp.security import Sessions

    options_ = options or ServerOptions()
    settings = choose_port(options_.settings())
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[Credentials | None, str]] = loop.create_future()
    stop = asyncio.Event()
    apps: list[FastAPI] = []
    tasks: list[asyncio.Future[None]] = []

    def on_login(creds: Credentials | None, message: str) -> None:
        if not outcome.done():
            outcome.set_result((creds, message))

    def ready() -> None:
        from webapp.oauth import LoginRequest
        from webapp.views import start_login

        async def begin() -> None:
            try:
                request = LoginRequest(name=options_.account_name, login_hint=options_.login_hint)
                url = await start_login(apps[0].state.portal, request)
            except PortalError as exc:
                if not outcome.done():
                    outcome.set_exception(exc)
                return
            if on_url is not None:
                on_url(url)
            else:
                print(f"{sign_in_prompt(settings.open_browser)}\n{url}", file=sys.stderr)
            if settings.open_browser and not await asyncio.to_thread(open_in_browser, url):
                print(NO_BROWSER, file=sys.stderr, flush=True)
            if paste:
                await _read_pastes(apps[0].state.portal)

        tasks.append(asyncio.ensure_future(begin()))

    async def _read_pastes(portal: Portal) -> None:
        from webapp.paste import help_lines, read_pastes

        print("\n".join(help_lines(settings.port, os.environ)), file=sys.stderr, flush=True)

        def cancel(exc: PortalError) -> None:
            if not outcome.done():
                outcome.set_exception(exc)

        await read_pastes(portal, settings.port, finished=outcome.done, on_login=on_login, on_cancel=cancel)

    server = asyncio.create_task(
        serve_portal(
            settings,
            launch_token=Sessions.new_launch_token(),
            on_ready=ready,
            stop=stop,
            on_login=on_login,
            app_ready=apps.append,
            log_requests=False,  # a one-shot sign-in: the person's terminal, or the caller's logging
        )
    )
    try:
        waiter = asyncio.ensure_future(outcome)
        pending: set[asyncio.Future[Any]] = {waiter, server}
        done, _ = await asyncio.wait(pending, timeout=LOGIN_TTL, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            await server  # raises the reason it could not serve (e.g. the port is taken)
            raise PortalError("the login server stopped before the sign-in finished")
        if not done:
            raise PortalError("the sign-in was not completed within 10 minutes")
        creds, message = waiter.result()
        await _result_shown(apps[0].state.portal)
        if creds is None:
            raise PortalError(message)
        return creds
    finally:
        for task in tasks:
            task.cancel()  # the reading of pasted addresses, when the callback came first
        stop.set()
        await asyncio.gather(server, *tasks, return_exceptions=True)
