"""Signed, short-lived grants for moving one job's blobs by digest between the control side and workers.

A grant is an HMAC-SHA256, under a key only the control side holds, over (method, digest, job id,
expiry, byte cap). A download grant names one digest: it fetches that blob and no other, for that job
only, until it expires. An upload grant names no digest ("*": the worker learns its digests only as it
makes its log and artifacts) but a byte cap per upload; the server stores an upload only under the
sha256 of the bytes it received, so a grant can add content, never replace or mislabel any.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

DOWNLOAD = "GET"
UPLOAD = "PUT"
ANY_DIGEST = "*"  # an upload grant's digest: whatever the bytes hash to
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(text: str) -> bool:
    """A lower-case sha256 hex digest, and nothing else (no path, no separator, no upper case)."""
    return _DIGEST.fullmatch(text) is not None


@dataclass(frozen=True)
class Grant:
    method: str
    digest: str  # a sha256, or ANY_DIGEST for an upload grant
    job_id: int
    expires: int  # Unix time, seconds
    max_bytes: int = 0  # uploads: the most one upload may hold; 0 for downloads
    total_bytes: int = 0  # uploads: the most all of the job's uploads together may hold; 0 for downloads

    def message(self) -> bytes:
        numbers = (self.job_id, self.expires, self.max_bytes, self.total_bytes)
        fields = ("labgate-exchange", self.method, self.digest, *map(str, numbers))
        return "\n".join(fields).encode()


def sign(key: bytes, grant: Grant) -> str:
    """The grant as a URL query string (job, exp, max, total, sig)."""
    signature = hmac.new(key, grant.message(), hashlib.sha256).hexdigest()
    # Every value is a number or hex: nothing to escape.
    return (f"job={grant.job_id}&exp={grant.expires}&max={grant.max_bytes}&total={grant.total_bytes}"
            f"&sig={signature}")


class RefusedGrant(Exception):
    """The request carries no valid grant for what it asks (the message says why, never the key)."""


def check(key: bytes, method: str, digest: str, query: str, now: float) -> Grant:
    """The grant a request's query string proves for (method, digest), or RefusedGrant."""
    if not is_digest(digest):
        raise RefusedGrant("not a sha256 digest")
    fields = _fields(query)
    try:
        job_id, expires, max_bytes, total_bytes = (int(_one(fields, name)) for name in ("job", "exp", "max", "total"))
        signature = _one(fields, "sig")
    except (KeyError, ValueError) as exc:
        raise RefusedGrant("no grant") from exc
    grant = Grant(method, digest if method == DOWNLOAD else ANY_DIGEST, job_id, expires, max_bytes, total_bytes)
    expected = hmac.new(key, grant.message(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise RefusedGrant("bad signature")
    if now >= expires:  # checked after the signature: an attacker learns nothing from a forged expiry
        raise RefusedGrant("expired")
    return grant


def _fields(query: str) -> dict[str, list[str]]:
    """A query string's values by name, as sent (a grant's values need no unescaping; others do not match)."""
    fields: dict[str, list[str]] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        fields.setdefault(name, []).append(value)
    return fields


def _one(fields: dict[str, list[str]], name: str) -> str:
    values = fields[name]
    if len(values) != 1:
        raise ValueError(f"{name} given {len(values)} times")
    return values[0]
