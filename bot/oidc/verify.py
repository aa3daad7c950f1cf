"""OidcVerifier: an id-token's signature, issuer, audience and times, checked in that order (joserfc does the JOSE)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeGuard

import httpx
from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError

from bot.oidc.keys import KeyCache, quoted
from bot.oidc.settings import OidcIssuer, OidcSettings
from bot.oidc.types import TokenRefused, VerifiedToken

MAX_TOKEN_BYTES = 8 * 1024  # GitHub's and GitLab's are about 1-2 KiB


class OidcVerifier:
    """`await OidcVerifier(settings, http).verify(token)`: a VerifiedToken, or TokenRefused naming the check
    that failed; KeysUnavailable (bot.oidc.keys) when the issuer's keys cannot be fetched, which is ours."""

    def __init__(self, settings: OidcSettings, http: httpx.AsyncClient, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.settings = settings
        self.keys = KeyCache(settings.issuers, http, clock)
        self._clock = clock
        self._any_algorithm = tuple(dict.fromkeys(a for issuer in settings.issuers for a in issuer.algorithms))

    async def verify(self, token: str) -> VerifiedToken:
        if len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise TokenRefused("token", f"not a compact JWT of at most {MAX_TOKEN_BYTES} bytes")
        # Read untrusted, only to choose the issuer and key: nothing here is believed until the signature is.
        try:
            unverified = jws.extract_compact(token.encode())
            header = unverified.headers()
            payload = json.loads(unverified.payload)
        except (JoseError, ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
            raise TokenRefused("token", "not a compact JWT (header.payload.signature, base64url JSON)") from exc
        if not isinstance(payload, dict):
            raise TokenRefused("token", "the payload is not a JSON object")
        if "crit" in header or "b64" in header:
            raise TokenRefused("token", "header extensions (crit, b64) are not accepted")
        claimed_issuer = payload.get("iss")
        issuer = self.settings.issuer(claimed_issuer) if isinstance(claimed_issuer, str) else None
        alg, kid = header.get("alg"), header.get("kid")
        # An issuer not configured still hears about its alg first: the checks run in one order for every token.
        allowed = issuer.algorithms if issuer is not None else self._any_algorithm
        if alg not in allowed:
            raise TokenRefused("signature", f"alg {quoted(alg)} is not accepted (only {', '.join(allowed)})")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("signature", "the header names no key (kid)")
        if issuer is None:
            raise TokenRefused("issuer", f"token is from {quoted(claimed_issuer)}, which labgate does not trust")
        claims = await self._verified_claims(token, issuer, alg, kid)
        self._check_claims(claims, issuer)
        return VerifiedToken(issuer=issuer.url, claims=claims, jti=claims["jti"],
                             expires_at=datetime.fromtimestamp(claims["exp"], UTC))  # fmt: skip

    async def _verified_claims(self, token: str, issuer: OidcIssuer, alg: str, kid: str) -> dict[str, Any]:
        published = await self.keys.find(issuer.url, kid)
        if published is None:
            raise TokenRefused("signature", f"key {quoted(kid)} is not one {issuer.url} publishes")
        if published.algorithms is not None and alg not in published.algorithms:
            raise TokenRefused("signature", f"alg {alg} is not one {issuer.url} signs with")
        try:
            # The key set, not one key: joserfc takes the key with the header's kid whose use and alg fit.
            decoded = jwt.decode(token, published.key_set, algorithms=list(issuer.algorithms))
        except JoseError as exc:
            raise TokenRefused("signature", f"does not verify with {issuer.url}'s key {quoted(kid)}") from exc
        return decoded.claims

    def _check_claims(self, claims: dict[str, Any], issuer: OidcIssuer) -> None:
        if claims.get("iss") != issuer.url:  # the signature covers it: any difference is the issuer's own doing
            raise TokenRefused("issuer", f"token is from {quoted(claims.get('iss'))}, labgate expects {issuer.url}")
        audience = self.settings.audience
        if not _is_for(claims.get("aud"), audience):
            raise TokenRefused("audience", f"token is for {quoted(claims.get('aud'))}, labgate is {quoted(audience)}")
        self._check_times(claims)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise TokenRefused("token", "the token has no jti (its unique id, which replays are told by)")

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = int(self._clock())
        leeway = self.settings.leeway_s
        times: dict[str, Any] = {name: claims[name] for name in ("exp", "nbf", "iat") if name in claims}
        registry = jwt.JWTClaimsRegistry(now=now, leeway=leeway, exp={"essential": True}, iat={"essential": True})
        try:
            registry.validate(times)
            datetime.fromtimestamp(claims["exp"], UTC)  # a year past 9999 is no expiry labgate can keep
        except MissingClaimError as exc:
            missing = exc.claim.replace(",", " and ")
            raise TokenRefused("expiry", f"the token has no {missing} (exp and iat are required)") from exc
        except ExpiredTokenError as exc:
            raise TokenRefused("expiry", f"token expired at {_when(claims['exp'])}, it is now {_when(now)} "
                               f"(leeway {leeway} s)") from exc  # fmt: skip
        except ClaimError as exc:
            value = claims.get(exc.claim)
            if exc.claim == "nbf" and _is_time(value):
                detail = f"token is not valid before {_when(value)}, it is now {_when(now)} (leeway {leeway} s)"
            elif exc.claim == "iat" and _is_time(value):
                detail = (f"token was issued in the future, at {_when(value)}; it is now {_when(now)} "
                          f"(leeway {leeway} s)")  # fmt: skip
            else:
                detail = f"{exc.claim} {quoted(value)} is not a time (seconds since 1970)"
            raise TokenRefused("expiry", detail) from exc
        except (OverflowError, ValueError, OSError) as exc:
            raise TokenRefused("expiry", f"exp {quoted(claims['exp'])} is out of range") from exc


def _is_for(aud: object, audience: str) -> bool:
    """Whether a token's `aud` is labgate's: the string itself, or a list of nothing else. A list naming
    another audience too (GitLab's newer `aud:` list) is refused: that other service holds a token that
    is valid here, and could submit with it before the job does."""
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and len(aud) > 0 and all(item == audience for item in aud)


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _when(value: float) -> str:
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + f" ({value})"
    except (OverflowError, ValueError, OSError):
        return str(value)
