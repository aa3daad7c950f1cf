"""Patch series from mail: subjects, order, b4 trailers, and which version may supersede which."""

from __future__ import annotations

import email
import email.policy
import mailbox
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest

from bot.core.series import (
    IdentityGrade,
    Mail,
    Sender,
    Series,
    parse_sender,
    parse_series,
    parse_subject,
    supersedes,
    version_identity,
)
from bot.core.subjects import MAX_SUBJECT, UNREADABLE_VERSION
from tests.samples import B4_SERIES
from tests.shared_fixtures import shared_fixture

B4_SERIES_V2 = B4_SERIES.with_name("b4-mathx-lcm-v2.mbox")
LCM_CHANGE_ID = "20260302-mathx-lcm-4f1c2a9e7b3d"
LCM_BASE = "16a8a3ff86868e879a17fcccd9c0b147d7657b1c"


def mails_of(path: Path) -> list[Mail]:
    """Decode an mbox as the intake will: the email package's header decoding and the text part's charset."""
    mails = []
    for raw in mailbox.mbox(path):
        message = email.message_from_bytes(raw.as_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        part = message.get_body(("plain",))
        body = part.get_content() if part is not None else ""
        mails.append(Mail(tuple((key, str(value)) for key, value in message.items()), body))
    return mails


def mail(subject: str, body: str = "", *, sender: str = "Alice Example <alice@example.org>", msgid: str = "") -> Mail:
    headers = [("From", sender), ("Subject", subject), ("Date", "Mon, 02 Mar 2026 09:00:00 +0000")]
    return Mail(tuple(headers + ([("Message-Id", msgid)] if msgid else [])), body)


DIFF = "msg\n---\n f | 1 +\n\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+x\n"


def with_sender(series: Series, address: str) -> Series:
    """The same series as sent from another address (what a forger's From: would differ in, or not)."""
    assert series.cover is not None
    cover = replace(series.cover, sender=Sender("Someone", address))
    return replace(series, cover=cover)


# --- subjects


@pytest.mark.parametrize(
    ("subject", "tags", "version", "index", "total", "title"),
    [
        ("[PATCH net-next v2 3/7] foo: bar", ("net-next",), 2, 3, 7, "foo: bar"),
        ("[RFC PATCH] mm: try a thing", ("RFC",), 1, None, None, "mm: try a thing"),
        ("[PATCH bpf] bpf: fix a leak", ("bpf",), 1, None, None, "bpf: fix a leak"),
        ("[PATCH v3 0/5] series cover", (), 3, 0, 5, "series cover"),
        ("[PATCH 03/12] padded numbers", (), 1, 3, 12, "padded numbers"),
        ("[PATCH] [net] two bracket groups", ("net",), 1, None, None, "two bracket groups"),
        ("  [patch   NET-NEXT,V4   1/2]   odd    spacing  ", ("NET-NEXT",), 4, 1, 2, "odd spacing"),
        ("[PATCHv2 1/1] joined version", (), 2, 1, 1, "joined version"),
        ("[PATCH RESEND v2 1/2] again", ("RESEND",), 2, 1, 2, "again"),
    ],
)
def test_subject_tags_version_and_position(
    subject: str, tags: tuple[str, ...], version: int, index: int | None, total: int | None, title: str
) -> None:
    parsed = parse_subject(subject)
    read = (parsed.tags, parsed.version, parsed.index, parsed.total, parsed.title)
    assert read == (tags, version, index, total, title)
    assert parsed.is_patch and parsed.problems == ()
    assert parsed.normalised == title.lower()


def test_cover_and_reply_prefixes() -> None:
    assert parse_subject("[PATCH v3 0/5] x").is_cover
    assert not parse_subject("[PATCH v3 1/5] x").is_cover
    for subject in ("Re: [PATCH v2 1/3] foo", "RE: Fwd: [PATCH v2 1/3] foo", "fwd:[PATCH v2 1/3] foo"):
        parsed = parse_subject(subject)
        assert parsed.is_reply and (parsed.version, parsed.index, parsed.normalised) == (2, 1, "foo"), subject


def test_versions_of_one_series_share_the_normalised_subject() -> None:
    first = parse_subject("[PATCH 0/2] mathx: Add an  LCM helper")
    again = parse_subject("[PATCH net-next V2 0/2]  mathx:   add an lcm helper ")
    assert first.normalised == again.normalised == "mathx: add an lcm helper"


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("[PATCH v999999999999 1/2] huge version", "not between v1 and v999"),
        ("[PATCH v0 1/2] zero", "not between v1 and v999"),
        ("[PATCH v2 v3 1/2] two versions", "two versions"),
        ("[PATCH 5/3] past the end", "is not n/m"),
        ("[PATCH 1/0] zero total", "is not n/m"),
        ("[PATCH 1/2 2/2] two positions", "two positions"),
        ("[PATCH 1/99999999999999999999] huge total", "is not n/m"),
        ("[PATCH v2 1/2 never closes", "never closes"),
    ],
)
def test_unreadable_subjects_say_so_and_supersede_nothing(subject: str, problem: str) -> None:
    parsed = parse_subject(subject)
    assert any(problem in text for text in parsed.problems), parsed.problems
    if "version" in problem:
        assert parsed.version == UNREADABLE_VERSION
    if "n/m" in problem or "positions" in problem:
        assert parsed.index is None and parsed.total is None


def test_a_version_of_hundreds_of_digits_is_refused_not_converted() -> None:
    parsed = parse_subject(f"[PATCH v{'9' * 400} 1/{'9' * 400}] x")
    assert parsed.version == UNREADABLE_VERSION and parsed.index is None and parsed.title == "x"
    # Past the cap the subject is cut, so the bracket never closes: said, and nothing in it is read.
    cut = parse_subject(f"[PATCH v{'9' * 10000} 1/2] x")
    assert cut.version == 1 and cut.index is None and len(cut.problems) == 2


def test_control_characters_and_unicode_in_subjects() -> None:
    parsed = parse_subject("[PATCH\x00v2\t2/3]\r\n foo:\x1b[31m bär\u200b baz\x7f")
    assert (parsed.version, parsed.index, parsed.total) == (2, 2, 3)
    assert parsed.normalised == "foo: [31m bär baz"  # the zero-width space and DEL are spaces, then collapsed
    assert all(char.isprintable() for char in parsed.title)
    assert parse_subject("[ΠATCH] ünïcode").tags == ("ΠATCH",)


@pytest.mark.parametrize(
    "subject",
    ["[" * 200_000, "[" + "a" * 200_000, "Re:" * 100_000, "[PATCH " + "v1 " * 100_000 + "]", "]" * 200_000,
     "[PATCH " + "1/2 " * 50_000 + "]x", "x" * 1_000_000],
)  # fmt: skip
def test_hostile_subjects_take_bounded_time(subject: str) -> None:
    started = time.perf_counter()
    parsed = parse_subject(subject)
    assert time.perf_counter() - started < 0.5
    assert len(parsed.title) <= MAX_SUBJECT
    if len(subject) > MAX_SUBJECT:
        assert any("characters" in problem for problem in parsed.problems)


# --- senders and dates


@pytest.mark.parametrize(
    ("value", "name", "address"),
    [
        ("Alice Example <Alice@Example.ORG>", "Alice Example", "alice@example.org"),
        ('"Example, Alice" <alice@example.org>', "Example, Alice", "alice@example.org"),
        ('"A \\"quoted\\" name" <a@example.org>', 'A "quoted" name', "a@example.org"),
        ("alice@example.org (Alice)", "Alice", "alice@example.org"),
        ("alice@example.org", "", "alice@example.org"),
        ("<alice@example.org>", "", "alice@example.org"),
    ],
)
def test_sender_forms(value: str, name: str, address: str) -> None:
    assert parse_sender(value) == Sender(name, address)


@pytest.mark.parametrize(
    "value",
    ["", "Alice", "alice@example.org, mallory@example.net", "A <a@example.org> <m@example.net>",
     "A <a@example.org> trailing", "A <not an address>", "A <a@b@c>", "<" * 100_000],
)  # fmt: skip
def test_a_from_naming_no_one_or_several_reads_as_no_sender(value: str) -> None:
    assert parse_sender(value) is None


def test_dates_and_their_problems() -> None:
    series = parse_series([mail("[PATCH] x", DIFF)])
    assert series.first is not None and series.first.date == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    bad = parse_series([Mail((("From", "a@example.org"), ("Subject", "[PATCH] x"), ("Date", "31 Feb 2026 9:0")), DIFF)])
    assert bad.first is not None and bad.first.date is None
    assert any("Date:" in problem for problem in bad.problems)


# --- series, against b4's own series and ours


def test_b4s_series_parses_as_b4_wrote_it() -> None:
    series = parse_series(mails_of(shared_fixture("mbox/b4/shazam-git1-just-series.mbox")))
    assert series.problems == () and series.is_complete
    assert series.cover is not None and series.cover.subject.title == "This is a cover for test series 1"
    assert [patch.subject.title for patch in series.patches] == [
        "Remove line 2 from file2", "Add more lines to file 1", "Add some paragraphs to lipsum",
        "Minor typo changes imitation",
    ]  # fmt: skip
    assert [patch.subject.index for patch in series.patches] == [1, 2, 3, 4]
    assert (series.version, series.total, series.missing, series.duplicates) == (1, 4, (), ())
    assert series.trailers.change_id == "20221025-test1-e8520c2200a3"
    assert series.trailers.base_commit == "f435c12df7c0ecf20ab8937859e63cddffacabb4"
    cover_id = "<20221025-test1-v1-0-e4f28f57990c@linuxfoundation.org>"
    assert series.cover.message_id == cover_id and series.cover.in_reply_to is None
    assert [patch.in_reply_to for patch in series.patches] == [cover_id] * 4
    assert [patch.message_id for patch in series.patches] == [
        f"<20221025-test1-v1-{n}-e4f28f57990c@linuxfoundation.org>" for n in (1, 2, 3, 4)
    ]
    assert series.cover.sender == Sender("Konstantin Ryabitsev", "konstantin@linuxfoundation.org")
    assert series.cover.date == datetime(2022, 10, 25, 13, 38, 41, tzinfo=timezone(timedelta(hours=-4)))
    assert not series.cover.has_diff and all(patch.has_diff for patch in series.patches)
    assert version_identity(series) == "change-id:20221025-test1-e8520c2200a3"


def test_our_b4_sample_parses_as_written() -> None:
    series = parse_series(mails_of(B4_SERIES))
    assert series.problems == () and series.is_complete
    assert series.cover is not None and series.cover.subject.normalised == "mathx: add an lcm helper"
    assert [patch.subject.title for patch in series.patches] == [
        "mathx: add mathx_lcm()",
        "README: list the mathx helpers",
    ]
    assert (series.trailers.change_id, series.trailers.base_commit) == (LCM_CHANGE_ID, LCM_BASE)
    assert series.trailers.prerequisite_patch_ids == () and series.cover.sender == Sender(
        "Alice Example", "alice@example.org"
    )


def test_our_v2_sample_names_its_prerequisites() -> None:
    series = parse_series(mails_of(B4_SERIES_V2))
    assert series.problems == () and series.is_complete and series.version == 2
    assert series.trailers == replace(
        series.trailers,
        change_id=LCM_CHANGE_ID,
        base_commit=LCM_BASE,
        prerequisite_change_ids=("20260301-mathx-gcd-sign-9d2e1f0a3b4c:v3",),
        prerequisite_patch_ids=("3f1e0c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f", "8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b"),
    )
    assert series.cover is not None and series.cover.date == datetime(2026, 3, 4, 9, 15, tzinfo=UTC)


def test_mails_in_any_order_come_out_in_index_order() -> None:
    mails = mails_of(B4_SERIES)
    series = parse_series([mails[2], mails[0], mails[1]])
    assert [patch.subject.index for patch in series.patches] == [1, 2] and series.cover is not None


def test_missing_and_duplicate_patches_are_reported_not_guessed() -> None:
    cover, first, second = mails_of(B4_SERIES)
    gap = parse_series([cover, second])
    assert gap.missing == (1,) and not gap.is_complete
    doubled = parse_series([cover, first, first, second])
    assert doubled.duplicates == (1,) and not doubled.is_complete
    assert [patch.subject.index for patch in doubled.patches] == [1, 1, 2]
    two_covers = parse_series([cover, cover, first, second])
    assert two_covers.cover is None and 0 in two_covers.duplicates and "2 cover letters" in two_covers.problems


def test_disagreeing_totals_and_versions_are_problems() -> None:
    series = parse_series([mail("[PATCH v2 1/2] a", DIFF), mail("[PATCH v3 2/3] b", DIFF)])
    assert series.version == UNREADABLE_VERSION and series.total is None and not series.is_complete
    assert any("version" in problem for problem in series.problems)
    assert any("how many patches" in problem for problem in series.problems)


def test_without_a_numbered_cover_the_mail_with_no_diff_is_the_cover() -> None:
    series = parse_series([mail("[PATCH 1/1] fix", DIFF), mail("[PATCH] about this fix", "Just words.\n")])
    assert series.cover is not None and series.cover.subject.title == "about this fix"
    assert [patch.subject.title for patch in series.patches] == ["fix"] and series.is_complete


def test_a_single_patch_carries_its_trailers_below_the_cut_line() -> None:
    body = (
        "base-commit: 0000000 in the commit message is prose\n" + DIFF + "\nbase-commit: " + LCM_BASE + "\n-- \n2.43\n"
    )
    series = parse_series([mail("[PATCH] one fix", body)])
    assert series.cover is None and series.total == 1 and series.is_complete
    assert series.trailers.base_commit == LCM_BASE


def test_replies_are_set_aside() -> None:
    cover, first, second = mails_of(B4_SERIES)
    reply = mail("Re: [PATCH 1/2] mathx: add mathx_lcm()", "> quoted\nLooks good.\n", msgid="<r@example.org>")
    series = parse_series([cover, first, reply, second])
    assert len(series.patches) == 2 and series.is_complete
    assert any("<r@example.org>" in problem for problem in series.problems)


def test_bad_or_repeated_trailers_are_problems() -> None:
    cover = mail(
        "[PATCH 0/1] c",
        "text\n---\nbase-commit: nothex!\nchange-id: a\nchange-id: b\nprerequisite-patch-id: 123\n",
    )
    series = parse_series([cover, mail("[PATCH 1/1] p", DIFF)])
    assert series.trailers.base_commit is None and series.trailers.change_id is None
    assert series.trailers.prerequisite_patch_ids == ()
    assert sum("not a valid value" in problem for problem in series.problems) == 2
    assert any("change-id given 2 times" in problem for problem in series.problems)


def test_a_series_of_hostile_size_is_bounded() -> None:
    many = [mail(f"[PATCH {n}/999] p{n}", DIFF) for n in range(1, 1200)]
    started = time.perf_counter()
    series = parse_series(many)
    assert time.perf_counter() - started < 5
    assert len(series.patches) == 1000 and any("only the first 1000" in problem for problem in series.problems)
    trailers = "\n".join(f"prerequisite-patch-id: {n:040x}" for n in range(500))
    cover = parse_series([mail("[PATCH 0/1] c", "---\n" + trailers + "\n"), mail("[PATCH 1/1] p", DIFF)])
    assert len(cover.trailers.prerequisite_patch_ids) == 100


# --- versions and who may supersede whom


def test_identity_is_the_change_id_else_the_sender_and_subject() -> None:
    assert version_identity(parse_series(mails_of(B4_SERIES))) == f"change-id:{LCM_CHANGE_ID}"
    plain = parse_series([mail("[PATCH v2 1/1] Fix  It", DIFF, sender="Bob <BOB@example.org>")])
    assert version_identity(plain) == "subject:bob@example.org:fix it"


def test_v2_supersedes_v1_of_the_same_sender_and_grade() -> None:
    v1, v2 = parse_series(mails_of(B4_SERIES)), parse_series(mails_of(B4_SERIES_V2))
    for grade in IdentityGrade:
        assert supersedes(v2, v1, grade, grade)
    assert supersedes(v2, v1, IdentityGrade.VERIFIED, IdentityGrade.MAINTAINER_CLAIM)
    assert not supersedes(v1, v2, IdentityGrade.VERIFIED, IdentityGrade.VERIFIED)  # never backwards
    assert not supersedes(v1, v1, IdentityGrade.VERIFIED, IdentityGrade.VERIFIED)


def test_a_forged_v2_does_not_supersede_a_verified_maintainers_v1() -> None:
    """A stranger copies the maintainer's series: same subject, same change-id, even the same From:."""
    v1 = parse_series(mails_of(B4_SERIES))
    forged = parse_series(mails_of(B4_SERIES_V2))  # byte for byte what the maintainer would send as v2
    assert version_identity(forged) == version_identity(v1)  # the identity is only a claim...
    for forged_grade in (IdentityGrade.UNVERIFIED, IdentityGrade.MAINTAINER_CLAIM):
        assert not supersedes(forged, v1, forged_grade, IdentityGrade.VERIFIED)  # ...the grade decides
    assert not supersedes(forged, v1, IdentityGrade.UNVERIFIED, IdentityGrade.MAINTAINER_CLAIM)


def test_without_a_change_id_a_strangers_same_subject_is_another_series() -> None:
    maintainers = parse_series([mail("[PATCH 0/1] net: fix", "words\n"), mail("[PATCH 1/1] net: fix", DIFF)])
    strangers = parse_series(
        [mail("[PATCH v2 0/1] net: fix", "words\n", sender="Mallory <mallory@example.net>"),
         mail("[PATCH v2 1/1] net: fix", DIFF, sender="Mallory <mallory@example.net>")]
    )  # fmt: skip
    assert not supersedes(strangers, maintainers, IdentityGrade.VERIFIED, IdentityGrade.UNVERIFIED)
    spoofed = with_sender(strangers, "alice@example.org")  # From: the maintainer's address, unproven
    assert not supersedes(spoofed, maintainers, IdentityGrade.UNVERIFIED, IdentityGrade.VERIFIED)
    assert supersedes(spoofed, maintainers, IdentityGrade.VERIFIED, IdentityGrade.VERIFIED)


def test_an_unreadable_version_supersedes_nothing() -> None:
    v1 = parse_series(mails_of(B4_SERIES))
    huge = parse_series([replace(m, headers=_renamed(m, "v999999999999")) for m in mails_of(B4_SERIES_V2)])
    assert huge.version == UNREADABLE_VERSION
    assert not supersedes(huge, v1, IdentityGrade.VERIFIED, IdentityGrade.UNVERIFIED)


def _renamed(message: Mail, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((key, value.replace("v2", version) if key == "Subject" else value) for key, value in message.headers)


def test_grades_are_ordered_and_named() -> None:
    assert IdentityGrade.UNVERIFIED < IdentityGrade.MAINTAINER_CLAIM < IdentityGrade.VERIFIED
    assert [grade.label for grade in IdentityGrade] == ["unverified", "maintainer-claim", "verified"]
