"""What a verified id-token is, and the two ways one is refused: the contract between the verifier,
the policy and the submission API (bot/web/submissions.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True)
class VerifiedToken:
    """An id-token whose signature, issuer, audience and times were checked."""

    issuer: str  # exactly as configured (and as the token's `iss`)
    claims: Mapping[str, Any]  # every claim, as the issuer wrote it (GitHub and GitLab ids are strings)
    jti: str  # the token's unique id; a token without one is refused
    expires_at: datetime  # aware UTC, from `exp`


class TokenRefused(Exception):
    """401: the token is not proven (what failed is named: signature, issuer, audience, expiry, ...).
    The message is shown to the submitter: it names the check, never a key or the policy."""

    def __init__(self, check: Literal["token", "signature", "issuer", "audience", "expiry"], detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


@dataclass(frozen=True)
class Grant:
    """What a rule lets a verified token do."""

    tier: Literal["qemu", "hardware"]
    rule: int  # index of the rule that matched, for the log
    identity: str  # who submitted, for people: "github repository octo-org/hello (id 588298808) at refs/heads/main,
    # run 3989419862" or "gitlab project my-group/my-project (id 20) at refs/heads/main, pipeline 574"


class NotAuthorized(Exception):
    """403: the token is genuine but no rule allows it. The message names the token's own claim values
    that were compared (repository_id=..., ref=...), never the rules."""


# The submission API's verifier: the real one (verify.py) or, in bench/submissions.py only, a constant.
# It raises TokenRefused (401), or bot.oidc.keys.KeysUnavailable (503, Retry-After) when the issuer's keys
# cannot be fetched, or a kid is unknown while a refetch must wait: labgate's failure to check, not the token's.
Verifier = Callable[[str], Awaitable[VerifiedToken]]
