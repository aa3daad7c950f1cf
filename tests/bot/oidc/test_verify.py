"""OidcVerifier against FakeOidcIssuer: GitHub- and GitLab-shaped tokens verify, and every attack on the token
is refused by the check named, with a message saying what failed and the token's value."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from bot.oidc.settings import OidcSettings
from bot.oidc.types import TokenRefused, VerifiedToken
from bot.oidc.verify import MAX_TOKEN_BYTES, OidcVerifier
from tests.bot.oidc import AUDIENCE, refusal, run, settings
from tests.fakes.oidc_issuer import DROP, GITHUB_DEFAULT_AUDIENCE, FakeOidcIssuer, SettableClock, compact, public_pem


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def github(clock: SettableClock) -> Iterator[FakeOidcIssuer]:
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as issuer:
        yield issuer


@pytest.fixture
def gitlab(clock: SettableClock) -> Iterator[FakeOidcIssuer]:
    with FakeOidcIssuer("gitlab", clock=clock, audience=AUDIENCE) as issuer:
        yield issuer


def verified(config: OidcSettings, clock: SettableClock, token: str) -> VerifiedToken:
    return run(config, clock, lambda verifier: verifier.verify(token))


def refused(config: OidcSettings, clock: SettableClock, token: str) -> TokenRefused:
    return run(config, clock, lambda verifier: refusal(verifier, token))


def rs256(issuer: FakeOidcIssuer) -> Callable[[bytes], bytes]:
    """A real RS256 signature by the issuer's current key, over whatever header and claims an attacker chose."""
    key = issuer.signing_key.private_key
    assert key is not None
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


# ---- tokens that verify ---------------------------------------------------------------------------------------


def test_a_github_shaped_token_verifies_and_keys_are_fetched_once(github: FakeOidcIssuer,
                                                                  clock: SettableClock) -> None:  # fmt: skip
    first, second = github.mint(), github.mint()

    async def steps(verifier: OidcVerifier) -> list[VerifiedToken]:
        return [await verifier.verify(first), await verifier.verify(second)]

    tokens = run(settings(github), clock, steps)
    assert tokens[0].issuer == github.url
    assert tokens[0].claims["repository_id"] == "588298808"
    assert tokens[0].claims["job_workflow_ref"].endswith("/.github/workflows/integration.yml@refs/heads/main")
    assert tokens[0].jti == tokens[0].claims["jti"] != tokens[1].jti
    assert tokens[0].expires_at == datetime.fromtimestamp(clock.now + 300, UTC)
    assert [r.path for r in github.requests()] == ["/.well-known/openid-configuration", "/.well-known/jwks"]


def test_a_gitlab_shaped_token_verifies(gitlab: FakeOidcIssuer, clock: SettableClock) -> None:
    token = verified(settings(gitlab), clock, gitlab.mint())
    assert (token.claims["project_id"], token.claims["namespace_id"], token.claims["runner_id"]) == ("20", "72", 1)
    assert [r.path for r in gitlab.requests()] == ["/.well-known/openid-configuration", "/oauth/discovery/keys"]


def test_an_enterprise_issuer_with_a_path_verifies(clock: SettableClock) -> None:
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE, path="/octo-enterprise") as ghec:
        token = verified(settings(ghec), clock, ghec.mint())
    assert token.issuer.endswith("/octo-enterprise")
    assert [r.path for r in ghec.requests()] == ["/octo-enterprise/.well-known/openid-configuration",
                                                 "/octo-enterprise/.well-known/jwks"]  # fmt: skip


# ---- issuer -------------------------------------------------------------------------------------------------


def test_an_unconfigured_issuer_is_refused_without_fetching_from_it(github: FakeOidcIssuer,
                                                                     clock: SettableClock) -> None:  # fmt: skip
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as attacker:
        refusal = refused(settings(github), clock, attacker.mint())
        assert attacker.requests() == []
    assert refusal.check == "issuer"
    assert str(refusal) == f'issuer: token is from "{attacker.url}", which labgate does not trust'
    assert github.requests() == []


@pytest.mark.parametrize("iss", ["https://token.actions.githubusercontent.com.evil.example",
                                 "https://token.actions.githubusercontent.com/", "HTTPS://token.actions.githubusercontent.com",
                                 "https://token.actions.githubusercontent.com/evil"])  # fmt: skip
def test_a_look_alike_of_a_configured_issuer_is_refused(github: FakeOidcIssuer, clock: SettableClock, iss: str) -> None:
    config = settings("https://token.actions.githubusercontent.com", github)
    refusal = refused(config, clock, github.mint({"iss": iss}))
    assert (refusal.check, refusal.detail) == ("issuer", f'token is from "{iss}", which labgate does not trust')
    assert github.requests() == []


def test_a_token_without_iss_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    refusal = refused(settings(github), clock, github.mint({"iss": DROP}))
    assert (refusal.check, refusal.detail) == ("issuer", "token is from null, which labgate does not trust")


# ---- audience -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aud", [GITHUB_DEFAULT_AUDIENCE, "https://vault.example.com", AUDIENCE + "/",
                                 [AUDIENCE, "https://vault.example.com"], [], None])  # fmt: skip
def test_a_token_for_another_audience_is_refused(github: FakeOidcIssuer, clock: SettableClock, aud: Any) -> None:
    refusal = refused(settings(github), clock, github.mint({"aud": aud if aud is not None else DROP}))
    assert refusal.check == "audience"
    assert str(refusal) == f'audience: token is for {json.dumps(aud)}, labgate is "{AUDIENCE}"'


def test_githubs_default_owner_url_audience_reads_as_the_brief_says(github: FakeOidcIssuer,
                                                                    clock: SettableClock) -> None:  # fmt: skip
    refusal = refused(settings(github), clock, github.mint({"aud": "https://github.com/octo-org"}))
    assert str(refusal) == 'audience: token is for "https://github.com/octo-org", labgate is "https://labgate.example"'


def test_a_list_audience_naming_labgate_alone_is_accepted(gitlab: FakeOidcIssuer, clock: SettableClock) -> None:
    assert verified(settings(gitlab), clock, gitlab.mint({"aud": [AUDIENCE]})).claims["aud"] == [AUDIENCE]


# ---- times --------------------------------------------------------------------------------------------------


def test_an_expired_token_is_refused_beyond_the_leeway(github: FakeOidcIssuer, clock: SettableClock) -> None:
    token = github.mint()
    clock.advance(300 + 30)  # exp + leeway: expired ("on or after which the JWT MUST NOT be accepted")
    refusal = refused(settings(github), clock, token)
    exp = int(clock.now) - 30
    assert refusal.check == "expiry"
    assert refusal.detail == (f"token expired at {_utc(exp)} ({exp}), it is now {_utc(clock.now)} ({int(clock.now)}) "
                              "(leeway 30 s)")  # fmt: skip


def test_an_expired_token_within_the_leeway_is_accepted(github: FakeOidcIssuer, clock: SettableClock) -> None:
    token = github.mint()
    clock.advance(300 + 29)
    assert verified(settings(github), clock, token).jti


def test_a_token_not_yet_valid_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    nbf = int(clock.now) + 31
    refusal = refused(settings(github), clock, github.mint({"nbf": nbf}))
    assert refusal.check == "expiry"
    assert refusal.detail.startswith(f"token is not valid before {_utc(nbf)} ({nbf}), it is now ")


def test_a_token_issued_in_the_future_is_refused(gitlab: FakeOidcIssuer, clock: SettableClock) -> None:
    iat = int(clock.now) + 31
    refusal = refused(settings(gitlab), clock, gitlab.mint({"iat": iat}))
    assert refusal.check == "expiry"
    assert refusal.detail.startswith(f"token was issued in the future, at {_utc(iat)} ({iat}); it is now ")


def test_a_token_issued_within_the_leeway_ahead_is_accepted(gitlab: FakeOidcIssuer, clock: SettableClock) -> None:
    assert verified(settings(gitlab), clock, gitlab.mint({"iat": int(clock.now) + 30, "nbf": int(clock.now) + 30}))


@pytest.mark.parametrize(("claims", "detail"), [
    ({"exp": DROP}, "the token has no exp (exp and iat are required)"),
    ({"exp": DROP, "iat": DROP}, "the token has no exp and iat (exp and iat are required)"),
    ({"exp": "1765000300"}, 'exp "1765000300" is not a time (seconds since 1970)'),
    ({"exp": True}, "exp true is not a time (seconds since 1970)"),
    ({"exp": 10**30}, "exp 1000000000000000000000000000000 is out of range"),
])  # fmt: skip
def test_a_token_without_a_usable_expiry_is_refused(github: FakeOidcIssuer, clock: SettableClock,
                                                    claims: dict[str, Any], detail: str) -> None:  # fmt: skip
    refusal = refused(settings(github), clock, github.mint(claims))
    assert (refusal.check, refusal.detail) == ("expiry", detail)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- signature ----------------------------------------------------------------------------------------------


def test_alg_none_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    token = compact(github.header(alg="none"), github.claims(), lambda _: b"")
    refusal = refused(settings(github), clock, token)
    assert (refusal.check, refusal.detail) == ("signature", 'alg "none" is not accepted (only RS256)')
    assert github.requests() == []


def test_hs256_keyed_with_the_issuers_public_key_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    # The classic confusion: a verifier that lets the header choose HMAC would key it with the "key" it holds.
    secret = public_pem(github.signing_key)
    token = compact(github.header(alg="HS256"), github.claims(repository_id="1"),
                    lambda data: hmac.new(secret, data, hashlib.sha256).digest())  # fmt: skip

    async def steps(verifier: OidcVerifier) -> TokenRefused:
        await verifier.verify(github.mint())  # the keys are in hand: still refused
        return await refusal(verifier, token)

    refused_token = run(settings(github), clock, steps)
    assert (refused_token.check, refused_token.detail) == ("signature", 'alg "HS256" is not accepted (only RS256)')


def test_a_key_not_the_issuers_is_refused_even_under_the_issuers_kid(github: FakeOidcIssuer,
                                                                      clock: SettableClock) -> None:  # fmt: skip
    stranger = github.stranger_key()
    token = github.mint(header={"kid": github.signing_key.kid}, key=stranger)
    refusal = refused(settings(github), clock, token)
    assert refusal.check == "signature"
    assert refusal.detail == f'does not verify with {github.url}\'s key "{github.signing_key.kid}"'


def test_another_configured_issuers_key_does_not_verify_this_issuers_tokens(github: FakeOidcIssuer,
                                                                           gitlab: FakeOidcIssuer,
                                                                           clock: SettableClock) -> None:  # fmt: skip
    # A GitLab instance's admin (or its key) must not speak for GitHub: keys are looked up per issuer.
    key = gitlab.signing_key
    token = github.mint(header={"kid": key.kid}, key=key)

    async def steps(verifier: OidcVerifier) -> TokenRefused:
        await verifier.verify(gitlab.mint())  # gitlab's keys are in hand
        return await refusal(verifier, token)

    refused_token = run(settings(github, gitlab), clock, steps)
    assert refused_token.check == "signature"
    assert refused_token.detail == f'key "{key.kid}" is not one {github.url} publishes'


def test_a_tampered_payload_is_refused(gitlab: FakeOidcIssuer, clock: SettableClock) -> None:
    header, payload, signature = gitlab.mint().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["project_id"] = "1"  # a project the operator trusts
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refusal = refused(settings(gitlab), clock, f"{header}.{forged}.{signature}")
    assert refusal.check == "signature" and refusal.detail.startswith("does not verify with")


def test_a_token_without_a_kid_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    refusal = refused(settings(github), clock, github.mint(header={"kid": DROP}))
    assert (refusal.check, refusal.detail) == ("signature", "the header names no key (kid)")
    assert github.requests() == []


def test_key_urls_in_the_header_are_never_fetched(github: FakeOidcIssuer, clock: SettableClock) -> None:
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as attacker:
        key = attacker.signing_key
        token = github.mint(header={"kid": key.kid, "jku": attacker.jwks_uri, "x5u": attacker.jwks_uri}, key=key)
        refusal = refused(settings(github), clock, token)
        assert attacker.requests() == []
    assert (refusal.check, refusal.detail) == ("signature", f'key "{key.kid}" is not one {github.url} publishes')


def test_header_extensions_are_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    extension = compact(github.header(crit=["labgate"], labgate=1), github.claims(), rs256(github))
    unencoded = compact(github.header(crit=["b64"], b64=False), github.claims(), rs256(github))
    assert str(refused(settings(github), clock, extension)) == "token: header extensions (crit, b64) are not accepted"
    # RFC 7797's unencoded payload: the base64url text is then read as the payload itself, and is no JSON.
    assert str(refused(settings(github), clock, unencoded)) == (
        "token: not a compact JWT (header.payload.signature, base64url JSON)"
    )


def test_an_alg_the_discovery_document_does_not_list_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    config = settings(github, algorithms=("RS256", "PS256"))
    key = github.signing_key.private_key
    assert key is not None
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    token = compact(github.header(alg="PS256"), github.claims(), lambda data: key.sign(data, pss, hashes.SHA256()))
    refusal = refused(config, clock, token)
    assert (refusal.check, refusal.detail) == ("signature", f"alg PS256 is not one {github.url} signs with")


# ---- the token's form ---------------------------------------------------------------------------------------


def test_a_token_without_jti_is_refused(github: FakeOidcIssuer, clock: SettableClock) -> None:
    refusal = refused(settings(github), clock, github.mint({"jti": DROP}))
    assert str(refusal) == "token: the token has no jti (its unique id, which replays are told by)"


def test_an_oversized_token_is_refused_before_anything_is_fetched(github: FakeOidcIssuer,
                                                                   clock: SettableClock) -> None:  # fmt: skip
    token = github.mint({"padding": "x" * MAX_TOKEN_BYTES})
    refusal = refused(settings(github), clock, token)
    assert (refusal.check, refusal.detail) == ("token", "not a compact JWT of at most 8192 bytes")
    assert github.requests() == []


NESTED = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).rstrip(b"=").decode()  # deeper than Python recurses


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "a.b.c.d.e", "é.é.é", "eyJhbGciOiJSUzI1NiJ9.e30", f"eyJhbGciOiJSUzI1NiJ9.{NESTED}.c2ln"],
)
def test_what_is_not_a_jwt_is_refused(github: FakeOidcIssuer, clock: SettableClock, token: str) -> None:
    refusal = refused(settings(github), clock, token)
    assert refusal.check == "token"
    assert github.requests() == []
