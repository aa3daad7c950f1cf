"""The paths a patch mail touches (bot/core/diff_paths.py): never fewer than git am could change."""

from __future__ import annotations

import base64

from bot.core.diff_paths import MAX_PATHS, mail_texts, touched_paths


def paths(*mails: bytes) -> frozenset[str] | None:
    return touched_paths(text for mail in mails for text in mail_texts(mail))


def test_a_plain_diff_gives_its_paths() -> None:
    mail = (
        b"Subject: x\n\nmsg\n---\ndiff --git a/src/a.c b/src/a.c\n--- a/src/a.c\n+++ b/src/a.c\n@@ -1 +1 @@\n-a\n+b\n"
    )
    assert paths(mail) == {"src/a.c"}
    assert paths(b"\n--- /dev/null\n+++ b/new.c\n@@ -0,0 +1 @@\n+x\n") == {"new.c"}


def test_rename_and_copy_lines_name_their_paths_whatever_the_diff_git_line_says() -> None:
    mail = (
        b"diff --git a/mine/x b/mine/x\nsimilarity index 100%\nrename from core/x\nrename to mine/x\ncopy from core/y\n"
    )
    assert paths(mail) == {"mine/x", "core/x", "core/y"}


def test_a_transfer_encoding_does_not_hide_a_path() -> None:
    body = b"diff --git a/core/x b/core/x\n--- a/core/x\n+++ b/core/x\n@@ -1 +1 @@\n-a\n+b\n"
    mail = b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(body)
    assert paths(mail) == {"core/x"}
    qp = b"Content-Transfer-Encoding: quoted-printable\n\n--- a/core/=\nx\n+++ b/core/x\n"
    assert "core/x" in (paths(qp) or ())


def test_traditional_and_quoted_names_read_as_git_reads_them() -> None:
    assert paths(b"--- orig/core/x.c\t2020\n+++ new//core/x.c\n") == {"core/x.c", "/core/x.c"}
    assert paths(b'diff --git "a/dr\\151vers/x" "b/dr\\151vers/x"\n') == {"drivers/x"}
    assert paths(b"--- a/x\r\n+++ b/x\r\n") == {"x"}


def test_too_many_paths_claim_nothing() -> None:
    many = "".join(f"--- a/f{i}\n" for i in range(MAX_PATHS + 1)).encode()
    assert paths(many) is None


def test_a_diff_git_line_with_other_prefixes_or_spaces_gives_every_name_it_may_mean() -> None:
    # A mode change names its file on the diff --git line alone; git drops any first component.
    assert paths(b"diff --git i/core/x w/core/x\nold mode 100644\nnew mode 100755\n") == {"core/x"}
    assert "core/a b" in (paths(b"diff --git a/core/a b b/core/a b\ndeleted file mode 100644\n") or ())


def test_a_traditional_header_with_a_date_after_a_space_gives_the_name_before_it() -> None:
    assert "core/x" in (paths(b"--- a/core/x 2020-01-01 00:00:00.000000000 +0000\n+++ b/core/x 2020-01-01\n") or ())


def test_attack_two_transfer_encodings_do_not_hide_a_path() -> None:
    # Python's parser takes the first Content-Transfer-Encoding, git am the last: both readings are read.
    body = b"msg\n---\ndiff --git a/core/x b/core/x\n--- a/core/x\n+++ b/core/x\n@@ -1 +1,2 @@\n c\n+w\n"
    mail = (b"Subject: x\nContent-Transfer-Encoding: 8bit\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(body))  # fmt: skip
    assert paths(mail) == {"core/x"}
