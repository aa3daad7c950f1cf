"""patatt / b4 attestation (X-Developer-Signature): does a keyring key prove the From: address?

patatt canonicalises the mail with `git mailinfo` (so a rewritten transfer encoding still
verifies), signs From and Subject, and hashes the whole body. Three things are ours on top:
- the signature's identity (i=) must be the From: address, and so must the address git mailinfo
  read from the signed From: header, or a key for someone else would vouch for a maintainer;
- the body is never trimmed to l=: a signature over part of the body proves nothing about the rest;
- only keys from the tree's keyring count (patatt would fall back to the caller's GnuPG keyring).
"""

from __future__ import annotations

import re

import patatt

from bot.forges.mail.grading import BODY_CHANGED, Finding, Grade, Method
from bot.forges.mail.keyring import KNOWN_ALGORITHMS, SUPPORTED_ALGORITHMS, Keyring

MAX_SIGNATURES = 8
MAX_SIGNATURE_HEADER = 8 * 1024
_HEADER_NAME = re.compile(rb"^x-developer-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


def has_attestation(header_block: bytes) -> bool:
    return _HEADER_NAME.search(header_block) is not None


def check_attestations(raw: bytes, from_address: str, keyring: Keyring) -> list[Finding]:
    """One finding per X-Developer-Signature (at most MAX_SIGNATURES), none when the mail has none."""
    try:
        message = patatt.PatattMessage(raw)
        signatures = message.get_sigs() if message.signed else []
    except Exception as error:  # patatt's parser on hostile bytes: any failure is "unreadable"
        return [Finding(Method.PATATT, Grade.INVALID, "", f"the attestation headers cannot be read ({error})")]
    findings = [_check_one(message, signature, from_address, keyring) for signature in signatures[:MAX_SIGNATURES]]
    if len(signatures) > MAX_SIGNATURES:
        findings.append(Finding(Method.PATATT, Grade.INVALID, "",
                                f"{len(signatures) - MAX_SIGNATURES} more attestations not checked"))  # fmt: skip
    return findings


def _check_one(message: patatt.PatattMessage, signature: patatt.DevsigHeader, from_address: str,
               keyring: Keyring) -> Finding:  # fmt: skip
    identity = signature.get_field_as_str("i") or ""
    algorithm_field = signature.get_field_as_str("a") or ""
    selector = signature.get_field_as_str("s") or "default"
    algorithm = algorithm_field.partition("-")[0]

    def finding(grade: Grade, reason: str) -> Finding:
        return Finding(Method.PATATT, grade, identity, reason)

    if signature.hval is not None and len(signature.hval) > MAX_SIGNATURE_HEADER:
        return finding(Grade.INVALID, f"attestation header is over {MAX_SIGNATURE_HEADER} bytes: not read")
    if algorithm not in KNOWN_ALGORITHMS:
        return finding(Grade.INVALID, f"attestation algorithm a={algorithm_field!r} is not one patatt knows")
    if identity.casefold() != from_address.casefold():
        return finding(Grade.UNVERIFIABLE,
                       f"attestation is by {identity!r}, not by the From: address {from_address}")  # fmt: skip
    key = keyring.public_key(algorithm, identity, selector)
    if key is None:
        return finding(Grade.UNVERIFIABLE,
                       f"no {algorithm} key for {identity} (selector {selector!r}) in the tree's keyring")  # fmt: skip
    if algorithm not in SUPPORTED_ALGORITHMS:
        return finding(Grade.UNVERIFIABLE,
                       f"{algorithm} attestation is not supported (labgate checks ed25519 only: {algorithm} "
                       "needs an external program it does not run on mail)")  # fmt: skip
    try:
        message.git_canonicalize()
        if not message.canon_headers or not message.canon_body:
            return finding(Grade.INVALID, "git mailinfo found no headers or no body to check")
        signature.set_headers(message.canon_headers, mode="validate")
        signature.set_body(message.canon_body)  # the whole body, whatever l= says
        signature.validate(key)
    except patatt.BodyValidationError:
        return finding(Grade.UNVERIFIABLE, f"the body is not the one signed: {BODY_CHANGED}")
    except patatt.ValidationError as error:
        return finding(Grade.UNVERIFIABLE,
                       f"the signature does not verify with {identity}'s key ({error}): headers changed after "
                       "signing, or it was not made with this key")  # fmt: skip
    except Exception as error:  # malformed base64, bad key bytes, git mailinfo failing: unreadable
        return finding(Grade.INVALID, f"the attestation cannot be checked ({type(error).__name__}: {error})")
    if (message.canon_identity or "").casefold() != from_address.casefold():
        return finding(Grade.UNVERIFIABLE,
                       f"the signed From: reads {message.canon_identity!r}, not {from_address}")  # fmt: skip
    return finding(Grade.VERIFIED, f"ed25519 attestation by {identity} verifies with the tree's keyring")
