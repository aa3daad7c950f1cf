"""FakeOidcIssuer serves what oidc.md documents: discovery, JWKS (public halves only), the runner's token endpoint."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.fakes.oidc_issuer import GITHUB_DEFAULT_AUDIENCE, FakeOidcIssuer


def _part(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.mark.parametrize(("flavour", "jwks_path"), [("github", "/.well-known/jwks"),
                                                     ("gitlab", "/oauth/discovery/keys")])  # fmt: skip
def test_discovery_names_the_jwks_whose_keys_are_public(flavour: Any, jwks_path: str) -> None:
    with FakeOidcIssuer(flavour) as issuer, httpx.Client(timeout=5) as http:
        discovery = http.get(issuer.url + "/.well-known/openid-configuration").json()
        assert discovery["issuer"] == issuer.url and discovery["jwks_uri"] == issuer.url + jwks_path
        assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
        keys = http.get(discovery["jwks_uri"]).json()["keys"]
        assert [key["kid"] for key in keys] == [key.kid for key in issuer.published]
        assert all(key["kty"] == "RSA" and "d" not in key and "p" not in key for key in keys)
        assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


def test_tokens_copy_the_documented_headers_and_times() -> None:
    with FakeOidcIssuer("github") as github, FakeOidcIssuer("gitlab") as gitlab:
        github_header, github_claims = _part(github.mint(), 0), _part(github.mint(), 1)
        gitlab_header, gitlab_claims = _part(gitlab.mint(), 0), _part(gitlab.mint(), 1)
    assert list(github_header) == ["typ", "alg", "x5t", "kid"] and github_header["kid"].isupper()
    assert list(gitlab_header) == ["kid", "typ", "alg"]
    assert github_claims["exp"] - github_claims["iat"] == 300 and github_claims["iat"] - github_claims["nbf"] == 600
    assert gitlab_claims["exp"] - gitlab_claims["iat"] == 300
    assert isinstance(github_claims["repository_id"], str) and isinstance(gitlab_claims["project_id"], str)
    assert gitlab_claims["runner_id"] == 1  # GitLab's one number


def test_the_runner_token_endpoint_wants_the_request_token_and_takes_the_audience() -> None:
    with FakeOidcIssuer("github") as issuer, httpx.Client(timeout=5) as http:
        refused = http.get(issuer.id_token_request_url + "&audience=https://labgate.example")
        asked = http.get(issuer.id_token_request_url + "&audience=https://labgate.example",
                         headers={"Authorization": f"Bearer {issuer.request_token}"})  # fmt: skip
        default = http.get(issuer.id_token_request_url, headers={"Authorization": f"Bearer {issuer.request_token}"})
        recorded = issuer.requests_to("/token")
    assert refused.status_code == 401
    assert _part(asked.json()["value"], 1)["aud"] == "https://labgate.example"
    assert _part(default.json()["value"], 1)["aud"] == GITHUB_DEFAULT_AUDIENCE
    assert [(r.status, r.query.get("audience")) for r in recorded] == [
        (401, "https://labgate.example"), (200, "https://labgate.example"), (200, None)]  # fmt: skip


def test_rotate_signs_with_a_key_never_published_before() -> None:
    with FakeOidcIssuer("gitlab") as issuer:
        before = {key.kid for key in issuer.published}
        key = issuer.rotate()
        assert key.kid not in before and issuer.signing_key is key
        assert _part(issuer.mint(), 0)["kid"] == key.kid
        assert [k.kid for k in issuer.published][0] == key.kid and len(issuer.published) == 2
