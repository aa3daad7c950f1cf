"""KeyCache against FakeOidcIssuer: keys fetched once and shared, an unknown kid refetching at most once per
jwks_refresh_min_s, rotation picked up, stale keys refreshed in the background, and the issuer's failures
told apart from the token's (KeysUnavailable)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from bot.oidc.keys import FETCH_TIMEOUT_S, MAX_DOCUMENT_BYTES, KeysUnavailable, jwks_uri_problem
from bot.oidc.types import TokenRefused, VerifiedToken
from bot.oidc.verify import OidcVerifier
from tests.bot.oidc import AUDIENCE, refusal, run, settings
from tests.fakes.oidc_issuer import FakeOidcIssuer, SettableClock


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def github(clock: SettableClock) -> Iterator[FakeOidcIssuer]:
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as issuer:
        yield issuer


def fetches(issuer: FakeOidcIssuer) -> tuple[int, int]:
    return issuer.discovery_fetches, issuer.jwks_fetches


def unavailable(issuer: FakeOidcIssuer, clock: SettableClock, token: str) -> KeysUnavailable:
    async def steps(verifier: OidcVerifier) -> KeysUnavailable:
        with pytest.raises(KeysUnavailable) as caught:
            await verifier.verify(token)
        return caught.value

    return run(settings(issuer), clock, steps)


async def keys_not_current(verifier: OidcVerifier, token: str) -> KeysUnavailable:
    with pytest.raises(KeysUnavailable) as caught:
        await verifier.verify(token)
    return caught.value


# ---- unknown kids and rotation ------------------------------------------------------------------------------


def test_an_unknown_kid_refetches_once_then_is_refused_and_a_second_within_the_period_does_not(
    github: FakeOidcIssuer, clock: SettableClock
) -> None:
    async def steps(verifier: OidcVerifier) -> list[object]:
        seen: list[object] = [await verifier.verify(github.mint()), fetches(github)]
        clock.advance(61)
        seen += [await refusal(verifier, github.mint(header={"kid": "made-up-1"})), fetches(github)]
        clock.advance(30)
        seen += [await keys_not_current(verifier, github.mint(header={"kid": "made-up-2"})), fetches(github)]
        clock.advance(31)
        seen += [await refusal(verifier, github.mint(header={"kid": "made-up-3"})), fetches(github)]
        return seen

    valid, at_first, first, after_first, second, after_second, third, after_third = run(settings(github), clock, steps)
    assert isinstance(valid, VerifiedToken) and at_first == (1, 1)
    assert isinstance(first, TokenRefused) and (first.check, first.detail) == (
        "signature", f'key "made-up-1" is not one {github.url} publishes')  # fmt: skip
    assert after_first == (2, 2)  # one refetch
    # 30 s after the refetch: none, and the kid may be a key newer than those: labgate's to retry (503), not the token's
    assert isinstance(second, KeysUnavailable) and second.retry_after_s == 30
    assert after_second == (2, 2)
    assert isinstance(third, TokenRefused) and after_third == (3, 3)  # 61 s after: one more


def test_a_flood_of_random_kids_makes_one_fetch(github: FakeOidcIssuer, clock: SettableClock) -> None:
    async def steps(verifier: OidcVerifier) -> list[BaseException | VerifiedToken]:
        await verifier.verify(github.mint())
        clock.advance(60)
        tokens = [github.mint(header={"kid": secrets.token_hex(20).upper()}) for _ in range(50)]
        return await asyncio.gather(*(verifier.verify(token) for token in tokens), return_exceptions=True)

    outcomes = run(settings(github), clock, steps)
    assert all(isinstance(outcome, TokenRefused) and outcome.check == "signature" for outcome in outcomes)
    assert fetches(github) == (2, 2)


def test_a_rotated_key_is_picked_up_by_a_refetch(github: FakeOidcIssuer, clock: SettableClock) -> None:
    async def steps(verifier: OidcVerifier) -> list[object]:
        seen: list[object] = [await verifier.verify(github.mint())]
        github.rotate(keep_previous=False)
        seen.append(await keys_not_current(verifier, github.mint()))  # no refetch yet: retry later, not refused
        clock.advance(60)
        seen += [await verifier.verify(github.mint()), fetches(github)]
        return seen

    before, too_soon, after, fetched = run(settings(github), clock, steps)
    assert isinstance(before, VerifiedToken) and isinstance(after, VerifiedToken)
    assert isinstance(too_soon, KeysUnavailable) and too_soon.retry_after_s == 60
    assert fetched == (2, 2)


def test_random_kids_keeping_the_refetch_busy_make_a_freshly_rotated_key_503_to_retry_not_401(
    github: FakeOidcIssuer, clock: SettableClock
) -> None:
    async def steps(verifier: OidcVerifier) -> list[object]:
        await verifier.verify(github.mint())
        clock.advance(60)
        seen: list[object] = [await refusal(verifier, github.mint(header={"kid": "attacker-1"}))]  # takes the refetch
        github.rotate(keep_previous=False)
        clock.advance(10)
        seen.append(await keys_not_current(verifier, github.mint()))  # the job's token, signed with the new key
        clock.advance(50)
        seen += [await verifier.verify(github.mint()), fetches(github)]  # the job's retry, after Retry-After
        return seen

    fresh_refusal, rotated, retried, fetched = run(settings(github), clock, steps)
    assert isinstance(fresh_refusal, TokenRefused) and fresh_refusal.check == "signature"  # keys fetched for it: 401
    assert isinstance(rotated, KeysUnavailable) and rotated.retry_after_s == 50
    assert "not among the keys" in str(rotated) and isinstance(retried, VerifiedToken) and fetched == (3, 3)


def test_the_second_published_key_verifies_without_a_refetch(github: FakeOidcIssuer, clock: SettableClock) -> None:
    # GitHub publishes two keys at a time: a token signed by the next one is already known.
    async def steps(verifier: OidcVerifier) -> VerifiedToken:
        await verifier.verify(github.mint())
        return await verifier.verify(github.mint(key=github.published[1]))

    assert run(settings(github), clock, steps).jti
    assert fetches(github) == (1, 1)


def test_concurrent_first_tokens_share_one_fetch(github: FakeOidcIssuer, clock: SettableClock) -> None:
    tokens = [github.mint() for _ in range(20)]

    async def steps(verifier: OidcVerifier) -> list[VerifiedToken]:
        return await asyncio.gather(*(verifier.verify(token) for token in tokens))

    assert len({token.jti for token in run(settings(github), clock, steps)}) == 20
    assert fetches(github) == (1, 1)


# ---- stale keys ---------------------------------------------------------------------------------------------


def test_a_withdrawn_key_stops_verifying_once_the_background_refresh_drops_it(github: FakeOidcIssuer,
                                                                             clock: SettableClock) -> None:  # fmt: skip
    async def steps(verifier: OidcVerifier) -> list[object]:
        withdrawn = github.signing_key
        await verifier.verify(github.mint())
        clock.advance(3600)
        github.rotate(keep_previous=False)
        seen: list[object] = [await verifier.verify(github.mint(key=withdrawn))]  # the keys in hand, for now
        await verifier.keys.settle()
        seen += [fetches(github), await keys_not_current(verifier, github.mint(key=withdrawn)), fetches(github)]
        clock.advance(60)
        seen += [await refusal(verifier, github.mint(key=withdrawn)), fetches(github)]
        return seen

    stale_but_in_hand, refreshed, not_yet, after, withdrawn, finally_ = run(settings(github), clock, steps)
    assert isinstance(stale_but_in_hand, VerifiedToken)
    # Dropped by a refresh before the token came, which cannot tell a withdrawn key from one newer than the
    # refresh: 503 until the keys may be fetched for this kid, then 401 from keys fetched for it.
    assert refreshed == (2, 2) and isinstance(not_yet, KeysUnavailable) and after == (2, 2)
    assert isinstance(withdrawn, TokenRefused) and withdrawn.check == "signature" and finally_ == (3, 3)


def test_a_known_kid_on_stale_keys_verifies_now_and_refreshes_behind(github: FakeOidcIssuer,
                                                                     clock: SettableClock) -> None:  # fmt: skip
    async def steps(verifier: OidcVerifier) -> list[object]:
        await verifier.verify(github.mint())
        clock.advance(3600)
        token = await verifier.verify(github.mint())
        at_answer = fetches(github)
        await verifier.keys.settle()
        return [token, at_answer, fetches(github)]

    token, at_answer, after = run(settings(github), clock, steps)
    assert isinstance(token, VerifiedToken)
    assert at_answer[1] <= 2 and after == (2, 2)  # the answer did not wait for the refresh


def test_a_failed_background_refresh_keeps_the_keys_in_hand(github: FakeOidcIssuer, clock: SettableClock) -> None:
    async def steps(verifier: OidcVerifier) -> list[object]:
        await verifier.verify(github.mint())
        clock.advance(3600)
        github.answer_instead["jwks"] = (503, b"")
        first = await verifier.verify(github.mint())
        await verifier.keys.settle()
        second = await verifier.verify(github.mint())  # no new refresh within jwks_refresh_min_s of the failure
        await verifier.keys.settle()
        return [first, second, fetches(github)]

    first, second, fetched = run(settings(github), clock, steps)
    assert isinstance(first, VerifiedToken) and isinstance(second, VerifiedToken)
    assert fetched == (2, 2)


# ---- the issuer's failures are ours -------------------------------------------------------------------------


def test_a_discovery_document_naming_another_issuer_is_unavailable(github: FakeOidcIssuer,
                                                                   clock: SettableClock) -> None:  # fmt: skip
    github.discovery_overrides["issuer"] = "https://token.actions.githubusercontent.com"
    failure = unavailable(github, clock, github.mint())
    assert str(failure) == (f"{github.url}: its discovery document names another issuer: "
                            '"https://token.actions.githubusercontent.com"')  # fmt: skip
    assert fetches(github) == (1, 0)


def test_a_jwks_uri_on_another_service_of_this_machine_is_never_fetched(github: FakeOidcIssuer,
                                                                        clock: SettableClock) -> None:  # fmt: skip
    # The issuer's discovery document points at some other service on loopback (the same keys, so it would verify).
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as elsewhere:
        elsewhere.published = github.published
        github.discovery_overrides["jwks_uri"] = elsewhere.jwks_uri
        failure = unavailable(github, clock, github.mint())
        assert str(failure) == (f"{github.url}: jwks_uri {json.dumps(elsewhere.jwks_uri)} is not on the issuer's "
                                f"own scheme, host and port ({github.url})")  # fmt: skip
        assert fetches(github) == (1, 0) and fetches(elsewhere) == (0, 0)


@pytest.mark.parametrize(("issuer", "jwks_uri"), [
    ("https://gitlab.example.com", "http://127.0.0.1:8080/keys"),
    ("https://gitlab.example.com", "http://localhost/oauth/discovery/keys"),
    ("https://gitlab.example.com", "https://gitlab.example.com:8443/oauth/discovery/keys"),
    ("https://gitlab.example.com", "https://evil.example/oauth/discovery/keys"),
    ("https://gitlab.example.com", "https://gitlab.example.com.evil.example/keys"),
    ("https://token.actions.githubusercontent.com", "https://keys.githubusercontent.com/.well-known/jwks"),
    ("http://127.0.0.1:5000", "https://127.0.0.1:5000/keys"),
])  # fmt: skip
def test_a_jwks_uri_off_the_issuers_origin_is_refused(issuer: str, jwks_uri: str) -> None:
    assert jwks_uri_problem(jwks_uri, issuer) == f"is not on the issuer's own scheme, host and port ({issuer})"


@pytest.mark.parametrize(("issuer", "jwks_uri"), [
    ("https://token.actions.githubusercontent.com", "https://token.actions.githubusercontent.com/.well-known/jwks"),
    ("https://gitlab.com", "https://gitlab.com/oauth/discovery/keys"),
    ("https://gitlab.com", "https://GitLab.com:443/oauth/discovery/keys"),
    ("https://ghes.example.com/_services/token", "https://ghes.example.com/_services/token/.well-known/jwks"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/jwks"),
])  # fmt: skip
def test_a_jwks_uri_on_the_issuers_origin_is_fetched(issuer: str, jwks_uri: str) -> None:
    assert jwks_uri_problem(jwks_uri, issuer) is None


@pytest.mark.parametrize(("jwks_uri", "problem"), [
    ("http://keys.example/jwks", "http is allowed only on a loopback host (127.0.0.1, ::1, localhost); use https"),
    ("file:///etc/passwd", "is not an https:// URL"),
    (None, "is missing"),
])  # fmt: skip
def test_a_jwks_uri_labgate_will_not_fetch_is_unavailable(github: FakeOidcIssuer, clock: SettableClock,
                                                          jwks_uri: str | None, problem: str) -> None:  # fmt: skip
    github.discovery_overrides["jwks_uri"] = jwks_uri
    failure = unavailable(github, clock, github.mint())
    assert str(failure).endswith(problem)
    assert fetches(github) == (1, 0)


def test_a_failed_jwks_fetch_is_unavailable_and_retried_after_the_period(github: FakeOidcIssuer,
                                                                          clock: SettableClock) -> None:  # fmt: skip
    github.answer_instead["jwks"] = (503, b"upstream down")

    async def steps(verifier: OidcVerifier) -> list[object]:
        seen: list[object] = []
        for wait in (0, 30, 31):
            clock.advance(wait)
            with pytest.raises(KeysUnavailable) as caught:
                await verifier.verify(github.mint())
            seen += [str(caught.value), fetches(github)]
        github.answer_instead.clear()
        clock.advance(60)
        seen.append(await verifier.verify(github.mint()))
        return seen

    first, after_first, second, after_second, third, after_third, recovered = run(settings(github), clock, steps)
    assert first == f"{github.url}: {github.jwks_uri} answered 503"
    assert after_first == (1, 1)
    assert second == f"{github.url}: no keys yet: the last fetch failed, the next is allowed 60 s after it"
    assert after_second == (1, 1)
    assert third == first and after_third == (2, 2)
    assert isinstance(recovered, VerifiedToken)


def test_an_issuer_that_does_not_answer_is_unavailable(clock: SettableClock) -> None:
    # A port nothing listens on: connection refused.
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as gone:
        token = gone.mint()
    failure = unavailable(gone, clock, token)
    assert str(failure) == f"{gone.url}: {gone.url}/.well-known/openid-configuration could not be fetched: ConnectError"


def test_a_jwks_that_trickles_is_cut_off_after_the_fetch_timeout(github: FakeOidcIssuer, clock: SettableClock) -> None:
    github.trickle_s = 0.5  # every read gets a byte well within any per-read timeout; the whole never ends
    started = time.monotonic()
    failure = unavailable(github, clock, github.mint())
    assert str(failure) == f"{github.url}: {github.jwks_uri} did not answer within 5 s"
    assert FETCH_TIMEOUT_S <= time.monotonic() - started < FETCH_TIMEOUT_S + 3


@pytest.mark.parametrize(("body", "problem"), [
    (b" " * (MAX_DOCUMENT_BYTES + 1), f"is larger than {MAX_DOCUMENT_BYTES} bytes"),
    (b"<html>", "is not JSON"),
    (b"[]", "is not a JSON object"),
    (b'{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}', "holds no signing key with a key id"),
    (b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}', "holds no signing key with a key id"),
])  # fmt: skip
def test_a_jwks_labgate_cannot_use_is_unavailable(github: FakeOidcIssuer, clock: SettableClock, body: bytes,
                                                  problem: str) -> None:  # fmt: skip
    github.answer_instead["jwks"] = (200, body)
    assert str(unavailable(github, clock, github.mint())).endswith(problem)


def test_a_redirect_is_not_followed_even_by_a_client_that_follows_them(github: FakeOidcIssuer,
                                                                       clock: SettableClock) -> None:  # fmt: skip
    with FakeOidcIssuer("github", clock=clock, audience=AUDIENCE) as elsewhere:
        github.redirect_to = elsewhere.url

        async def main() -> KeysUnavailable:
            async with httpx.AsyncClient(follow_redirects=True) as http:
                with pytest.raises(KeysUnavailable) as caught:
                    await OidcVerifier(settings(github), http, clock=clock).verify(github.mint())
                return caught.value

        failure = asyncio.run(main())
        assert elsewhere.requests() == []
    assert str(failure) == f"{github.url}: {github.url}/.well-known/openid-configuration answered 302"
