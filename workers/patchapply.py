"""Patches made into commits without a worktree: what `git am --no-3way` does, in a temporary index.

A worktree of a kernel tree costs tens of seconds to write and remove for a one-line patch. git am's
own steps need none: `git mailsplit` cuts the input into mails, `git mailinfo` reads each mail's
author, date, message and diff, `git apply --cached` applies the diff to an index that holds the
parent commit's tree, and `write-tree` plus `commit-tree` make the commit. The same git code reads
the mails and the same checks run around it: check_patch on the input before, check_applied on
each commit after.

One difference, on purpose: git am applies in a worktree, where a tree's .gitattributes (eol, text)
convert files on their way in and out. Here the preimage is the blob itself, so no attribute a tree
or an earlier patch of the series sets changes what a later patch does.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.errors import InfraError, UserError
from workers.patchcheck import check_applied, check_patch, split_mails
from workers.patchname import patch_label

# The diff check_applied reads: no renames (each path is checked as a path), nothing a config or an
# attribute could plug in between git and what it stored.
APPLIED_DIFF = ("diff", "--raw", "--numstat", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
                "--ignore-submodules=none", "--no-color")  # fmt: skip
# Who `git am` skips without a commit: the folder-information mail pine keeps at the top of an mbox.
PINE_FOLDER_DATA = b"Mail System Internal Data"


Refusal = Callable[[str], UserError]  # the error to raise, given git's own words


@dataclass(frozen=True)
class Mail:
    """One mail as git mailinfo read it."""

    author: bytes
    email: bytes
    date: bytes
    message: bytes  # as git am commits it: subject, blank line, body, cleaned like `git stripspace`
    diff: Path


def apply_patches(repo: Path, base_sha: str, patches: Sequence[tuple[str, bytes]], base_label: str,
                  scratch: Path, git_env: dict[str, str]) -> str:  # fmt: skip
    """Commit each mail of each patch onto base_sha, as `git am --no-3way` would; return the last commit.

    `repo` is any git directory (the bare mirror); only objects are written to it, no ref moves.
    `scratch` is an empty directory of ours for the temporary index and the split mails.
    `git_env` holds labgate's committer identity. A refusal starts with the patch's mail
    (workers/patchname.py: Subject and Message-Id), then where, then the rule.
    """
    # In the bare common dir git reads no .gitattributes from the tree, so a patch cannot mark
    # its own binary file as text ("* diff") to hide it from --numstat.
    common_dir = Path(_git(repo, git_env, "rev-parse", "--path-format=absolute", "--git-common-dir").strip().decode())
    index_env = {**git_env, "GIT_INDEX_FILE": str(scratch / "index")}
    _git(repo, index_env, "read-tree", base_sha)
    head = base_sha
    for number, (name, data) in enumerate(patches, start=1):
        mails = split_mails(data)  # one for a Patchwork patch; `labgate try` may hand over a whole mbox
        try:
            check_patch(name, data)
        except UserError as error:
            raise UserError(_named(_refused_mail(name, mails), str(error))) from error

        def refusal(message: str, label: str | None = None, name: str = name) -> UserError:
            return UserError(_named(label, f"{name} does not apply on {base_label}:\n{message}"))

        for mail_file in _git_mails(repo, data, scratch / f"mails-{number}", git_env, refusal):
            label = patch_label(mail_file.read_bytes())
            commit = _commit_mail(repo, index_env, head, mail_file, functools.partial(refusal, label=label))
            if commit is None:
                continue
            # Commit by commit, so the message names the culprit and a symlink that a later commit
            # removes is still refused (the intermediate commits stay in the kept history).
            try:
                check_applied(_git(common_dir, git_env, "-c", "core.bare=true", *APPLIED_DIFF, head, commit).decode())
            except UnicodeDecodeError as error:  # a patch may create names in other bytes
                raise UserError(_named(label, f"{name}: after applying: a file name is not UTF-8")) from error
            except UserError as error:
                raise UserError(_named(label, f"{name}: {error}")) from error
            head = commit
    return head


def _git_mails(repo: Path, data: bytes, directory: Path, env: dict[str, str], refusal: Refusal) -> list[Path]:
    """The mails `git am` would read from `data`, in order (git mailsplit -b: one bare mail is a mail too)."""
    directory.mkdir()
    split = _run(repo, env, "mailsplit", "-b", f"-o{directory}", stdin=data)
    if split.returncode != 0:
        raise refusal(split.stderr.decode(errors="replace").strip())
    return sorted(directory.iterdir(), key=lambda path: int(path.name))  # 10000 comes after 9999


def _commit_mail(repo: Path, env: dict[str, str], parent: str, mail_file: Path, refusal: Refusal) -> str | None:
    """The commit of one mail on `parent` (the index holds parent's tree and is moved on), or None
    for a mail git am skips."""
    mail = _mail_info(repo, mail_file, refusal)
    if mail is None:
        return None
    applied = _run(repo, env, "apply", "--cached", str(mail.diff))
    if applied.returncode != 0:
        raise refusal((applied.stderr or applied.stdout).decode(errors="replace").strip())
    tree = _git(repo, env, "write-tree").strip().decode()
    # The author and date are the mail's, as git am takes them; the committer is labgate's (git_env).
    author = {"GIT_AUTHOR_NAME": mail.author, "GIT_AUTHOR_EMAIL": mail.email, "GIT_AUTHOR_DATE": mail.date}
    made = _run(repo, {**env, **{k: os.fsdecode(v) for k, v in author.items()}}, "commit-tree", tree, "-p", parent,
                stdin=mail.message)  # fmt: skip
    if made.returncode != 0:  # git am dies the same way: an ident git refuses, a date it cannot read
        raise refusal(made.stderr.decode(errors="replace").strip())
    return made.stdout.strip().decode()


def _mail_info(repo: Path, mail_file: Path, refusal: Refusal) -> Mail | None:
    """git mailinfo's reading of one mail (its defaults are git am's: -u, in-body headers, config's
    scissors), turned into what git am commits; None for the mail git am skips."""
    message_file, diff_file = mail_file.with_suffix(".msg"), mail_file.with_suffix(".diff")
    with mail_file.open("rb") as mail:
        info = subprocess.run(["git", "mailinfo", str(message_file), str(diff_file)], stdin=mail,
                              capture_output=True, cwd=repo, env=_environ({}), check=False)  # fmt: skip
    if info.returncode != 0:
        raise refusal((info.stderr or b"git mailinfo cannot read this mail").decode(errors="replace").strip())
    fields: dict[bytes, bytes] = {b"Subject": b"", b"Author": b"", b"Email": b"", b"Date": b""}
    for line in info.stdout.split(b"\n"):
        key, _, value = line.partition(b": ")
        if key in fields:  # git am appends a second Subject line to the first, after a newline
            fields[key] = fields[key] + b"\n" + value if key == b"Subject" and fields[key] else value
    if fields[b"Author"] == PINE_FOLDER_DATA:
        return None
    if diff_file.stat().st_size == 0:
        raise refusal("Patch is empty.")
    message = _run(repo, {}, "stripspace",
                   stdin=fields[b"Subject"] + b"\n\n" + message_file.read_bytes())  # fmt: skip
    # A C string ends at NUL: what git am hands to the ident code from a value that holds one.
    author, email, date = (fields[key].split(b"\0")[0] for key in (b"Author", b"Email", b"Date"))
    return Mail(author, email, date, message.stdout, diff_file)


def _named(label: str | None, refusal: str) -> str:
    return f"{label}: {refusal}" if label else refusal


def _refused_mail(name: str, mails: Sequence[bytes]) -> str | None:
    """The label of the mail check_patch refuses in a file of several (the first one refused alone)."""
    if len(mails) == 1:
        return patch_label(mails[0])
    for mail in mails:
        try:
            check_patch(name, mail)
        except UserError:
            return patch_label(mail)
    return None  # only the whole file breaks a rule: the file name is all there is to say


def _environ(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env}


def _run(cwd: Path, env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, env=_environ(env), check=False)


def _git(cwd: Path, env: dict[str, str], *args: str) -> bytes:
    """git's output; a failure here is ours (the mirror, the disk), with git's own words."""
    process = _run(cwd, env, *args)
    if process.returncode != 0:
        raise InfraError(f"git {' '.join(args)} failed: {process.stderr.decode(errors='replace').strip()}")
    return process.stdout
