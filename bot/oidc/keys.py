"""The configured issuers' signing keys: OIDC discovery, then the JWKS it names, cached by key id."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet, import_key

from bot.oidc.settings import OidcIssuer, url_problem

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1 << 20  # discovery documents and JWKS are a few KiB
FETCH_TIMEOUT_S = 5.0  # the whole fetch, however slowly its bytes trickle


class KeysUnavailable(Exception):
    """Our failure, not the token's: an issuer's keys could not be fetched or read, or may not be current
    (503, retry later: after retry_after_s when the cache knows when it may fetch again). The message names
    the issuer and what went wrong, for the operator and the submitter alike."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class PublishedKeys:
    """What one fetch found: the issuer's signing keys, and the algorithms its discovery says it signs with."""

    key_set: KeySet
    algorithms: frozenset[str] | None  # id_token_signing_alg_values_supported; None if the issuer does not say
    kids: frozenset[str]


@dataclass
class _Cached:
    issuer: OidcIssuer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    keys: PublishedKeys | None = None
    fetched_at: float = 0.0  # last fetch that brought keys
    fetches: int = 0  # fetches that brought keys: a request that saw this change while it waited has fresh keys
    tried_at: float | None = None  # last fetch, whatever came of it: the rate limit counts every one
    refreshing: asyncio.Task[None] | None = None


class KeyCache:
    """The signing keys of the configured issuers, and no one else's: only their URLs, and the jwks_uri
    their discovery documents give, are ever fetched (never an `iss`, `jku` or `x5u` read from a token).
    One per process, sharing labgate's httpx client."""

    def __init__(self, issuers: Sequence[OidcIssuer], http: httpx.AsyncClient,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._http = http
        self._clock = clock
        self._cached = {issuer.url: _Cached(issuer) for issuer in issuers}

    async def find(self, issuer_url: str, kid: str) -> PublishedKeys | None:
        """The issuer's current keys if they hold `kid`, else None. Keys not yet fetched are fetched; an unknown
        kid refetches once, unless the keys were fetched less than jwks_refresh_min_s ago; keys older than
        jwks_max_age_s are refreshed in the background. KeysUnavailable when a fetch needed now fails, and
        when an unknown kid may not refetch yet: None only when keys fetched since the request came lack it."""
        cached = self._cached[issuer_url]
        now = self._clock()
        if cached.keys is not None and kid in cached.keys.kids:
            if now - cached.fetched_at >= cached.issuer.jwks_max_age_s:
                self._refresh_in_background(cached)
            return cached.keys
        fetches_before = cached.fetches
        async with cached.lock:  # concurrent misses wait for one fetch
            if cached.keys is not None and kid in cached.keys.kids:
                return cached.keys
            since_tried = self._clock() - cached.tried_at if cached.tried_at is not None else None
            if since_tried is not None and since_tried < cached.issuer.jwks_refresh_min_s:
                retry_after_s = max(1, math.ceil(cached.issuer.jwks_refresh_min_s - since_tried))
                if cached.keys is None:
                    raise KeysUnavailable(f"{issuer_url}: no keys yet: the last fetch failed, the next is allowed "
                                          f"{cached.issuer.jwks_refresh_min_s} s after it", retry_after_s)  # fmt: skip
                if cached.fetches != fetches_before:
                    return None  # fetched while this request waited for them: the kid is not the issuer's
                # The kid may be a key the issuer has published since (a rotation), and anyone sending made-up
                # kids can keep the refetch just used: labgate's keys are not current, the token may be fine.
                raise KeysUnavailable(f"{issuer_url}: key {quoted(kid)} is not among the keys fetched "
                                      f"{since_tried:.0f} s ago; they may be fetched again in {retry_after_s} s",
                                      retry_after_s)  # fmt: skip
            await self._fetch(cached)
        keys = cached.keys
        return keys if keys is not None and kid in keys.kids else None

    async def settle(self) -> None:
        """Wait for background refreshes in flight (tests; shutdown)."""
        tasks = [cached.refreshing for cached in self._cached.values() if cached.refreshing is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _refresh_in_background(self, cached: _Cached) -> None:
        if cached.refreshing is not None and not cached.refreshing.done():
            return
        if cached.tried_at is not None and self._clock() - cached.tried_at < cached.issuer.jwks_refresh_min_s:
            return  # a refresh failed a moment ago: the keys in hand serve until the next may be tried
        cached.refreshing = asyncio.get_running_loop().create_task(self._refresh(cached))

    async def _refresh(self, cached: _Cached) -> None:
        async with cached.lock:
            try:
                await self._fetch(cached)
            except KeysUnavailable as exc:
                # The keys in hand still verify: a stale key set is better than refusing every job now.
                log.warning("oidc: background refresh of %s's keys failed: %s", cached.issuer.url, exc)

    async def _fetch(self, cached: _Cached) -> None:
        issuer = cached.issuer
        cached.tried_at = self._clock()
        discovery_url = issuer.url.rstrip("/") + "/.well-known/openid-configuration"
        discovery = await self._fetch_json(discovery_url, issuer.url)
        if discovery.get("issuer") != issuer.url:
            raise KeysUnavailable(f"{issuer.url}: its discovery document names another issuer: "
                                  f"{quoted(discovery.get('issuer'))}")  # fmt: skip
        jwks_uri = discovery.get("jwks_uri")
        problem = jwks_uri_problem(jwks_uri, issuer.url) if isinstance(jwks_uri, str) else "is missing"
        if problem or not isinstance(jwks_uri, str):
            raise KeysUnavailable(f"{issuer.url}: jwks_uri {quoted(jwks_uri)} {problem}")
        algorithms = discovery.get("id_token_signing_alg_values_supported")
        supported = frozenset(a for a in algorithms if isinstance(a, str)) if isinstance(algorithms, list) else None
        jwks = await self._fetch_json(jwks_uri, issuer.url)
        keys = _signing_keys(jwks)
        if not keys:
            raise KeysUnavailable(f"{issuer.url}: {jwks_uri} holds no signing key with a key id")
        cached.keys = PublishedKeys(KeySet(keys), supported, frozenset(str(key.kid) for key in keys))
        cached.fetched_at = self._clock()
        cached.fetches += 1
        log.info("oidc: fetched %d keys of %s", len(keys), issuer.url)

    async def _fetch_json(self, url: str, issuer_url: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                # No redirects: only the configured issuer's URLs and its discovered jwks_uri are fetched.
                request = self._http.build_request("GET", url, headers={"Accept": "application/json"},
                                                   timeout=FETCH_TIMEOUT_S)  # fmt: skip
                response = await self._http.send(request, stream=True, follow_redirects=False)
                try:
                    if response.status_code != 200:
                        raise KeysUnavailable(f"{issuer_url}: {url} answered {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise KeysUnavailable(f"{issuer_url}: {url} is larger than {MAX_DOCUMENT_BYTES} bytes")
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise KeysUnavailable(f"{issuer_url}: {url} did not answer within {FETCH_TIMEOUT_S:g} s") from exc
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"{issuer_url}: {url} could not be fetched: {type(exc).__name__}") from exc
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise KeysUnavailable(f"{issuer_url}: {url} is not JSON") from exc
        if not isinstance(document, dict):
            raise KeysUnavailable(f"{issuer_url}: {url} is not a JSON object")
        return document


def jwks_uri_problem(jwks_uri: str, issuer_url: str) -> str | None:
    """Why a discovery document's jwks_uri is not fetched (None: it is): a URL labgate would not fetch, or
    one off the issuer's own scheme, host and port. GitHub (token.actions.githubusercontent.com, and
    Enterprise Server's HOST/_services/token) and GitLab publish their keys beside their discovery document;
    a jwks_uri elsewhere would make labgate fetch, and trust as signing keys, whatever another service
    (http on this machine's loopback, say) answers."""
    problem = url_problem(jwks_uri)
    if problem:
        return problem
    if _origin(jwks_uri) != _origin(issuer_url):
        return f"is not on the issuer's own scheme, host and port ({issuer_url})"
    return None


def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number
        return None
    return parts.scheme, parts.hostname, port


def _signing_keys(jwks: dict[str, Any]) -> list[Key]:
    """The public signing keys of a JWKS that carry a kid. Symmetric (oct) keys are never taken: a
    published one would be a secret anyone could sign with."""
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        return []
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not entry["kid"]:
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
            continue
        try:
            keys.append(import_key(entry))
        except (JoseError, ValueError, TypeError) as exc:  # one odd key does not hide the others
            log.warning("oidc: skipping key %s: %s", entry["kid"][:64], type(exc).__name__)
    return keys


def quoted(value: object) -> str:
    """A value read from outside (a token, a fetched document) for a message: JSON-quoted, so no control
    character reaches a log or a reply, and cut short."""
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:200] + "..."
