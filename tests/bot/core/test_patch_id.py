"""bot.core.patch_id against the real `git patch-id --stable`, over patches git itself writes: every kind of
diff header and hunk a series can carry, one mail at a time and several in one stream."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bot.core.patch_id import stable_patch_id, stable_patch_ids
from tests.conftest import EXAMPLES, make_git_repo

SAMPLES = Path(__file__).parents[2] / "samples" / "mbox"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip


def git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, input=data, env=ENV, check=True, capture_output=True).stdout


def git_ids(repo: Path, text: bytes, mode: str = "--stable") -> list[str]:
    return [line.split()[0] for line in git(repo, "patch-id", mode, data=text).decode().splitlines()]


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello and, on top, one commit per kind of change."""
    repo = make_git_repo(EXAMPLES / "hello", tmp_path_factory.mktemp("pid") / "hello")
    src = repo / "src" / "mathx.c"
    src.write_text(src.read_text().replace("return a < 0 ? -a : a;", "return a < 0 ? -a : a; /* sign */"))
    commit(repo, "one line changed in the middle")
    (repo / "ONE").write_text("a single line\n")
    commit(repo, "a new one-line file (@@ -0,0 +1 @@)")
    (repo / "ONE").write_text("a single line, no newline")
    commit(repo, "no newline at end of file")
    (repo / "ONE").unlink()
    (repo / "TWO").write_text("first\nsecond\n")
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nmore\n")
    commit(repo, "a file gone, one added, one changed: several files in one patch")
    (repo / "TWO").chmod(0o755)
    commit(repo, "a mode change only: a header with no hunk")
    (repo / "TWO").chmod(0o644)
    (repo / "TWO").write_text("first\n\tsecond  \n")
    commit(repo, "whitespace only, together with a mode change")
    lines = [f"line {n}\n" for n in range(1, 40)]
    (repo / "LONG").write_text("".join(lines))
    commit(repo, "a long file")
    lines[4], lines[30] = "changed 5\n", "changed 31\n"
    lines.insert(20, "inserted\n")
    (repo / "LONG").write_text("".join(lines))
    commit(repo, "three hunks, one of them one line each side (@@ -5 +5 @@)")
    git(repo, "mv", "LONG", "LONGER")
    (repo / "LONGER").write_text("".join(lines) + "the end\n")
    commit(repo, "a rename with a change")
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 4)
    commit(repo, "a binary file")
    (repo / "TWO").write_text("diff --git a/x b/x\n-- \ncommit " + "a" * 40 + "\n")
    commit(repo, "lines that look like diff headers, a signature and a commit inside a hunk")
    commit(repo, "empty: no diff at all (git log -p shows it, patch-id prints nothing for it)")
    return repo


def test_each_mail_git_writes_has_gits_id(history: Path) -> None:
    mails = git(history, "format-patch", "--stdout", "--binary", "HEAD~12..HEAD").split(b"\nFrom ")
    assert len(mails) == 11  # format-patch leaves the empty commit out
    for index, mail in enumerate(mails):
        mail = mail if index == 0 else b"From " + mail
        expected = git_ids(history, mail)
        assert len(expected) == 1 and stable_patch_ids(mail) == expected, mail.decode(errors="replace")[:400]


def test_a_whole_stream_and_git_show_output_give_gits_ids(history: Path) -> None:
    stream = git(history, "format-patch", "--stdout", "--binary", "HEAD~12..HEAD")
    assert stable_patch_ids(stream) == git_ids(history, stream) and len(git_ids(history, stream)) == 11
    exact = stable_patch_ids(stream, verbatim=True)
    assert exact == git_ids(history, stream, "--verbatim") and not set(exact) & set(stable_patch_ids(stream))
    log = git(history, "log", "-p", "--binary", "-13")
    assert stable_patch_ids(log) == git_ids(history, log)
    bare = git(history, "log", "-p", "-U0", "-13")  # no context: hunks such as "@@ -5 +5 @@", counts left out
    assert b"\n@@ -5 +5 @@" in bare and stable_patch_ids(bare) == git_ids(history, bare)
    for rev in ("HEAD~11", "HEAD~5", "HEAD~1"):
        shown = git(history, "show", "--binary", rev)
        assert stable_patch_ids(shown) == git_ids(history, shown)


def test_the_samples_patches_as_decoded_mail_bodies(history: Path) -> None:
    text = (SAMPLES / "b4-mathx-lcm-v1.mbox").read_text()
    for mail in text.split("\nFrom mboxrd@z")[1:]:
        body = mail.split("\n\n", 1)[1]
        expected = git_ids(history, body.encode())
        assert [stable_patch_id(body)] == (expected or [None])


def test_whitespace_does_not_change_the_id_which_is_why_it_is_no_pin(history: Path) -> None:
    """The id is blind to whitespace, so `rm -rf /tmp/x` and `rm -rf / tmp/x` share one: git agrees."""
    base = b"diff --git a/s.sh b/s.sh\n--- a/s.sh\n+++ b/s.sh\n@@ -1 +1 @@\n-echo\n+rm -rf /tmp/x\n"
    evil = base.replace(b"rm -rf /tmp/x", b"rm -rf / tmp/x")
    assert stable_patch_ids(base) == stable_patch_ids(evil) == git_ids(history, base) == git_ids(history, evil)
    assert stable_patch_ids(base, verbatim=True) != stable_patch_ids(evil, verbatim=True)  # what tells them apart
    assert stable_patch_ids(evil, verbatim=True) == git_ids(history, evil, "--verbatim")


@pytest.mark.parametrize("hunk", [b"@@ -1,x +1 @@", b"@@ -3 +3,2 @@", b"@@ -1,2 -1 @@", b"@@ - +1 @@", b"@@ -1,1 +y @@",
                                  b"@@ -1, 1 +1, 1 @@", b"@@ -1,99999999999 +1 @@"])  # fmt: skip
def test_malformed_hunk_headers_read_as_git_reads_them(history: Path, hunk: bytes) -> None:
    text = (b"diff --git a/f b/f\n--- a/f\n+++ b/f\n" + hunk + b"\n-old\n+new\n ctx\n"
            b"diff --git a/g b/g\n--- a/g\n+++ b/g\n@@ -1 +1 @@\n-x\n+y\n")  # fmt: skip
    assert stable_patch_ids(text) == git_ids(history, text)
