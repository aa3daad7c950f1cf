"""DKIM: does a signature by the From: address's own domain cover From and the whole body?

dkimpy checks the cryptography; what a valid signature is *worth* is decided here, before any key
is looked up:
- d= must be the From: domain or a parent of it (DMARC's relaxed alignment, without the public
  suffix list: a one-label d= such as `org` never aligns). A signature by attacker.example proves
  attacker.example sent it, nothing about a From: @kernel.org, so its key is not even fetched.
- From and Subject must be signed. Content-Type / Content-Transfer-Encoding / MIME-Version may go
  unsigned (kernel.org's signer leaves them out) only while they make the body read as the signed
  bytes themselves: one text/plain part in 7bit, 8bit or binary. Otherwise a header added or changed
  later (quoted-printable joins lines at "=", base64 or multipart reread everything) could change
  the patch git applies without touching the signed bytes.
- l= shorter than the body does not count: the rest of the body is unsigned and could be anything.
Key look-ups go through the caller's resolver (tests: local keys; never real DNS from here).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from bot.forges.mail.grading import BODY_CHANGED, Finding, Grade, Method

ResolveDkimKey = Callable[[str], bytes | None]

MAX_SIGNATURES = 8
# dkimpy's base64 check on b= backtracks quadratically on hostile whitespace: a cap keeps it short.
MAX_SIGNATURE_HEADER = 8 * 1024
MIN_RSA_BITS = 1024
REQUIRED_SIGNED = (b"from", b"subject")
BODY_READING_HEADERS = (b"content-type", b"content-transfer-encoding", b"mime-version")
_DNS_NAME = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$")


def aligned(signing_domain: str, from_domain: str) -> bool:
    """d= is the From: domain or one of its parents, and has at least two labels."""
    signing, sender = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if "." not in signing:
        return False
    return sender == signing or sender.endswith("." + signing)


def check_dkim(raw: bytes, from_address: str, resolve_dkim_key: ResolveDkimKey) -> list[Finding]:
    """One finding per DKIM-Signature (at most MAX_SIGNATURES), none when the mail has none."""
    try:
        verifier = dkim.DKIM(raw, minkey=MIN_RSA_BITS)
    except Exception as error:  # dkimpy's parser on hostile bytes: any failure is "unreadable"
        return [Finding(Method.DKIM, Grade.INVALID, "", f"the message cannot be read for DKIM ({error})")]
    signature_headers = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    findings = [_check_one(verifier, index, value, from_address, resolve_dkim_key)
                for index, value in enumerate(signature_headers[:MAX_SIGNATURES])]  # fmt: skip
    if len(signature_headers) > MAX_SIGNATURES:
        extra = len(signature_headers) - MAX_SIGNATURES
        findings.append(Finding(Method.DKIM, Grade.INVALID, "", f"{extra} more DKIM signatures not checked"))
    return findings


def _check_one(verifier: dkim.DKIM, index: int, header_value: bytes, from_address: str,
               resolve_dkim_key: ResolveDkimKey) -> Finding:  # fmt: skip
    from_domain = from_address.rpartition("@")[2]
    if len(header_value) > MAX_SIGNATURE_HEADER:
        return Finding(Method.DKIM, Grade.INVALID, "", f"DKIM-Signature is over {MAX_SIGNATURE_HEADER} bytes: not read")
    try:
        prepared = verifier.verify_headerprep(index)
    except Exception as error:  # malformed tags, bad base64, unknown algorithm
        return Finding(Method.DKIM, Grade.INVALID, "", f"the DKIM-Signature cannot be read ({error})")
    if not prepared:
        return Finding(Method.DKIM, Grade.INVALID, "", "the DKIM-Signature cannot be read")
    fields, signed_headers, _ = prepared
    domain = fields[b"d"].decode("ascii", "replace").lower().rstrip(".")
    selector = fields[b"s"].decode("ascii", "replace")

    def finding(grade: Grade, reason: str) -> Finding:
        return Finding(Method.DKIM, grade, domain, reason)

    if not aligned(domain, from_domain):
        return finding(Grade.UNVERIFIABLE, f"DKIM signature by d={domain}, not by the From: domain {from_domain}")
    for name in REQUIRED_SIGNED:
        if name not in signed_headers:
            return finding(Grade.UNVERIFIABLE, f"the DKIM signature by d={domain} does not sign {name.decode()}:")
    present = [name.lower() for name, _ in verifier.headers]
    unsigned = [name.decode() for name in BODY_READING_HEADERS if present.count(name) > signed_headers.count(name)]
    if unsigned and not _body_reads_as_signed(verifier.headers):
        return finding(Grade.UNVERIFIABLE,
                       f"{', '.join(unsigned)} not signed by d={domain}, and they make the body read as other than "
                       "its signed bytes: they could have been changed to alter the patch")  # fmt: skip
    uncovered = _unsigned_body_bytes(verifier, fields)
    if uncovered:
        return finding(Grade.UNVERIFIABLE,
                       f"the DKIM signature by d={domain} covers only l={fields[b'l'].decode()} bytes of the body: "
                       f"{uncovered} bytes are unsigned")  # fmt: skip
    key_name = f"{selector}._domainkey.{domain}"
    lookup = _KeyLookup(resolve_dkim_key)
    try:
        valid = verifier.verify(index, dnsfunc=lookup)
    except dkim.ValidationError as error:
        if "body hash mismatch" in str(error):
            return finding(Grade.UNVERIFIABLE, f"the body is not the one d={domain} signed: {BODY_CHANGED}")
        return finding(Grade.UNVERIFIABLE, f"the DKIM signature by d={domain} does not hold ({error})")
    except dkim.KeyFormatError as error:
        return finding(Grade.UNVERIFIABLE, f"the DKIM key at {key_name} is not usable ({error})")
    except Exception as error:  # malformed signature data past dkimpy's own checks
        return finding(Grade.INVALID, f"the DKIM signature by d={domain} cannot be checked ({error})")
    if lookup.failure is not None:
        return finding(Grade.UNVERIFIABLE, f"the DKIM key at {key_name} could not be looked up ({lookup.failure})")
    if lookup.record is None:
        return finding(Grade.UNVERIFIABLE, f"no DKIM key is published at {key_name}")
    if not valid:
        return finding(Grade.UNVERIFIABLE,
                       f"the DKIM signature by d={domain} does not verify with the key at {key_name}: headers "
                       "changed after signing, the key is unusable, or it was not made with this key")  # fmt: skip
    return finding(Grade.VERIFIED, f"DKIM signature by d={domain} (s={selector}) over From, Subject and the whole body")


def _body_reads_as_signed(headers: list[tuple[bytes, bytes]]) -> bool:
    """One text/plain part whose transfer encoding leaves the bytes as they are (or none declared)."""

    def values(wanted: bytes) -> list[str]:
        return [v.decode("ascii", "replace").strip().lower() for n, v in headers if n.lower() == wanted]

    types, encodings = values(b"content-type"), values(b"content-transfer-encoding")
    if len(types) > 1 or len(encodings) > 1:
        return False
    plain = not types or types[0].split(";", 1)[0].strip() == "text/plain"
    return plain and (not encodings or encodings[0] in ("7bit", "8bit", "binary"))


def _unsigned_body_bytes(verifier: dkim.DKIM, fields: dict[bytes, bytes]) -> int:
    """How much of the canonical body lies past l= (0 without l=, or when l= covers it all)."""
    if b"l" not in fields:
        return 0
    try:
        policy = CanonicalizationPolicy.from_c_value(fields.get(b"c", b"simple/simple"))
    except Exception:  # an unknown c= fails verification later; here: nothing proven covered
        return len(verifier.body) or 1
    body_length = len(policy.canonicalize_body(verifier.body))
    if not fields[b"l"].isdigit():  # dkimpy lets an empty l= through
        return body_length or 1
    return max(0, body_length - int(fields[b"l"]))


class _KeyLookup:
    """dkimpy's dnsfunc around the caller's resolver: a plain name in, the TXT record out; it
    remembers what happened so that "no key" and "a key that does not verify" read differently."""

    def __init__(self, resolve: ResolveDkimKey) -> None:
        self._resolve = resolve
        self.record: bytes | None = None
        self.failure: str | None = None

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        text = name.decode("ascii", "replace").rstrip(".")
        if not _DNS_NAME.match(text):
            self.failure = f"{text!r} is not a DNS name"
            return None
        try:
            self.record = self._resolve(text)
        except Exception as error:  # the resolver is the caller's; its failure makes the mail unverifiable
            self.failure = f"{type(error).__name__}: {error}"
            return None
        return self.record
