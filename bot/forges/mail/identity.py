"""Who sent a mail, as far as a signature proves it: patatt attestation or DKIM, honestly graded.

A `From:` address is a claim. `verify_identity` says whether a signature we can check makes it
more than that (`verified`), and otherwise why not, in words a maintainer can act on:
- `none`: not signed; `invalid`: a signature or the From: header too malformed to read;
- `unverifiable`: signed, but nothing proves From: (no key for it in the keyring, a key for someone
  else, a domain that is not the sender's, part of the body unsigned, or a body or header changed
  since signing). A mail re-rendered by Patchwork and a forged one look the same here (a body that
  does not match its signature), so both read `unverifiable`, never "invalid sender".
Only `verified` raises trust; every other grade is worth exactly an unsigned mail, so a signature
can never make a mail less trusted than leaving it off would have.

Checks are bounded: a mail over MAX_MESSAGE_BYTES is not checked, at most a few signatures of each
kind are, and every signature header has a size cap (see attestation.py and domain_signature.py).
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field

from bot.forges.mail.attestation import check_attestations, has_attestation
from bot.forges.mail.domain_signature import ResolveDkimKey, check_dkim
from bot.forges.mail.grading import Finding, Grade, Method
from bot.forges.mail.keyring import Keyring, plain_address

__all__ = ["Finding", "Grade", "IdentityResult", "Keyring", "Method", "ResolveDkimKey", "verify_identity"]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DKIM_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Any "From:" line, the obsolete "From :" too: a second one, however spelled, makes From: ambiguous.
_FROM_LINE = re.compile(rb"^from[ \t]*:", re.IGNORECASE)


@dataclass(frozen=True)
class IdentityResult:
    """What a mail's signatures prove about its From: address."""

    grade: Grade
    method: Method | None  # the signature that proved it (verified only)
    signer: str | None  # patatt: the key's identity; DKIM: the domain d= (verified only)
    identity: str | None  # the From: address proven (verified only)
    claimed: str | None  # the From: address the mail claims; None when there is no single readable one
    reason: str
    findings: tuple[Finding, ...] = field(default=())  # every signature looked at, in order

    @property
    def verified(self) -> bool:
        return self.grade is Grade.VERIFIED

    @property
    def rank(self) -> int:
        """For "at least as trusted as": 1 when verified, 0 for every other grade."""
        return 1 if self.verified else 0


def verify_identity(raw_message: bytes, *, keyring: Keyring, resolve_dkim_key: ResolveDkimKey) -> IdentityResult:
    """Grade the mail's identity. `raw_message` is the message as sent (an mbox `From ` line first is
    skipped); `resolve_dkim_key("sel._domainkey.example.org")` returns the TXT record or None."""
    raw = _without_mbox_line(raw_message)
    header_block = _header_block(raw)
    claimed, from_problem = from_address(header_block)
    patatt_signed = has_attestation(header_block)
    dkim_signed = _DKIM_HEADER.search(header_block) is not None

    def result(grade: Grade, reason: str, findings: tuple[Finding, ...] = ()) -> IdentityResult:
        return IdentityResult(grade, None, None, None, claimed, reason, findings)

    if not patatt_signed and not dkim_signed:
        suffix = f" ({from_problem})" if from_problem else ""
        return result(Grade.NONE, f"not signed: From: is only a claim{suffix}")
    if claimed is None:
        return result(Grade.INVALID, f"signed, but {from_problem}: treated as unsigned")
    if len(raw) > MAX_MESSAGE_BYTES:
        return result(Grade.UNVERIFIABLE, f"the message is over {MAX_MESSAGE_BYTES} bytes: signatures not checked")
    findings: list[Finding] = []
    if patatt_signed:
        findings += check_attestations(raw, claimed, keyring)
    if dkim_signed:
        findings += check_dkim(raw, claimed, resolve_dkim_key)
    for finding in findings:
        if finding.grade is Grade.VERIFIED:
            return IdentityResult(Grade.VERIFIED, finding.method, finding.signer, claimed, claimed,
                                  finding.reason, tuple(findings))  # fmt: skip
    if not findings:  # a signature header the libraries did not see as one
        return result(Grade.INVALID, "a signature header is there but cannot be read: treated as unsigned")
    grade = Grade.UNVERIFIABLE if any(f.grade is Grade.UNVERIFIABLE for f in findings) else Grade.INVALID
    reasons = "; ".join(f"{f.method}: {f.reason}" for f in findings)
    return result(grade, f"From: {claimed} is not proven: {reasons}", tuple(findings))


def from_address(header_block: bytes) -> tuple[str | None, str | None]:
    """(the one From: address, None) or (None, what is wrong with From:)."""
    values = [value for name_ok, value in _unfolded_headers(header_block) if name_ok]
    if not values:
        return None, "the message has no From: header"
    if len(values) > 1:
        return None, f"the message has {len(values)} From: headers"
    text = values[0].decode("utf-8", "replace")
    addresses = [address for _, address in email.utils.getaddresses([text]) if address]
    if len(addresses) != 1:
        return None, f"From: {text.strip()[:200]!r} does not name exactly one address"
    if plain_address(addresses[0]) is None:
        return None, f"From: address {addresses[0][:200]!r} is not a plain ASCII address"
    return addresses[0], None


def _unfolded_headers(header_block: bytes) -> list[tuple[bool, bytes]]:
    """(is it a From: line, its value) for each header, continuation lines joined."""
    headers: list[tuple[bool, bytes]] = []
    for line in re.split(rb"\r?\n", header_block):
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1] = (headers[-1][0], headers[-1][1] + line)
        elif line:
            is_from = _FROM_LINE.match(line) is not None
            headers.append((is_from, line.split(b":", 1)[1] if is_from else b""))
    return headers


def _without_mbox_line(raw: bytes) -> bytes:
    if raw.startswith(b"From ") and not _FROM_LINE.match(raw):
        return raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw


def _header_block(raw: bytes) -> bytes:
    end = _HEADER_END.search(raw)
    return raw[: end.start()] if end else raw
