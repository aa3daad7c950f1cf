"""Real attack patches made with real git: check_patch refuses them, and when it is bypassed, so does check_applied."""

from __future__ import annotations

import email
import email.encoders
import os
import re
import subprocess
from collections.abc import Callable
from email.policy import compat32
from pathlib import Path

import pytest

from workers import patchapply
from workers.checkout import GIT_IDENTITY
from workers.errors import UserError
from workers.patchcheck import check_applied, check_patch

IDENTITY = {"GIT_AUTHOR_NAME": "Mallory", "GIT_AUTHOR_EMAIL": "m@example.org", "GIT_COMMITTER_NAME": "Mallory",
            "GIT_COMMITTER_EMAIL": "m@example.org"}  # fmt: skip


def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", *args], cwd=repo, input=data, capture_output=True, check=True, env={**os.environ, **IDENTITY}
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tree with one regular file, on the commit every attack patch is made against."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "base")
    return repo


def _patch_of(repo: Path, change: Callable[[], object], *format_args: str) -> bytes:
    """The `git format-patch` mail of one commit made by change(), which is then undone."""
    change()
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "innocent change")
    mail = _git(repo, "format-patch", "-1", "--stdout", *format_args)
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    return mail


def apply_patches(repo: Path, patches: list[tuple[str, bytes]], base_label: str) -> str:
    """workers.patchapply.apply_patches onto the repo's HEAD, with a scratch directory of its own."""
    scratch = repo.parent / "scratch"
    scratch.mkdir()
    head = _git(repo, "rev-parse", "HEAD").decode().strip()
    return patchapply.apply_patches(repo, head, patches, base_label, scratch, GIT_IDENTITY)


def _am_unchecked(repo: Path, mail: bytes) -> str:
    """Apply with plain `git am`, as if check_patch had missed it; return what check_applied reads."""
    base = _git(repo, "rev-parse", "HEAD").decode().strip()
    _git(repo, "am", "-q", "--no-3way", data=mail)
    return _git(repo, "diff", "--raw", "--numstat", "-z", "--no-renames", "--no-ext-diff", "--no-textconv", base,
                "HEAD").decode()  # fmt: skip


def _add_symlink(repo: Path) -> Callable[[], None]:
    return lambda: (repo / "link").symlink_to("/etc/passwd")


def _base64(mail: bytes) -> bytes:
    """The same mail with its body re-encoded as base64, as a mail client may send it."""
    message = email.message_from_bytes(mail, policy=compat32)
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    del message["Content-Transfer-Encoding"]
    message.set_payload(body)
    email.encoders.encode_base64(message)
    return message.as_bytes(unixfrom=True)


def _quoted_printable(mail: bytes) -> bytes:
    """The same mail as quoted-printable, with the mode line's first letter escaped out of sight."""
    headers, body = mail.split(b"\n\n", 1)
    return headers + b"\nContent-Transfer-Encoding: quoted-printable\n\n" + body.replace(b"\nnew file", b"\n=6Eew file")


def test_a_symlink_patch_is_refused_before_and_after_git_am(repo: Path) -> None:
    mail = _patch_of(repo, _add_symlink(repo))
    with pytest.raises(UserError, match=r"^evil.patch:\d+: mode 120000 is a symlink; symlinks are not accepted$"):
        check_patch("evil.patch", mail)
    applied = _am_unchecked(repo, mail)
    with pytest.raises(UserError, match=r"^after applying: link is a symlink \(mode 120000\); symlinks are not"):
        check_applied(applied)


@pytest.mark.parametrize("mode", ["120000 ", "0120000", "120644", " 120000"])
def test_odd_spellings_of_the_symlink_mode_are_real_and_refused(repo: Path, mode: str) -> None:
    mail = _patch_of(repo, _add_symlink(repo)).replace(b"new file mode 120000\n", f"new file mode {mode}\n".encode())
    with pytest.raises(UserError, match=r"^evil.patch:\d+: mode .* is not a regular file mode"):
        check_patch("evil.patch", mail)
    applied = _am_unchecked(repo, mail)
    assert (repo / "link").is_symlink()  # git reads the mode as octal and keeps the symlink bits
    with pytest.raises(UserError, match="link is a symlink"):
        check_applied(applied)


@pytest.mark.parametrize(("encode", "encoding"), [(_base64, "base64"), (_quoted_printable, "quoted-printable")])
def test_an_encoded_mail_cannot_hide_a_symlink(repo: Path, encode: Callable[[bytes], bytes], encoding: str) -> None:
    mail = encode(_patch_of(repo, _add_symlink(repo)))
    assert b"new file mode" not in mail  # what a check of the raw bytes sees
    applied = _am_unchecked(repo, mail)
    assert (repo / "link").is_symlink()  # the attack is real: git mailinfo decodes what the raw bytes hide
    with pytest.raises(UserError, match=rf"^evil.patch \(mail 1, {encoding} body\):\d+: mode 120000 is a symlink"):
        check_patch("evil.patch", mail)
    with pytest.raises(UserError, match="link is a symlink"):
        check_applied(applied)


def test_a_binary_file_is_refused_before_and_after_git_am(repo: Path) -> None:
    mail = _patch_of(repo, lambda: (repo / "blob.bin").write_bytes(bytes(range(256))))
    with pytest.raises(UserError, match=r"^evil.patch:\d+: binary patches are not accepted$"):
        check_patch("evil.patch", mail)
    with pytest.raises(UserError, match=r"^after applying: blob.bin is a binary file; binary files are not accepted"):
        check_applied(_am_unchecked(repo, mail))


def test_a_submodule_gitlink_is_refused_before_and_after_git_am(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD").decode().strip()

    def add_gitlink() -> None:
        _git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},sub")
        (repo / "sub").mkdir()  # as an uninitialised submodule looks, so `git add -A` keeps the entry

    mail = _patch_of(repo, add_gitlink)
    assert b"new file mode 160000" in mail and b"Subproject commit" in mail
    with pytest.raises(UserError, match=r"^evil.patch:\d+: mode 160000 is a submodule link \(gitlink\)"):
        check_patch("evil.patch", mail)
    applied = _am_unchecked(repo, mail)
    assert _git(repo, "ls-tree", "HEAD", "sub").decode() == f"160000 commit {head}\tsub\n"  # git am made it
    with pytest.raises(UserError, match=r"^after applying: sub is a submodule link \(gitlink\) \(mode 160000\)"):
        check_applied(applied)


@pytest.mark.parametrize("format_args", [(), ("--attach",), ("--inline",)])
def test_ordinary_mails_pass_both_checks(repo: Path, format_args: tuple[str, ...]) -> None:
    mail = _patch_of(repo, lambda: (repo / "src.c").write_text("int main(void) { return 0; }\n"), *format_args)
    check_patch("ok.patch", mail)
    check_applied(_am_unchecked(repo, mail))


def test_apply_patches_checks_what_git_wrote_when_check_patch_is_missed(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mail = _base64(_patch_of(repo, _add_symlink(repo)))
    monkeypatch.setattr(patchapply, "check_patch", lambda name, data: None)
    with pytest.raises(UserError) as info:
        apply_patches(repo, [("evil.patch", mail)], "main")
    assert str(info.value) == (
        'patch "[PATCH] innocent change": '
        "evil.patch: after applying: link is a symlink (mode 120000); symlinks are not accepted"
    )


def test_a_gitattributes_file_in_the_patch_cannot_pass_a_binary_off_as_text(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def change() -> None:
        (repo / ".gitattributes").write_text("* diff\n")
        (repo / "blob.bin").write_bytes(b"\0\1\2" * 100)

    mail = _patch_of(repo, change)
    base = _git(repo, "rev-parse", "HEAD").decode().strip()
    monkeypatch.setattr(patchapply, "check_patch", lambda name, data: None)
    innocent = r'^patch "\[PATCH\] innocent change": '
    with pytest.raises(UserError, match=innocent + r"evil.patch: after applying: blob.bin is a binary file"):
        apply_patches(repo, [("evil.patch", mail)], "main")
    _git(repo, "am", "-q", "--no-3way", data=mail)
    numstat = _git(repo, "diff", "--numstat", base, "HEAD").decode()
    assert "-\t-\tblob.bin" not in numstat  # in a worktree the attribute does hide it: the attack is real


def test_apply_patches_names_the_patch_of_a_series_that_did_it(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fine = _patch_of(repo, lambda: (repo / "README").write_text("hello, world\n"))
    _git(repo, "am", "-q", data=fine)
    evil = _base64(_patch_of(repo, _add_symlink(repo)))
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    monkeypatch.setattr(patchapply, "check_patch", lambda name, data: None)
    with pytest.raises(UserError, match=r'^patch "\[PATCH\] innocent change": 2-evil.patch: after applying: link'):
        apply_patches(repo, [("1-fine.patch", fine), ("2-evil.patch", evil)], "main")


def _series_mbox(repo: Path, *changes: tuple[str, Callable[[], object]]) -> tuple[bytes, list[str]]:
    """One `git format-patch --thread` mbox of a commit per (subject, change), which are then undone,
    and the Message-Ids git gave its mails."""
    base = _git(repo, "rev-parse", "HEAD").decode().strip()
    for subject, change in changes:
        change()
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", subject)
    mbox = _git(repo, "format-patch", "--thread", "--stdout", f"{base}..HEAD")
    _git(repo, "reset", "-q", "--hard", base)
    headers = [line for line in mbox.decode().split("\n") if line.lower().startswith("message-id: ")]
    message_ids = [line.split(" ", 1)[1] for line in headers]
    assert len(message_ids) == len(changes)
    return mbox, message_ids


def test_a_whole_mbox_names_the_mail_check_patch_refuses(repo: Path) -> None:
    mbox, ids = _series_mbox(repo, ("readme: greet the world", lambda: (repo / "README").write_text("world\n")),
                             ("add a blob", lambda: (repo / "blob.bin").write_bytes(bytes(range(256)))),
                             ("readme: again", lambda: (repo / "README").write_text("again\n")))  # fmt: skip
    with pytest.raises(UserError) as info:
        apply_patches(repo, [("series.mbox", mbox)], "main")
    assert re.match(rf'^patch "\[PATCH 2/3\] add a blob" {re.escape(ids[1])}: series.mbox:\d+: binary patches are not '
                    r"accepted$", str(info.value)), str(info.value)  # fmt: skip


def test_each_commit_of_a_whole_mbox_is_checked_and_the_culprit_named(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink that the next mail removes is not in the net diff: only a check per commit sees it."""
    mbox, ids = _series_mbox(
        repo,
        ("readme: greet the world", lambda: (repo / "README").write_text("world\n")),
        ("add a link", _add_symlink(repo)),
        ("drop the link", lambda: (repo / "link").unlink()),
    )
    monkeypatch.setattr(patchapply, "check_patch", lambda name, data: None)  # as if check_patch had missed it
    with pytest.raises(UserError) as info:
        apply_patches(repo, [("series.mbox", mbox)], "main")
    assert str(info.value) == (f'patch "[PATCH 2/3] add a link" {ids[1]}: series.mbox: after applying: '
                               "link is a symlink (mode 120000); symlinks are not accepted")  # fmt: skip


def test_a_mail_that_does_not_apply_is_named_in_a_whole_mbox(repo: Path) -> None:
    first, _ = _series_mbox(repo, ("readme: world", lambda: (repo / "README").write_text("world\n")))
    second, ids = _series_mbox(repo, ("readme: bye", lambda: (repo / "README").write_text("bye\n")))
    with pytest.raises(UserError) as info:
        apply_patches(repo, [("series.mbox", first + second)], "main")
    assert str(info.value).startswith(f'patch "[PATCH] readme: bye" {ids[0]}: series.mbox does not apply on main:')
