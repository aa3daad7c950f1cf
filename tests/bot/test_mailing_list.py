"""A series' sender graded by what its mails prove (bot/intake/mailing_list.py): patatt against the tree's keyring,
DKIM through a local key look-up, a maintainer address that is only claimed, and the attacks on each."""

from __future__ import annotations

from pathlib import Path

import patatt
import pytest

from bot.core.series import IdentityGrade
from bot.host.config import Tree
from bot.intake.mailing_list import series_reader
from tests.bot.forges.mail.test_identity import DkimDomain, Ed25519, Resolver, attest, ed25519_key

MAINTAINER = "maint@kernel.example.org"
STRANGER = "someone@elsewhere.example"


def patch(index: int, sender: str, *, total: int = 2) -> bytes:
    diff = (
        f"diff --git a/f{index}.txt b/f{index}.txt\n--- a/f{index}.txt\n+++ b/f{index}.txt\n@@ -0,0 +1 @@\n+{index}\n"
    )
    return (f"From: Maint Ainer <{sender}>\nTo: list@example.org\nSubject: [PATCH {index}/{total}] foo: part {index}\n"
            f"Date: Tue, 25 Oct 2022 13:38:41 -0400\nMessage-Id: <20221025-foo-v1-{index}@kernel.example.org>\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 8bit\n\n"
            f"Part {index}.\n\nSigned-off-by: Maint Ainer <{sender}>\n---\n{diff}").encode()  # fmt: skip


def cover(sender: str) -> bytes:
    return (f"From: Maint Ainer <{sender}>\nSubject: [PATCH 0/2] foo: two parts\n"
            "Date: Tue, 25 Oct 2022 13:38:40 -0400\nMessage-Id: <20221025-foo-v1-0@kernel.example.org>\n\n"
            "Two parts.\n\nbase-commit: 0123456789abcdef0123456789abcdef01234567\n").encode()  # fmt: skip


def mbox(*mails: bytes) -> bytes:
    return b"".join(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n" + mail.rstrip(b"\n") + b"\n\n" for mail in mails)


def tree(tmp_path: Path, *, key: Ed25519 | None = None, **mail: object) -> Tree:
    keyring = None
    if key is not None:
        keyring = tmp_path / "keyring"
        path = keyring / patatt.make_pkey_path("ed25519", MAINTAINER, "default")
        path.parent.mkdir(parents=True)
        path.write_text(key.public + "\n")
    return Tree.model_validate({"name": "t", "url": "https://git.example.org/t.git",
                                "mail": {"keyring": keyring, **mail}})  # fmt: skip


def test_patatt_by_a_keyring_key_on_every_patch_runs_like_a_trusted_change(tmp_path: Path) -> None:
    key = ed25519_key()
    signed = mbox(cover(MAINTAINER), attest(patch(1, MAINTAINER), key), attest(patch(2, MAINTAINER), key))
    read = series_reader()(signed, tree(tmp_path, key=key))
    assert read.trust.grade is IdentityGrade.VERIFIED and read.trust.trusted, read.trust.reason
    assert read.trust.tier_cap is None and read.trust.plan_from == "head"
    # The cover letter is never applied: only the two patches, in order.
    assert [name for name, _ in read.patches] == ["0001.patch", "0002.patch"]
    assert b"part 1" in read.patches[0][1] and b"part 2" in read.patches[1][1]
    assert read.series.trailers.base_commit == "0123456789abcdef0123456789abcdef01234567"


def test_attack_one_unsigned_patch_in_a_signed_series_is_not_verified(tmp_path: Path) -> None:
    key = ed25519_key()
    read = series_reader()(mbox(attest(patch(1, MAINTAINER), key), patch(2, MAINTAINER)), tree(tmp_path, key=key))
    assert read.trust.grade is IdentityGrade.UNVERIFIED and not read.trust.trusted


def test_attack_patatt_by_a_key_not_in_the_keyring_waits(tmp_path: Path) -> None:
    mine, theirs = ed25519_key(), ed25519_key()
    signed = mbox(attest(patch(1, MAINTAINER), theirs), attest(patch(2, MAINTAINER), theirs))
    read = series_reader()(signed, tree(tmp_path, key=mine))
    assert read.trust.grade is IdentityGrade.UNVERIFIED and not read.trust.trusted


@pytest.mark.parametrize("listed", [True, False])
def test_dkim_with_a_local_key_verifies_and_runs_only_a_maintainer(tmp_path: Path, listed: bool) -> None:
    domain = DkimDomain("kernel.example.org")
    signed = mbox(domain.sign(patch(1, MAINTAINER)), domain.sign(patch(2, MAINTAINER)))
    read = series_reader(Resolver(domain))(signed, tree(tmp_path, maintainers=[MAINTAINER] if listed else []))
    assert read.trust.grade is IdentityGrade.VERIFIED, read.trust.reason
    assert read.trust.trusted is listed  # proven, but only a maintainer's series runs unapproved


def test_dkim_with_dkim_dns_none_reads_unverifiable(tmp_path: Path) -> None:
    domain = DkimDomain("kernel.example.org")
    signed = mbox(domain.sign(patch(1, MAINTAINER)), domain.sign(patch(2, MAINTAINER)))
    read = series_reader()(signed, tree(tmp_path, maintainers=[MAINTAINER], dkim_dns="none"))
    assert read.trust.grade is IdentityGrade.MAINTAINER_CLAIM and not read.trust.trusted
    assert "not proven" in read.trust.reason


def test_attack_unsigned_maintainer_address_is_only_a_claim(tmp_path: Path) -> None:
    unsigned = mbox(patch(1, MAINTAINER), patch(2, MAINTAINER))
    waits = series_reader()(unsigned, tree(tmp_path, maintainers=[MAINTAINER.upper()]))
    assert waits.trust.grade is IdentityGrade.MAINTAINER_CLAIM and not waits.trust.trusted
    qemu = series_reader()(unsigned, tree(tmp_path, maintainers=[MAINTAINER], unverified_tier="qemu"))
    assert qemu.trust.trusted and qemu.trust.tier_cap == "qemu" and qemu.trust.plan_from == "base"
    stranger = series_reader()(mbox(patch(1, STRANGER), patch(2, STRANGER)), tree(tmp_path, maintainers=[MAINTAINER]))
    assert stranger.trust.grade is IdentityGrade.UNVERIFIED and not stranger.trust.trusted


def test_attack_dkim_by_the_attackers_own_domain_for_a_maintainer_from_is_not_verified(tmp_path: Path) -> None:
    attacker = DkimDomain("attacker.example")
    signed = mbox(attacker.sign(patch(1, MAINTAINER)), attacker.sign(patch(2, MAINTAINER)))
    read = series_reader(Resolver(attacker))(signed, tree(tmp_path, maintainers=[MAINTAINER]))
    assert read.trust.grade is IdentityGrade.MAINTAINER_CLAIM and not read.trust.trusted


def test_a_mail_without_a_readable_sender_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no readable From: address"):
        series_reader()(mbox(patch(1, "not an address")), tree(tmp_path))
