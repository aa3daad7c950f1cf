"""Signed page links and operator tokens: who may read a private tree's pipeline (pure, no I/O).

A link token names one pipeline and when it stops working, and carries an HMAC-SHA256 of both
under a key only the server holds: `PIPELINE.EXPIRES.MAC`. It opens that pipeline's pages and
nothing else, so a maintainer who clicks the forge report through sees one pipeline, and a
token copied from one report cannot be stretched to another pipeline or past its expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass

LINK_VERSION = b"labgate page link v1"
MIN_KEY_BYTES = 32
# Decimal ids and times of bounded length, a lowercase hex MAC: anything else is not a token.
_TOKEN = re.compile(r"([1-9][0-9]{0,17})\.([0-9]{1,12})\.([0-9a-f]{64})")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LinkToken:
    pipeline_id: int
    expires_at: int  # unix seconds


def sign_pipeline_link(key: bytes, pipeline_id: int, expires_at: int) -> str:
    """The token that opens pipeline `pipeline_id`'s pages until `expires_at` (unix seconds)."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"link key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")
    if pipeline_id < 1 or expires_at < 0:
        raise ValueError(f"cannot sign pipeline {pipeline_id} until {expires_at}")
    return f"{pipeline_id}.{expires_at}.{_mac(key, pipeline_id, expires_at)}"


def parse_link_token(key: bytes, token: str, now: int) -> LinkToken | None:
    """The token's scope if its MAC is ours and it has not expired; None for anything else."""
    found = _TOKEN.fullmatch(token)
    if found is None or len(key) < MIN_KEY_BYTES:
        return None
    pipeline_id, expires_at, mac = int(found.group(1)), int(found.group(2)), found.group(3)
    # Constant time: a byte-by-byte comparison would let an attacker find the MAC a byte at a time.
    if not hmac.compare_digest(mac, _mac(key, pipeline_id, expires_at)):
        return None
    if expires_at <= now:
        return None
    return LinkToken(pipeline_id, expires_at)


def link_opens_pipeline(key: bytes, token: str, pipeline_id: int, now: int) -> bool:
    """Whether `token` is a live link to exactly this pipeline."""
    parsed = parse_link_token(key, token, now)
    return parsed is not None and parsed.pipeline_id == pipeline_id


def is_sha256_hex(value: str) -> bool:
    return _SHA256_HEX.fullmatch(value) is not None


def operator_token_matches(token: str, configured_sha256: tuple[str, ...]) -> bool:
    """Whether the token's sha256 is one of the configured digests (each compared in constant time)."""
    if not token:
        return False
    digest = hashlib.sha256(token.encode()).hexdigest()
    matched = False
    for expected in configured_sha256:
        # No early exit: how long the check takes says nothing of which digest (if any) matched.
        matched |= hmac.compare_digest(digest, expected.lower())
    return matched


def _mac(key: bytes, pipeline_id: int, expires_at: int) -> str:
    message = b"\n".join((LINK_VERSION, b"pipeline:%d" % pipeline_id, b"expires:%d" % expires_at))
    return hmac.new(key, message, hashlib.sha256).hexdigest()

LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine, by its name or its address (no DNS look-up is made)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
