"""The one family of exceptions that codex-portal raises for expected failures.

    PortalError            anything the user can act on; its message is safe to show
    ├── ConfigError        config.toml unreadable, not TOML, or not writable
    ├── ProviderError      the provider could not be reached or answered garbage
    ├── OAuthError         the provider answered with an RFC 6749 error code
    │   └── DeviceFlowError  RFC 8628 end states: expired_token, access_denied
    └── LoginError         a callback without a matching pending sign-in, a bad ID token

Messages never carry a secret: no token, code, verifier, key, state or cookie value.
"""

from __future__ import annotations


def full_stop(text: str) -> str:
    """`text` ending as a sentence does. Messages are written as clauses, so that they compose
    ("Could not remove: " + message); this is where they end, once, whoever wrote them."""
    text = text.rstrip()
    return text if not text or text.endswith((".", "!", "?")) else f"{text}."


def sentence(text: str) -> str:
    """`text` as a sentence of its own, on a page: a capital first letter and a full stop."""
    return full_stop(text[:1].upper() + text[1:])


class PortalError(Exception):
    """An expected failure: shown as one line in the terminal, or on the error page."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(PortalError):
    status_code = 500


class ProviderError(PortalError):
    status_code = 502


class OAuthError(PortalError):
    status_code = 400

    def __init__(self, error: str, description: str | None = None) -> None:
        self.error = error
        self.description = description
        text = f"the provider refused: {error}"
        if description:
            text += f" ({description})"
        super().__init__(text)


class DeviceFlowError(OAuthError):
    """An end state of RFC 8628 polling; the message says what to do."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(error, description)
        self.message = description
        self.args = (description,)


class LoginError(PortalError):
    status_code = 400


class AccessDenied(PortalError):
    """A request without the session that the printed launch URL opens, or with a bad CSRF token."""

    status_code = 403


class SessionExpired(PortalError):
    """The provider refused the refresh token (invalid_grant): only a new sign-in helps."""

    status_code = 401

    def __init__(self) -> None:
        super().__init__("session expired, sign in again")


class NotSignedIn(PortalError):
    status_code = 401

    def __init__(self) -> None:
        super().__init__("not signed in: run `codex-portal login` or open the portal")
