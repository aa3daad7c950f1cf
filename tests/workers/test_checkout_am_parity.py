"""The worktree-less apply (workers/patchapply.py) makes what `git am --no-3way` made, byte for byte, and
refuses what it refused: real git am in a real worktree against apply_patches in a bare mirror, on mails
with tricky From, Date and Subject lines, in-body headers, CRLF, a pine folder mail, an empty patch, a
symlink a patch writes through."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from workers import patchapply
from workers.checkout import GIT_IDENTITY
from workers.errors import UserError

BODY = b"""
Explain the change.

Signed-off-by: A U Thor <a@example.org>
---
 README | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/README b/README
index ce01362..94954ab 100644
--- a/README
+++ b/README
@@ -1 +1 @@
-hello
+hello, world
"""
FROM_LINE = b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
DATE = b"Date: Tue, 2 Jan 2024 03:04:05 +0100\n"
SUBJECT = b"Subject: [PATCH v2 1/3] readme: greet the world\n"


def _mail(headers: bytes, body: bytes = BODY) -> bytes:
    return FROM_LINE + headers + body


def _new_file(path: bytes) -> bytes:
    """A body whose diff creates `path` with one line."""
    header = b"diff --git a/%s b/%s\nnew file mode 100644\n--- /dev/null\n+++ b/%s\n" % (path, path, path)
    return b"\n---\n" + header + b"@@ -0,0 +1 @@\n+x\n"


# (mail, whether its author date is "now", as git gives a mail without a usable date)
MAILS = {
    "ordinary": (_mail(b"From: A U Thor <a@example.org>\n" + DATE + SUBJECT), False),
    "address only": (_mail(b"From: a@example.org\n" + DATE + SUBJECT), False),
    "no From": (_mail(DATE + SUBJECT), False),
    "empty address": (_mail(b'From: "A U Thor" <>\n' + DATE + SUBJECT), False),
    "empty name": (_mail(b'From: "" <a@example.org>\n' + DATE + SUBJECT), False),
    "encoded name": (_mail(b"From: =?UTF-8?B?w4l2ZSDinJM=?= <e@example.org>\n" + DATE + SUBJECT), False),
    "crud in the name": (_mail(b"From: <Evil> Name <<x>> <e@example.org>\n" + DATE + SUBJECT), False),
    "two addresses": (_mail(b"From: A <a@example.org>, B <b@example.org>\n" + DATE + SUBJECT), False),
    "folded From": (_mail(b"From: A\n U Thor\n <a@example.org>\n" + DATE + SUBJECT), False),
    "no Date": (_mail(b"From: A <a@example.org>\n" + SUBJECT), True),
    "unreadable Date": (_mail(b"From: A <a@example.org>\nDate: the day after tomorrow\n" + SUBJECT), True),
    "future Date": (_mail(b"From: A <a@example.org>\nDate: Fri, 1 Jan 2100 00:00:00 +0000\n" + SUBJECT), False),
    "odd zone": (_mail(b"From: A <a@example.org>\nDate: Tue, 2 Jan 2024 03:04:05 +9999\n" + SUBJECT), False),
    "epoch Date": (_mail(b"From: A <a@example.org>\nDate: @1700000000 +0000\n" + SUBJECT), False),
    "no Subject": (_mail(b"From: A <a@example.org>\n" + DATE), False),
    "RE and brackets": (_mail(b"From: A <a@example.org>\n" + DATE + b"Subject: Re: [RFC] [x] Re: fix\n"), False),
    "in-body From and Date": (
        _mail(
            b"From: Sender <s@example.org>\n" + DATE + SUBJECT,
            b"\nFrom: Real Author <r@example.org>\nDate: Wed, 3 Jan 2024 00:00:00 +0000\n" + BODY,
        ),
        False,
    ),  # fmt: skip
    "in-body Subject": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, b"\nSubject: another\n" + BODY), False),
    "scissors": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, b"\nchatter\n-- >8 --\n" + BODY), False),
    "CRLF": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT).replace(b"\n", b"\r\n"), False),
    "trailing spaces and blank lines": (
        _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, b"\n\n\nline   \n\n\n\n" + BODY),
        False,
    ),  # fmt: skip
    "pine folder data": (
        _mail(b"From: Mail System Internal Data <MAILER-DAEMON@x>\n" + DATE + b"Subject: DON'T DELETE\n")
        + _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT),
        False,
    ),  # fmt: skip
    "empty patch": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, b"\nno diff at all\n"), False),
    "does not apply": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, BODY.replace(b"-hello", b"-bye")), False),
    "second mail fails": (
        _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT) + _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT),
        False,
    ),  # fmt: skip
    "through a symlink": (
        _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, _new_file(b"link/x")),
        False,
    ),  # fmt: skip
    "leaves the tree": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, _new_file(b"../outside")), False),
    "into git metadata": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, _new_file(b".git/hooks/x")), False),
    "into a nested .git": (_mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, _new_file(b"d/.GIT/config")), False),
    "creates what exists": (
        _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, _new_file(b"README")),
        False,
    ),  # fmt: skip
    "a file where a directory is": (
        _mail(b"From: A <a@example.org>\n" + DATE + SUBJECT, _new_file(b"dir")),
        False,
    ),  # fmt: skip
    "mode change": (
        _mail(
            b"From: A <a@example.org>\n" + DATE + SUBJECT,
            b"\n---\ndiff --git a/README b/README\nold mode 100644\nnew mode 100755\n",
        ),
        False,
    ),  # fmt: skip
}


def _git(repo: Path, *args: str, data: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, check=check,
                          env={**os.environ, **GIT_IDENTITY})  # fmt: skip


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree with a file, a directory and a symlink to that directory."""
    repo = tmp_path_factory.mktemp("parity") / "origin"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    (repo / "dir").mkdir()
    (repo / "dir" / "file").write_text("in dir\n")
    (repo / "link").symlink_to("dir")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    return repo


def _without_committer(commit: bytes, author_now: bool) -> list[bytes]:
    """A commit object's author, message and headers, without its committer's time (nor the author's, when
    git took "now"), or the parent (the same, but for the committer time of an earlier commit of the series)."""
    lines = [line for line in commit.split(b"\n") if not line.startswith((b"committer ", b"parent ", b"tree "))]
    return [line.rsplit(b" ", 2)[0] if author_now and line.startswith(b"author ") else line for line in lines]


@pytest.mark.parametrize("case", sorted(MAILS))
def test_apply_patches_makes_what_git_am_made(origin: Path, tmp_path: Path, case: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    mail, author_now = MAILS[case]
    work = tmp_path / "work"
    _git(tmp_path, "clone", "-q", str(origin), str(work))
    base = _git(work, "rev-parse", "HEAD").stdout.decode().strip()
    am = _git(work, "am", "-q", "--no-3way", data=mail, check=False)
    am_commits = _git(work, "rev-list", "--reverse", f"{base}..HEAD").stdout.split()

    mirror = tmp_path / "mirror.git"
    _git(tmp_path, "clone", "-q", "--mirror", str(origin), str(mirror))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(patchapply, "check_patch", lambda name, data: None)  # git's own behaviour is compared
    try:
        head = patchapply.apply_patches(mirror, base, [("case.patch", mail)], "main", scratch, GIT_IDENTITY)
        refused = None
    except UserError as error:
        head, refused = base, str(error)
    assert (am.returncode != 0) == (refused is not None), (am.stderr, am.stdout, refused)
    assert not (tmp_path / "outside").exists() and not list(tmp_path.glob("*/hooks/x"))
    if refused is not None:
        assert "does not apply on main:\n" in refused
        return
    ours = _git(mirror, "rev-list", "--reverse", f"{base}..{head}").stdout.split()
    assert len(ours) == len(am_commits)
    for theirs, mine in zip(am_commits, ours, strict=True):
        assert (
            _git(work, "rev-parse", f"{theirs.decode()}^{{tree}}").stdout
            == _git(mirror, "rev-parse", f"{mine.decode()}^{{tree}}").stdout
        )
        expected = _without_committer(_git(work, "cat-file", "commit", theirs.decode()).stdout, author_now)
        made = _without_committer(_git(mirror, "cat-file", "commit", mine.decode()).stdout, author_now)
        assert made == expected
        assert b"committer labgate <labgate@localhost>" in _git(mirror, "cat-file", "commit", mine.decode()).stdout
