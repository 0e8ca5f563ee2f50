"""The one credential record (an OAuth sign-in or an API key), and the status report built from it.

Every store reads into a `Credentials` and writes one out; every flow (browser, code, refresh)
produces one. The email is worked out once, when the record is made, and saved with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from webapp.errors import PortalError

API_KEY_MAX = 512
OPENAI_AUTH_CLAIM = "https://api.openai.com/auth"


@dataclass(frozen=True)
class Credentials:
    method: Literal["oauth", "api_key"]
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: int | None = None
    id_token: str | None = field(default=None, repr=False)
    issuer: str | None = None
    client_id: str | None = None
    api_key: str | None = field(default=None, repr=False)
    email: str | None = None

    @classmethod
    def oauth(
        cls,
        *,
        access_token: str,
        refresh_token: str | None,
        expires_at: int | None,
        id_token: str | None,
        issuer: str | None,
        client_id: str | None,
        email: str | None = None,
    ) -> Credentials:
        """An OAuth record; without an email given, the ID token's `email` claim is taken."""
        return cls(
            method="oauth",
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires_at,
            id_token=id_token,
            issuer=issuer,
            client_id=client_id,
            email=email or claim_email(unverified_claims(id_token)),
        )

    @classmethod
    def key(cls, api_key: str) -> Credentials:
        return cls(method="api_key", api_key=validate_api_key(api_key))

    @property
    def secret(self) -> str:
        """What a client sends: the access token, or the API key."""
        value = self.access_token if self.method == "oauth" else self.api_key
        assert value is not None
        return value

    @property
    def account_id(self) -> str | None:
        """The ChatGPT account (the ID token's OpenAI claim), as the Codex CLI keeps it."""
        auth = unverified_claims(self.id_token).get(OPENAI_AUTH_CLAIM)
        value = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
        return value if isinstance(value, str) and value else None

    @property
    def subject(self) -> str | None:
        sub = unverified_claims(self.id_token).get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def api_key_hint(self) -> str | None:
        if self.api_key is None:
            return None
        if len(self.api_key) < 16:
            return f"… ({len(self.api_key)} characters)"  # too short to show any of it
        return ("sk-…" if self.api_key.startswith("sk-") else "…") + self.api_key[-4:]

    def expired(self, now: float | None = None) -> bool:
        if self.method != "oauth" or self.expires_at is None:
            return False
        return self.expires_at <= (time.time() if now is None else now)


def fingerprint(creds: Credentials | None) -> str:
    """Names a login without revealing it: equal when two stores hold the same tokens or key."""
    import hashlib

    if creds is None:
        return ""
    parts = (creds.method, creds.access_token or "", creds.refresh_token or "", creds.api_key or "")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def unverified_claims(jwt: str | None) -> dict[str, Any]:
    """The payload of a JWT whose signature was checked when it was saved (or that only the Codex
    CLI reads); {} when it cannot be read."""
    import base64
    import json

    try:
        payload = (jwt or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def claim_email(claims: dict[str, Any]) -> str | None:
    email = printable(claims.get("email"), limit=254)
    return email or None


def printable(value: object, *, limit: int = 200) -> str:
    """A provider's text fit for a page or a terminal: control and format characters (escape
    sequences, bidi overrides) removed, cut at `limit`; "" for anything that is not text."""
    import unicodedata

    if not isinstance(value, str):
        return ""
    kept = "".join(
        ch for ch in value[: limit * 4] if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
    )
    return kept.strip()[:limit]


def validate_api_key(raw: str) -> str:
    """The trimmed key; it must fit on one line of the TOML file and in an HTTP header."""
    key = raw.strip()
    if not key:
        raise PortalError("the API key is empty")
    if len(key) > API_KEY_MAX:
        raise PortalError(f"the API key is longer than {API_KEY_MAX} characters")
    if not all("\x21" <= char <= "\x7e" for char in key):
        raise PortalError("the API key may contain only visible ASCII characters (no spaces or line breaks)")
    return key


def status_report(
    creds: Credentials | None,
    *,
    config_path: str,
    codex_cli: dict[str, object] | None = None,
    now: float | None = None,
) -> dict[str, object]:
    """The status object of SPEC sections 2 and 7, shared by `status --json` and GET /api/status.

    Credentials that expired and cannot be refreshed are not a sign-in: `signed_in` is false, and
    the other keys still say what the file holds.
    """
    expired = creds.expired(now) if creds else False
    report: dict[str, object] = {
        "signed_in": creds is not None and not (expired and not creds.refresh_token),
        "method": creds.method if creds else None,
        "expires_at": creds.expires_at if creds else None,
        "expired": expired,
        "email": creds.email if creds else None,
        "api_key_hint": creds.api_key_hint if creds else None,
        "config_path": config_path,
    }
    if codex_cli is not None:
        report["codex_cli"] = codex_cli
    return report


def account_key(creds: Credentials) -> tuple[str, ...]:
    """Who a login belongs to: the issuer and the ID token's subject (else the email), or the key.
    Two logins with the same key are one account, whatever their tokens."""
    if creds.method == "api_key":
        return ("api_key", fingerprint(creds))
    who = creds.subject or (f"email:{creds.email}" if creds.email else f"login:{fingerprint(creds)}")
    return ("oauth", (creds.issuer or "").rstrip("/"), who)


def same_account(a: Credentials, b: Credentials) -> bool:
    return account_key(a) == account_key(b)


def default_name(creds: Credentials) -> str:
    """An account's name unless the person gives one: its email, or the key's hint."""
    return creds.email or creds.api_key_hint or "account"


def account_name(raw: str) -> str:
    """A name the person typed, fit to show and to type again."""
    name = printable(raw, limit=64)
    if not name:
        raise PortalError("the account name is empty")
    return name
