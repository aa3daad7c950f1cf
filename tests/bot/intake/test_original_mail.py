"""Signatures checked on the mail as sent (bot/intake/original_mail.py): the public-inbox original (a real HTTP
archive on 127.0.0.1), else the mail rebuilt from Patchwork's patch JSON, else the mail as served; and the attack
of an archive that serves another diff under the patch's Message-Id."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.core.series import IdentityGrade
from bot.forges.mail.original import split_mboxrd
from bot.forges.patchwork.client import PatchworkError
from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.intake.mailing_list import decode, series_reader, served_patches
from bot.intake.original_mail import (
    AS_SERVED,
    FROM_ARCHIVE,
    FROM_PATCHWORK,
    CheckedMail,
    gather_checked_mails,
    kept_checked_mails,
)
from tests.bot.forges.mail.test_identity import (
    DIFF,
    Archive,
    DkimDomain,
    Resolver,
    as_mboxrd,
    attest,
    ed25519_key,
    patch_mail,
    patchwork_json_of,
    patchwork_served,
)
from tests.bot.test_mailing_list import MAINTAINER, mbox, patch, tree

TRAILER = b"-- \n2.40.0\n"  # git send-email's signature: Patchwork drops it, and with it every body signature


class FakePatchJson:
    """Patchwork's GET /api/patches/ID/ from fixed answers (else its 404); records the ids asked for."""

    def __init__(self, answers: Mapping[int, Mapping[str, Any]]) -> None:
        self.answers, self.asked = dict(answers), []  # type: ignore[var-annotated]

    def __call__(self, patch_id: int) -> Mapping[str, Any]:
        self.asked.append(patch_id)
        if patch_id not in self.answers:
            raise PatchworkError("patch", 404, "No Patch matches the given query.", transient=False)
        return self.answers[patch_id]


def raw_path(index: int) -> str:
    return f"/list/20221025-foo-v1-{index}@kernel.example.org/raw"


def served_of(*originals: bytes) -> bytes:
    """The mbox Patchwork serves for these mails: its headers added, the body decoded, the trailer dropped."""
    return mbox(*(patchwork_served(original) for original in originals))


def gather(served_mbox: bytes, *, url: str | None, answers: Mapping[int, Mapping[str, Any]] | None = None
           ) -> tuple[list[CheckedMail], FakePatchJson]:  # fmt: skip
    _, raws = served_patches(served_mbox)
    patch_json = FakePatchJson(answers or {})
    served = [(decode(raw).header("message-id"), raw) for raw in raws]
    ids = list(answers or {}) or [101, 102][: len(raws)]
    return gather_checked_mails(served, ids, public_inbox_url=url, patch_json=patch_json), patch_json


def test_patatt_broken_by_patchworks_rendering_verifies_on_the_public_inbox_original(
    tmp_path: Path, archive: Archive
) -> None:
    key = ed25519_key()
    originals = [attest(patch(i, MAINTAINER) + TRAILER, key) for i in (1, 2)]
    served_mbox = served_of(*originals)
    keyed = tree(tmp_path, key=key)
    assert series_reader()(served_mbox, keyed).trust.grade is IdentityGrade.UNVERIFIED  # as served: broken
    for index, original in enumerate(originals, 1):
        archive.pages[raw_path(index)] = (200, as_mboxrd(original))
    checked, patch_json = gather(served_mbox, url=archive.url)
    assert [m.source for m in checked] == [FROM_ARCHIVE, FROM_ARCHIVE] and patch_json.asked == []
    read = series_reader()(served_mbox, keyed, checked)
    assert read.trust.grade is IdentityGrade.VERIFIED and read.trust.trusted, read.trust.reason
    # What git am gets is still what Patchwork serves, never the archive's copy.
    assert [raw for _, raw in read.patches] == [r if r.endswith(b"\n") else r + b"\n" for r in
                                                split_mboxrd(served_mbox)]  # fmt: skip


def test_attack_an_archive_serving_another_diff_under_the_message_id_is_not_used(
    tmp_path: Path, archive: Archive
) -> None:
    key = ed25519_key()
    # The maintainer really signed patch 1 and 2 under these ids, with another diff; the series Patchwork
    # serves (the one git would apply) is the attacker's, unsigned, under the same Message-Ids and From:.
    signed = [attest(patch(i, MAINTAINER) + TRAILER, key) for i in (1, 2)]
    evil = [patch(i, MAINTAINER).replace(f"+{i}\n".encode(), b"+rm -rf /\n") for i in (1, 2)]
    for index, original in enumerate(signed, 1):
        archive.pages[raw_path(index)] = (200, as_mboxrd(original))
    served_mbox = served_of(*evil)
    checked, _ = gather(served_mbox, url=archive.url, answers={})
    assert [m.source for m in checked] == [AS_SERVED, AS_SERVED]
    assert archive.asked == [raw_path(1), raw_path(2)]  # asked, and refused
    read = series_reader()(served_mbox, tree(tmp_path, key=key), checked)
    assert read.trust.grade is IdentityGrade.UNVERIFIED and not read.trust.trusted


def test_without_an_archive_the_mail_is_rebuilt_from_patchworks_json(tmp_path: Path) -> None:
    domain = DkimDomain("kernel.example.org")
    # Quoted-printable, which Patchwork decodes when it serves the mail: the DKIM body hash breaks.
    original = domain.sign(patch_mail(cte="quoted-printable", trailer=""), canonicalize=(b"relaxed", b"relaxed"))
    served_mbox = served_of(original)
    listed = tree(tmp_path, maintainers=[MAINTAINER])
    assert series_reader(Resolver(domain))(served_mbox, listed).trust.grade is IdentityGrade.MAINTAINER_CLAIM
    checked, patch_json = gather(served_mbox, url=None, answers={201: patchwork_json_of(original)})
    assert [m.source for m in checked] == [FROM_PATCHWORK] and patch_json.asked == [201]
    read = series_reader(Resolver(domain))(served_mbox, listed, checked)
    assert read.trust.grade is IdentityGrade.VERIFIED and read.trust.trusted, read.trust.reason


def test_attack_patchwork_json_of_another_diff_is_not_used() -> None:
    domain = DkimDomain("kernel.example.org")
    signed = domain.sign(patch_mail(cte="quoted-printable", trailer=""), canonicalize=(b"relaxed", b"relaxed"))
    evil = patch_mail(cte="quoted-printable", trailer="", diff=DIFF.replace("+world", "+evil"))
    checked, _ = gather(served_of(evil), url=None, answers={301: patchwork_json_of(signed)})
    assert [m.source for m in checked] == [AS_SERVED]


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return open_runtime(Config.model_validate({"data_dir": str(tmp_path / "data")}))


def test_checked_mails_are_gathered_once_and_kept(runtime: Runtime) -> None:
    calls: list[int] = []

    def gathering() -> list[CheckedMail]:
        calls.append(1)
        return [CheckedMail(FROM_ARCHIVE, b"From: a@b\n\nx\n"), CheckedMail(AS_SERVED, b"\xff\x00 raw")]

    first = kept_checked_mails(runtime, "patchwork-originals:test:1", gathering)
    again = kept_checked_mails(runtime, "patchwork-originals:test:1", gathering)
    assert first == again == [CheckedMail(FROM_ARCHIVE, b"From: a@b\n\nx\n"), CheckedMail(AS_SERVED, b"\xff\x00 raw")]
    assert calls == [1]
