"""Helpers of the OIDC tests: settings naming fake issuers, and a verifier run on a client of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from bot.oidc.settings import OidcIssuer, OidcSettings
from bot.oidc.types import TokenRefused
from bot.oidc.verify import OidcVerifier
from tests.fakes.oidc_issuer import FakeOidcIssuer, SettableClock

AUDIENCE = "https://labgate.example"
T = TypeVar("T")


def settings(*issuers: FakeOidcIssuer | str, **issuer_options: Any) -> OidcSettings:
    urls = [issuer if isinstance(issuer, str) else issuer.url for issuer in issuers]
    return OidcSettings(audience=AUDIENCE, issuers=[OidcIssuer(url=url, **issuer_options) for url in urls])


def run(config: OidcSettings, clock: SettableClock, steps: Callable[[OidcVerifier], Awaitable[T]]) -> T:
    """`steps` with a verifier of its own, on labgate's kind of shared httpx client."""

    async def main() -> T:
        async with httpx.AsyncClient() as http:
            verifier = OidcVerifier(config, http, clock=clock)
            try:
                return await steps(verifier)
            finally:
                await verifier.keys.settle()

    return asyncio.run(main())


async def refusal(verifier: OidcVerifier, token: str) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        await verifier.verify(token)
    return caught.value
