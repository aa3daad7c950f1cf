"""The words of a mail identity check: grades, methods, and what one signature was found to prove.

Only `verified` ever raises trust. `unverifiable`, `invalid` and `none` all get exactly what an
unsigned mail gets: a broken or unknown signature is never held against its sender (a list or
Patchwork may have broken it), and it is never worth anything either.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Grade(StrEnum):
    """How far a mail's `From:` is proven."""

    VERIFIED = "verified"  # a signature we checked proves the From: address (or its domain)
    UNVERIFIABLE = "unverifiable"  # signed, but nothing we can check proves From: (unknown key, rewritten, ...)
    INVALID = "invalid"  # a signature or From: header too malformed to read: treated as unsigned
    NONE = "none"  # not signed at all


class Method(StrEnum):
    """What kind of signature a finding is about."""

    PATATT = "patatt"  # X-Developer-Signature (b4 / patatt attestation), checked against the tree's keyring
    DKIM = "dkim"  # DKIM-Signature, the key published by the signing domain d=


@dataclass(frozen=True)
class Finding:
    """One signature on a mail and what it proved."""

    method: Method
    grade: Grade
    signer: str  # patatt: the key's identity (i=); DKIM: the signing domain (d=); "" when unreadable
    reason: str  # for a maintainer: what was checked and why it did or did not count


# Why a body that does not match its signature is only "unverifiable": the two causes look alike.
BODY_CHANGED = ("changed on the way (a list or Patchwork rewriting it) or the signature was copied onto "
                "another body; labgate cannot tell which")  # fmt: skip
