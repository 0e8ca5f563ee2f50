"""The test provider itself (tests/idp.py, tests/provider/provider.js) with plain httpx2, no project code."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

import tests.idp
from tests.codex_cli import CODEX_CLIENT_ID, codex_provider
from tests.idp import ProviderError, TestProvider

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid profile email offline_access"
CODEX_SCOPE = "openid profile email offline_access api.connectors.read api.connectors.invoke"
OPENAI_AUTH = "https://api.openai.com/auth"


@pytest.fixture(scope="session")
def idp() -> Iterator[TestProvider]:
    with TestProvider().start() as provider:
        yield provider


@pytest.fixture(scope="module")
def codex_idp() -> Iterator[TestProvider]:
    """The provider as the Codex CLI needs it: its client id, its claim, JWT access tokens."""
    with codex_provider(310).start() as provider:
        yield provider


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=10) as client:
        yield client


def discover(http: httpx2.Client, idp: TestProvider) -> dict[str, Any]:
    response = http.get(f"{idp.issuer}/.well-known/openid-configuration")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def random_redirect_uri(host: str = "localhost") -> str:
    return f"http://{host}:{1024 + secrets.randbelow(64511)}/auth/callback"


def authorize_url(http: httpx2.Client, idp: TestProvider, redirect_uri: str, **extra: str) -> tuple[str, str]:
    """An authorization request with PKCE S256; returns (url, code_verifier)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": idp.client_id,
        "redirect_uri": redirect_uri,
        "scope": SCOPE,
        "state": secrets.token_urlsafe(16),
        "nonce": "nonce-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return f"{discover(http, idp)['authorization_endpoint']}?{urlencode(params)}", verifier


def callback_params(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def sign_in(
    http: httpx2.Client, idp: TestProvider, redirect_uri: str | None = None, **extra: str
) -> dict[str, Any]:
    redirect_uri = redirect_uri or random_redirect_uri()
    url, verifier = authorize_url(http, idp, redirect_uri, **extra)
    state = parse_qs(urlsplit(url).query)["state"][0]
    location = idp.login_without_browser(url)
    assert location.startswith(f"{redirect_uri}?")
    params = callback_params(location)
    assert params["state"] == state and params["iss"] == idp.issuer
    response = http.post(
        discover(http, idp)["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "client_id": idp.client_id,
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def id_token_claims(http: httpx2.Client, idp: TestProvider, id_token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(http.get(discover(http, idp)["jwks_uri"]).json())
    claims: dict[str, Any] = jwt.decode(id_token, keys, algorithms=["RS256"]).claims
    assert claims["iss"] == idp.issuer and claims["aud"] == idp.client_id
    assert claims["nonce"] == "nonce-123" and claims["exp"] > time.time()
    return claims


def refresh(http: httpx2.Client, idp: TestProvider, refresh_token: str) -> httpx2.Response:
    return http.post(
        discover(http, idp)["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": idp.client_id},
    )


def grant_events(idp: TestProvider, name: str, grant_id: str) -> list[dict[str, Any]]:
    return [event for event in idp.events(name) if event.get("grant_id") == grant_id]


def test_discovery_lists_every_endpoint(http: httpx2.Client, idp: TestProvider) -> None:
    document = discover(http, idp)
    assert document["issuer"] == idp.issuer
    for key in (
        "authorization_endpoint",
        "token_endpoint",
        "revocation_endpoint",
        "device_authorization_endpoint",
        "jwks_uri",
        "userinfo_endpoint",
        "introspection_endpoint",
    ):
        assert document[key].startswith(f"{idp.issuer}/"), key
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(SCOPE.split()) <= set(document["scopes_supported"])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_code_flow_with_pkce_on_any_loopback_port(http: httpx2.Client, idp: TestProvider, host: str) -> None:
    tokens = sign_in(http, idp, random_redirect_uri(host))
    assert {"access_token", "refresh_token", "id_token"} <= tokens.keys()
    assert tokens["token_type"] == "Bearer" and 0 < tokens["expires_in"] <= 3600
    claims = id_token_claims(http, idp, tokens["id_token"])
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.test" and claims["email_verified"] is True


def test_userinfo_has_the_email(http: httpx2.Client, idp: TestProvider) -> None:
    tokens = sign_in(http, idp)
    response = http.get(
        discover(http, idp)["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 200
    assert response.json() == {
        "sub": "alice",
        "email": "alice@example.test",
        "email_verified": True,
        "name": "Alice Example",
    }


def test_id_token_without_email_when_configured(http: httpx2.Client) -> None:
    with TestProvider(email_in_id_token=False, access_token_ttl=120).start() as other:
        tokens = sign_in(http, other)
        assert 0 < tokens["expires_in"] <= 120
        claims = id_token_claims(http, other, tokens["id_token"])
        assert claims["sub"] == "alice" and "email" not in claims
        userinfo = http.get(
            discover(http, other)["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        ).json()
        assert userinfo["email"] == "alice@example.test"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://evil.example:4321/auth/callback",
        "http://localhost:4321/other/callback",
        "https://localhost:4321/auth/callback",
    ],
)
def test_other_redirect_uris_are_refused(http: httpx2.Client, idp: TestProvider, redirect_uri: str) -> None:
    url, _ = authorize_url(http, idp, redirect_uri)
    with pytest.raises(ProviderError, match="400: .*invalid_redirect_uri"):
        idp.login_without_browser(url)


def test_pkce_is_required(http: httpx2.Client, idp: TestProvider) -> None:
    redirect_uri = random_redirect_uri()
    url, _ = authorize_url(http, idp, redirect_uri)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items() if not k.startswith("code_challenge")}
    location = idp.login_without_browser(f"{url.split('?')[0]}?{urlencode(query)}")
    assert callback_params(location)["error"] == "invalid_request"


def test_refused_consent_redirects_with_access_denied(http: httpx2.Client, idp: TestProvider) -> None:
    url, _ = authorize_url(http, idp, random_redirect_uri())
    location = idp.login_without_browser(url, approve=False)
    params = callback_params(location)
    assert params["error"] == "access_denied" and "code" not in params


def test_refresh_rotates_and_is_logged_once(http: httpx2.Client, idp: TestProvider) -> None:
    tokens = sign_in(http, idp)
    grant_id = idp.events("grant.success")[-1]["grant_id"]
    assert grant_events(idp, "grant.success", grant_id)[0]["grant_type"] == "authorization_code"

    response = refresh(http, idp, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["access_token"] != tokens["access_token"]

    refreshes = [e for e in grant_events(idp, "grant.success", grant_id) if e["refresh"]]
    assert len(refreshes) == 1
    assert refreshes[0]["grant_type"] == "refresh_token" and refreshes[0]["rotated"] is True
    assert len(grant_events(idp, "refresh_token.consumed", grant_id)) == 1


def test_reusing_a_rotated_refresh_token_revokes_the_chain(http: httpx2.Client, idp: TestProvider) -> None:
    tokens = sign_in(http, idp)
    grant_id = idp.events("grant.success")[-1]["grant_id"]
    newer = refresh(http, idp, tokens["refresh_token"]).json()["refresh_token"]

    reused = refresh(http, idp, tokens["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    error = [e for e in idp.events("grant.error") if e.get("grant_type") == "refresh_token"][-1]
    assert error["error"] == "invalid_grant" and error["error_detail"] == "refresh token already used"
    assert grant_events(idp, "grant.revoked", grant_id)

    assert refresh(http, idp, newer).json()["error"] == "invalid_grant"  # the whole chain is gone


def test_revocation(http: httpx2.Client, idp: TestProvider) -> None:
    tokens = sign_in(http, idp)
    response = http.post(
        discover(http, idp)["revocation_endpoint"],
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": idp.client_id,
        },
    )
    assert response.status_code == 200
    success = idp.events("revocation.success")[-1]
    assert success["token_kind"] == "RefreshToken"
    assert grant_events(idp, "grant.revoked", success["grant_id"])
    assert refresh(http, idp, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def start_device_flow(http: httpx2.Client, idp: TestProvider) -> dict[str, Any]:
    response = http.post(
        discover(http, idp)["device_authorization_endpoint"],
        data={"client_id": idp.client_id, "scope": SCOPE},
    )
    assert response.status_code == 200, response.text
    started: dict[str, Any] = response.json()
    assert started["verification_uri"] == f"{idp.issuer}/device"
    assert started["verification_uri_complete"].startswith(f"{idp.issuer}/device?user_code=")
    assert 0 < started["expires_in"] <= 600
    return started


def poll(http: httpx2.Client, idp: TestProvider, device_code: str) -> httpx2.Response:
    return http.post(
        discover(http, idp)["token_endpoint"],
        data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": idp.client_id},
    )


def test_device_flow_approved(http: httpx2.Client, idp: TestProvider) -> None:
    started = start_device_flow(http, idp)
    assert poll(http, idp, started["device_code"]).json()["error"] == "authorization_pending"

    idp.approve_device(started["user_code"], login="bob")

    response = poll(http, idp, started["device_code"])
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert {"access_token", "refresh_token", "id_token"} <= tokens.keys()
    keys = KeySet.import_key_set(http.get(f"{idp.issuer}/jwks").json())
    assert jwt.decode(tokens["id_token"], keys).claims["email"] == "bob@example.test"
    device_grants = [e for e in idp.events("grant.success") if e["grant_type"] == DEVICE_GRANT]
    assert device_grants[-1]["account_id"] == "bob"


def test_device_flow_denied(http: httpx2.Client, idp: TestProvider) -> None:
    started = start_device_flow(http, idp)
    idp.deny_device(started["user_code"])
    response = poll(http, idp, started["device_code"])
    assert response.status_code == 400 and response.json()["error"] == "access_denied"


def test_unknown_user_code_is_reported(idp: TestProvider) -> None:
    with pytest.raises(ProviderError, match="incorrect"):
        idp.approve_device("BCDF-GHJK")


def test_missing_node_modules_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(tests.idp, "PROVIDER_DIR", tmp_path)
    with pytest.raises(ProviderError, match="make test"):
        TestProvider().start()


def test_a_provider_that_cannot_start_says_why() -> None:
    broken = TestProvider(extra_env={"IDP_REDIRECT_URIS": "http://evil.example/auth/callback"})
    with pytest.raises(ProviderError, match="(?s)exited.*only use loopback addresses"):
        broken.start()


def test_a_provider_that_hangs_says_what_it_is_doing(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    stuck = tmp_path / "stuck.js"
    stuck.write_text("console.log('starting'); setInterval(() => {}, 1000);\n")
    monkeypatch.setattr(tests.idp, "PROVIDER_JS", stuck)
    monkeypatch.setattr(tests.idp, "START_TIMEOUT", 1.0)
    broken = TestProvider()
    stalled = r"(?s)did not listen within 1 s \(state S, waiting in \w+, [\d.]+ s of CPU used\).*starting"
    with pytest.raises(ProviderError, match=stalled):
        broken.start()
    assert broken._process is None  # stopped, not left running


def test_events_never_carry_token_values(http: httpx2.Client, idp: TestProvider) -> None:
    tokens = sign_in(http, idp)
    refreshed = refresh(http, idp, tokens["refresh_token"]).json()
    output = idp.output()
    for value in (*tokens.values(), *refreshed.values()):
        if isinstance(value, str) and len(value) > 20:
            assert value not in output


# ---- the switches the Codex CLI needs (IDP_OPENAI_AUTH_CLAIM, IDP_JWT_ACCESS_TOKENS) and JSON at /token ----
def jwt_payload(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (as the Codex CLI reads it)."""
    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


def test_by_default_no_openai_claim_and_opaque_access_tokens(http: httpx2.Client, idp: TestProvider) -> None:
    tokens = sign_in(http, idp)
    assert OPENAI_AUTH not in id_token_claims(http, idp, tokens["id_token"])
    assert tokens["access_token"].count(".") != 2


@pytest.mark.parametrize("email_in_id_token", [True, False])
def test_openai_auth_claim_is_in_the_id_token(http: httpx2.Client, email_in_id_token: bool) -> None:
    with TestProvider(openai_auth_claim=True, email_in_id_token=email_in_id_token).start() as other:
        tokens = sign_in(http, other)
        claims = id_token_claims(http, other, tokens["id_token"])
        assert claims[OPENAI_AUTH] == {"chatgpt_account_id": "acct-alice", "chatgpt_plan_type": "plus"}
        assert ("email" in claims) is email_in_id_token
        # opaque access token: userinfo serves it, with the claim
        userinfo = http.get(
            discover(http, other)["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        assert userinfo.status_code == 200, userinfo.text
        assert userinfo.json()[OPENAI_AUTH]["chatgpt_account_id"] == "acct-alice"


def test_jwt_access_tokens_are_signed_and_expire(http: httpx2.Client, codex_idp: TestProvider) -> None:
    before = int(time.time())
    tokens = sign_in(http, codex_idp, scope=CODEX_SCOPE)
    assert 300 < tokens["expires_in"] <= 310
    keys = KeySet.import_key_set(http.get(discover(http, codex_idp)["jwks_uri"]).json())
    access = jwt.decode(tokens["access_token"], keys, algorithms=["RS256"])
    assert access.header["typ"] == "at+jwt"
    claims = access.claims
    assert before <= claims["iat"] <= time.time() and claims["exp"] == claims["iat"] + 310
    assert claims["iss"] == codex_idp.issuer and claims["aud"] == f"{codex_idp.issuer}/api"
    assert claims["sub"] == "alice" and claims["client_id"] == CODEX_CLIENT_ID
    # offline_access is dropped without prompt=consent (oidc-provider); the refresh token comes anyway
    assert set(claims["scope"].split()) == set(CODEX_SCOPE.split()) - {"offline_access"}
    assert claims[OPENAI_AUTH] == {"chatgpt_account_id": "acct-alice", "chatgpt_plan_type": "plus"}
    assert jwt_payload(tokens["access_token"]) == claims  # readable without the key, as the Codex CLI does

    id_claims = id_token_claims(http, codex_idp, tokens["id_token"])
    assert id_claims["email"] == "alice@example.test"
    assert id_claims[OPENAI_AUTH]["chatgpt_account_id"] == "acct-alice"


def test_jwt_access_tokens_are_refused_by_userinfo(http: httpx2.Client) -> None:
    # oidc-provider serves userinfo to audience-less tokens only; the ID token then has the email.
    with TestProvider(jwt_access_tokens=True, email_in_id_token=False).start() as other:
        tokens = sign_in(http, other)
        assert id_token_claims(http, other, tokens["id_token"])["email"] == "alice@example.test"
        response = http.get(
            discover(http, other)["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        assert response.status_code == 401 and response.json()["error"] == "invalid_token"


def test_codex_scope_is_granted(http: httpx2.Client, idp: TestProvider) -> None:
    assert set(CODEX_SCOPE.split()) <= set(discover(http, idp)["scopes_supported"])
    tokens = sign_in(http, idp, scope=CODEX_SCOPE)
    assert set(tokens["scope"].split()) == set(CODEX_SCOPE.split()) - {"offline_access"}  # see above
    assert {"access_token", "refresh_token", "id_token"} <= tokens.keys()


def refresh_with_json(http: httpx2.Client, idp: TestProvider, refresh_token: str) -> httpx2.Response:
    """A refresh as the Codex CLI sends it: a JSON body."""
    return http.post(
        discover(http, idp)["token_endpoint"],
        json={"client_id": idp.client_id, "grant_type": "refresh_token", "refresh_token": refresh_token},
    )


@pytest.mark.parametrize("provider", ["idp", "codex_idp"])
def test_refresh_with_a_json_body(http: httpx2.Client, provider: str, request: pytest.FixtureRequest) -> None:
    idp: TestProvider = request.getfixturevalue(provider)
    tokens = sign_in(http, idp, scope=CODEX_SCOPE)
    grant_id = idp.events("grant.success")[-1]["grant_id"]

    response = refresh_with_json(http, idp, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert {"access_token", "refresh_token", "id_token"} <= rotated.keys()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["access_token"] != tokens["access_token"]
    if provider == "codex_idp":
        assert jwt_payload(rotated["access_token"])["exp"] > jwt_payload(tokens["access_token"])["iat"]
        assert (
            id_token_claims(http, idp, rotated["id_token"])[OPENAI_AUTH]["chatgpt_account_id"] == "acct-alice"
        )

    refreshes = [e for e in grant_events(idp, "grant.success", grant_id) if e["refresh"]]
    assert len(refreshes) == 1 and refreshes[0]["rotated"] is True
    assert refreshes[0]["client_id"] == idp.client_id

    reused = refresh_with_json(http, idp, tokens["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    error = [e for e in idp.events("grant.error") if e.get("grant_type") == "refresh_token"][-1]
    assert error["error_detail"] == "refresh token already used"
    assert refresh(http, idp, rotated["refresh_token"]).json()["error"] == "invalid_grant"  # chain revoked


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", "null"])
def test_an_unparseable_json_body_is_an_invalid_request(
    http: httpx2.Client, idp: TestProvider, body: str
) -> None:
    response = http.post(
        discover(http, idp)["token_endpoint"],
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    # the provider is still fine
    assert http.get(f"{idp.issuer}/.well-known/openid-configuration").status_code == 200
