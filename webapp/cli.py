"""codex-portal [serve] | login | status | token | logout.

Commands that only read the config file import neither the web stack nor an HTTP client.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from webapp import __version__
from webapp.credentials import account_name
from webapp.errors import PortalError, full_stop
from webapp.settings import Settings, parse_port

COMMANDS = ("serve", "login", "status", "token", "logout", "accounts", "switch", "open")
TOP_LEVEL_FLAGS = ("-h", "--help", "--version")
MAX_KEY_INPUT = 64 * 1024
EPILOG = """\
where things are read from (first found wins):
  config file   $CODEX_HOME/config.toml, else ~/.codex/config.toml
  provider      --issuer, --client-id, --scope; then CODEX_PORTAL_ISSUER,
                CODEX_PORTAL_CLIENT_ID, CODEX_PORTAL_SCOPE; then the Codex CLI's
                defaults
  port          --port, then CODEX_PORTAL_PORT, then 1455
"""
STATUS_EXIT_CODES = """\
exit codes:
  0  signed in (an API key, or OAuth that is valid or can be refreshed)
  1  not signed in, expired with no way to refresh, or an error (a file that
     cannot be read: with --json the object then carries an "error" key)
  2  usage error

"""
NO_KEY_IN_ARGV = (
    "an API key is never taken from the command line (other users can read it there): "
    "run `codex-portal login --api-key` and paste it at the prompt, or pipe it in"
)


class _Parser(argparse.ArgumentParser):
    """argparse, except that an error repeats no value from the command line: it may be a key."""

    def error(self, message: str) -> NoReturn:
        # "argument --api-key: ignored explicit argument 'sk-...'" (from --api-key=sk-...)
        message = re.sub(r"ignored explicit argument .*", "takes no value", message)
        super().error(message)


def _unexpected(extra: list[str], command: str) -> str:
    """Which words were not understood: options by name, anything else only counted."""
    options = [word.split("=", 1)[0] for word in extra if word.startswith("-")]
    hidden = len(extra) - len(options)
    parts = [f"unrecognized arguments: {' '.join(options)}"] if options else []
    if hidden:
        words = "an unexpected word" if hidden == 1 else f"{hidden} unexpected words"
        parts.append(f"{words} (not repeated here, in case of a secret)")
        if command == "login":
            parts.append(NO_KEY_IN_ARGV)
    return "; ".join(parts)


def _provider_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A command that talks to the provider: the provider flags, and where settings come from."""
    parser = _command(sub, name, help)
    _provider_flags(parser)
    return parser


def _command(sub: Any, name: str, help: str, epilog: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help[:1].upper() + help[1:] + ".",
        epilog=epilog + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--no-codex-sync",
        action="store_true",
        help="leave the Codex CLI's auth.json alone (also CODEX_PORTAL_CODEX_SYNC=0)",
    )
    return parser


def _provider_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=_port, help="port of the portal and its /auth/callback (default 1455)")
    parser.add_argument("--issuer", help="OAuth/OpenID issuer URL (default https://auth.openai.com)")
    parser.add_argument("--client-id", help="OAuth client id (default: the Codex CLI's public client)")
    parser.add_argument("--scope", help='scopes to ask for (default "openid profile email offline_access")')
    parser.add_argument(
        "--no-browser", action="store_true", help="print the link instead of opening a browser"
    )


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except PortalError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def build_parser() -> tuple[argparse.ArgumentParser, Mapping[str, argparse.ArgumentParser]]:
    """The parser, and each command's own parser (for errors that show that command's usage)."""
    parser = _Parser(
        prog="codex-portal",
        description="Manage the Codex CLI's login in $CODEX_HOME/config.toml from a localhost web page.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"codex-portal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = _provider_command(sub, "serve", "start the portal and open it in the browser (the default)")
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow --host to be a non-loopback address"
    )
    serve.add_argument("--host", action="append", help="address to listen on (default 127.0.0.1 and ::1)")
    login = _provider_command(sub, "login", "sign in once from the terminal, then exit")
    how = login.add_mutually_exclusive_group()
    how.add_argument("--device", action="store_true", help="sign in with a code entered on another device")
    how.add_argument("--api-key", action="store_true", help="read an API key from standard input instead")
    login.add_argument("--name", help="the account's name (default: its email, or the key's hint)")
    login.add_argument(
        "--account",
        metavar="EMAIL",
        help="the account to sign in to (the provider is told; another is refused)",
    )
    status = _command(sub, "status", "show the login and what the Codex CLI sees", STATUS_EXIT_CODES)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _command(sub, "token", "print a valid access token (or the API key), refreshing it first if needed")
    logout = _command(sub, "logout", "revoke (best effort) and remove an account (the active one by default)")
    logout.add_argument("name", nargs="?", metavar="NAME", help="a saved account's name or email")
    logout.add_argument("--all", action="store_true", help="every account, active and saved")
    accounts = _command(sub, "accounts", "list the accounts, the active one marked")
    accounts.add_argument("--json", action="store_true", help="print one JSON list")
    switch = _command(sub, "switch", "make a saved account the active one (nothing is revoked)")
    switch.add_argument("name", metavar="NAME", help="the account's name or email")
    reopen = _command(
        sub, "open", "print and open a new one-time link to the portal already serving this CODEX_HOME"
    )
    reopen.add_argument("--no-browser", action="store_true", help="print the link only")
    return parser, sub.choices


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0].startswith("-") and args_list[0] not in TOP_LEVEL_FLAGS:
        given = [word for word in args_list if word in COMMANDS]
        if given:  # `codex-portal --json status` is `codex-portal status --json`
            args_list.remove(given[0])
            args_list.insert(0, given[0])
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in TOP_LEVEL_FLAGS):
        args_list.insert(0, "serve")  # `codex-portal --port 1456` serves
    parser, commands = build_parser()
    try:
        if args_list[0] not in (*COMMANDS, *TOP_LEVEL_FLAGS):
            word = args_list[0]
            named = repr(word) if re.fullmatch(r"[a-z][a-z-]{0,19}", word) else "(not repeated here)"
            parser.error(f"unknown command {named}: use one of {', '.join(COMMANDS)}")
        args, extra = parser.parse_known_args(args_list)
        if extra:
            commands[args.command].error(_unexpected(extra, args.command))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        settings = _settings(args)
        return int(HANDLERS[args.command](args, settings))
    except PortalError as exc:
        print(f"Error: {full_stop(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


def _settings(args: argparse.Namespace) -> Settings:
    # A bad CODEX_PORTAL_PORT concerns only the commands that listen on a port.
    listens = args.command == "serve" or (args.command == "login" and not args.api_key)
    settings = Settings.from_env(with_port=listens).with_overrides(
        port=getattr(args, "port", None),
        port_chosen=True if getattr(args, "port", None) is not None else None,
        issuer=getattr(args, "issuer", None),
        client_id=getattr(args, "client_id", None),
        scope=getattr(args, "scope", None),
    )
    if getattr(args, "no_browser", False):
        settings = settings.with_overrides(open_browser=False)
    if getattr(args, "no_codex_sync", False):
        settings = settings.with_overrides(codex_sync=False)
    hosts = getattr(args, "host", None)
    if hosts:
        settings = _bind(settings, hosts, allow_remote=args.allow_remote)
    return settings


def _bind(settings: Settings, hosts: list[str], *, allow_remote: bool) -> Settings:
    from webapp.provider import is_loopback_host

    remote = [h for h in hosts if not is_loopback_host(h.strip("[]"))]
    if remote and not allow_remote:
        raise PortalError(f"refusing to listen on {', '.join(remote)}: add --allow-remote if you mean it")
    return settings.with_overrides(bind_hosts=tuple(h.strip("[]") for h in hosts), allow_remote=bool(remote))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.server import run_serve

    return run_serve(settings)


def cmd_login(args: argparse.Namespace, settings: Settings) -> int:
    name = account_name(args.name) if args.name is not None else None
    if args.api_key:
        if args.account:
            raise PortalError("--account names an account to sign in to; an API key has none")
        return _login_api_key(settings, name)
    if args.device:
        import asyncio

        return asyncio.run(_login_device(settings, name, args.account))
    from webapp.server import ServerOptions, run_login_server, sign_in_prompt

    options = ServerOptions(
        port=settings.port if settings.port_chosen else None,  # else 1457 when 1455 is taken
        issuer=settings.issuer,
        client_id=settings.client_id,
        scope=settings.scope,
        codex_home=settings.config_path.parent,
        open_browser=settings.open_browser,
        codex_sync=settings.codex_sync,
        account_name=name,
        login_hint=args.account,
    )

    def show(url: str) -> None:
        print(sign_in_prompt(settings.open_browser), file=sys.stderr)
        print(url, flush=True)

    import asyncio

    creds = asyncio.run(run_login_server(options, on_url=show, paste=True))
    who = f" as {creds.email}" if creds.email else ""
    print(f"Signed in{who}. Saved to {_saved_to(settings)}.", file=sys.stderr)
    return 0


async def _login_device(settings: Settings, name: str | None, expected: str | None) -> int:
    from webapp.accounts import Account
    from webapp.device import PHISHING_WARNING, complete_device_login, start_device_flow
    from webapp.oauth import check_account

    account = Account(settings)
    try:
        device = await start_device_flow(account.provider, client_id=settings.client_id, scope=settings.scope)
        minutes = max(1, device.expires_in // 60)
        print(
            f"On any device, open {device.verification_uri} and enter this code (valid {minutes} min):",
            file=sys.stderr,
        )
        print(device.user_code, flush=True)
        if device.verification_uri_complete:
            print(f"Or open {device.verification_uri_complete}", file=sys.stderr)
        print(PHISHING_WARNING, file=sys.stderr)
        print("Waiting...", file=sys.stderr, flush=True)
        creds = await complete_device_login(account.provider, device, client_id=settings.client_id)
        check_account(creds, expected)
        await account.sign_in(creds, name=name)
    finally:
        await account.providers.aclose()
    who = f" as {creds.email}" if creds.email else ""
    print(f"Signed in{who}. Saved to {_saved_to(settings)}.", file=sys.stderr)
    return 0


def _saved_to(settings: Settings) -> str:
    """Where the change went: both files, or config.toml alone (and why auth.json was left)."""
    if not settings.codex_sync:
        return str(settings.config_path)
    from webapp.stores import open_stores

    codex = open_stores(settings).view(sync=False)[1]
    if codex.store == "file" and codex.problem is None:
        return f"{settings.config_path} and {settings.codex_home / 'auth.json'}"
    why = codex.problem or f"the Codex CLI {codex.summary().rstrip('.')}"
    return f"{settings.config_path} only ({why})"


def _login_api_key(settings: Settings, name: str | None) -> int:
    from webapp.accounts import Account
    from webapp.credentials import validate_api_key

    if sys.stdin.isatty():
        import getpass

        try:
            raw = getpass.getpass("API key (input hidden): ")
        except EOFError:  # Ctrl-D at the prompt
            raise PortalError("no API key given; nothing was changed") from None
    else:
        try:
            raw = sys.stdin.read(MAX_KEY_INPUT + 1)
        except UnicodeDecodeError:
            raise PortalError("the API key is not UTF-8 text") from None
    key = validate_api_key(raw)
    account = Account(settings)
    creds = account.run(account.save_key(key, name=name))
    print(f"Saved API key {creds.api_key_hint} to {_saved_to(settings)}.", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.credentials import status_report
    from webapp.stores import open_stores

    try:
        creds, codex = open_stores(settings).view()
    except PortalError as exc:
        if args.json:  # the object still comes, with the reason: scripts need not parse stderr
            import json

            print(
                json.dumps(
                    {"signed_in": False, "error": exc.message, "config_path": str(settings.config_path)}
                )
            )
        raise
    report = status_report(creds, config_path=str(settings.config_path), codex_cli=codex.report())
    code = 0 if report["signed_in"] else 1
    if args.json:
        import json

        print(json.dumps(report, ensure_ascii=False))
        return code
    if creds is None:
        print(f"Not signed in. (config: {settings.config_path})")
    else:
        who = f" as {creds.email}" if creds.email else ""
        if creds.method == "api_key":
            print(f"Signed in with an API key {creds.api_key_hint}.")
        elif not report["signed_in"]:
            print(f"Session expired{who}, and it cannot be refreshed: sign in again.")
        else:
            print(f"Signed in with OAuth{who}.")
        if creds.expires_at is not None:
            from webapp.humanize import format_time_left, format_utc

            left = format_time_left(creds.expires_at - int(time.time()))
            print(f"  access token expires {format_utc(creds.expires_at)} ({left})")
            if report["expired"] and report["signed_in"]:
                print("  it is refreshed on its next use (`codex-portal token`, the portal, or `codex`)")
        print(f"  config: {settings.config_path}")
    print(f"  Codex CLI: {codex.summary()}")
    return code


def cmd_open(args: argparse.Namespace, settings: Settings) -> int:
    """`codex-portal open`: what `codex-portal` does when a portal already serves this CODEX_HOME."""
    from webapp import reopen

    found = reopen.find_link(settings)
    if found.url is None:
        raise PortalError(found.why if found.answering else f"{found.why}; start one with `codex-portal`")
    return reopen.announce(settings, found)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.accounts import Account

    account = Account(settings)
    print(account.run(account.token()), flush=True)
    return 0


def cmd_logout(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.accounts import Account

    if args.all and args.name:
        raise PortalError("give an account's name or --all, not both")
    account = Account(settings)
    result = account.run(account.sign_out(args.name and account_name(args.name), everything=args.all))
    if result.previous is None:
        print("Not signed in; nothing to do.", file=sys.stderr)
        return 0
    what = f" of {result.count} accounts" if result.count > 1 else ""
    if result.revoked is False:
        print(
            f"Signed out{what}. The provider could not be reached to revoke the refresh token.",
            file=sys.stderr,
        )
    else:
        print(f"Signed out{what}; removed the credentials from {_saved_to(settings)}.", file=sys.stderr)
    return 0


def cmd_accounts(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.accounts import Account

    entries = Account(settings).accounts()
    if args.json:
        import json

        print(json.dumps([entry.report() for entry in entries], ensure_ascii=False))
        return 0
    if not entries:
        print(f"No accounts. (config: {settings.config_path})")
        return 0
    for entry in entries:
        creds = entry.credentials
        what = (
            f"API key {creds.api_key_hint}"
            if creds.method == "api_key"
            else f"OAuth, {creds.email or 'email unknown'}"
        )
        print(f"{'*' if entry.active else ' '} {entry.name}  ({what}){'  active' if entry.active else ''}")
    return 0


def cmd_switch(args: argparse.Namespace, settings: Settings) -> int:
    from webapp.accounts import Account

    account = Account(settings)
    entry = account.run(account.switch(account_name(args.name)))
    creds = entry.credentials
    who = f" ({creds.email})" if creds.email and creds.email != entry.name else ""
    print(f"Now using {entry.name}{who}. Saved to {_saved_to(settings)}.", file=sys.stderr)
    return 0


HANDLERS = {
    "serve": cmd_serve,
    "login": cmd_login,
    "status": cmd_status,
    "token": cmd_token,
    "logout": cmd_logout,
    "accounts": cmd_accounts,
    "switch": cmd_switch,
    "open": cmd_open,
}
