"""Mirror cache, per-job worktrees, applying patches with `git am`, reading the plan."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workers.errors import InfraError, UserError
from workers.patchcheck import check_applied, check_patch, split_mails
from workers.patchname import MAX_SUBJECT, patch_label, shown

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "labgate",
    "GIT_AUTHOR_EMAIL": "labgate@localhost",
    "GIT_COMMITTER_NAME": "labgate",
    "GIT_COMMITTER_EMAIL": "labgate@localhost",
    "GIT_TERMINAL_PROMPT": "0",
    # A URL with credentials in it is refused by git itself (they would land in .git/config and
    # in every error message), and no credential helper may store what askpass hands over.
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "transfer.credentialsInUrl",
    "GIT_CONFIG_VALUE_0": "die",
    "GIT_CONFIG_KEY_1": "credential.helper",
    "GIT_CONFIG_VALUE_1": "",
}
ASKPASS = Path(__file__).resolve().parent / "git-askpass.sh"


def credential_env(credential_file: Path | None) -> dict[str, str]:
    """What git needs to read a private tree with the job's credential file (none: a public tree)."""
    if credential_file is None:
        return {}
    return {"GIT_ASKPASS": str(ASKPASS), "LABGATE_GIT_CREDENTIAL": str(credential_file)}


@dataclass(frozen=True)
class CheckoutOutcome:
    base_sha: str
    head_sha: str
    tested_sha: str  # what builds check out: the head, or the head merged onto the base
    plan_text: str | None  # None: the tree has no plan at that path
    changed_files: tuple[str, ...]
    changed_lines: dict[str, list[tuple[int, int]]]  # file -> [first, last] line ranges the change touched
    # The head descends from the base: a branch that moved forward. False: it was rewritten (a forced push).
    base_is_ancestor: bool = True


def git(args: Sequence[str], cwd: Path, *, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run git; an unexpected failure is our infrastructure's, with git's own words."""
    process = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_IDENTITY, **(env or {})},
    )
    if check and process.returncode != 0:
        raise InfraError(f"git {' '.join(args)} failed: {process.stderr.strip()}")
    return process


def mirror_path(data_dir: Path, tree_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", tree_name)
    return data_dir / "mirrors" / f"{safe}.git"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise git operations on one mirror across worker processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_mirror(mirror: Path, url: str, credential_file: Path | None = None) -> None:
    """Clone the tree as a bare mirror, or fetch what is new."""
    env = credential_env(credential_file)
    if not (mirror / "HEAD").exists():
        shutil.rmtree(mirror, ignore_errors=True)
        process = git(["clone", "--mirror", "--quiet", url, str(mirror)], mirror.parent, check=False, env=env)
        if process.returncode != 0:
            raise UserError(f"cannot clone {url}: {process.stderr.strip()}")
        # An automatic gc inside a job's `git worktree add` or `git am` stalls it for
        # minutes on a kernel tree; packing the mirror is maintenance, not job work.
        git(["config", "gc.auto", "0"], mirror)
        return
    # Forges publish change heads under refs/pull/* (GitHub) or refs/merge-requests/* (GitLab).
    git(["fetch", "--prune", "--quiet", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
         "+refs/pull/*/head:refs/pull/*/head", "+refs/merge-requests/*/head:refs/merge-requests/*/head"],
        mirror, env=env)  # fmt: skip


def resolve(mirror: Path, ref: str, what: str) -> str:
    if what == "base" and not ref.startswith("refs/"):
        # A base named like a branch is that branch: git's own order would take a tag of the same name
        # first (refs/tags/main before refs/heads/main), one anybody who may push tags could make.
        branch = git(["rev-parse", "--verify", "--quiet", f"refs/heads/{ref}^{{commit}}"], mirror, check=False)
        if branch.returncode == 0:
            return branch.stdout.strip()
    process = git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], mirror, check=False)
    if process.returncode != 0:
        # "could not determine base": the words Patchwork's readers are told (a series' base-commit: trailer).
        prefix = "could not determine base: " if what == "base" else ""
        raise UserError(f"{prefix}{what} {ref!r} is not a commit in the tree")
    return process.stdout.strip()


def check_base_on_branches(mirror: Path, base_ref: str, base_sha: str, branches: Sequence[str]) -> str:
    """A base named by a commit must be on one of the tree's branches (the first such is returned). The
    mirror also holds forks' refs (refs/pull/*): a commit only a fork has would test the series on code
    nobody merged."""
    for branch in branches:
        on_it = git(["merge-base", "--is-ancestor", base_sha, f"refs/heads/{branch}"], mirror, check=False)
        if on_it.returncode == 0:
            return branch
    raise UserError(f"could not determine base: {base_ref} is not on any of the tree's branches "
                    f"({', '.join(branches)})")  # fmt: skip


def add_worktree(mirror: Path, dest: Path, sha: str) -> None:
    remove_worktree(mirror, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    git(["worktree", "add", "--detach", "--quiet", str(dest), sha], mirror)


def remove_worktree(mirror: Path, dest: Path) -> None:
    """Remove a worktree, also one a killed worker left half made."""
    if dest.exists():
        git(["worktree", "remove", "--force", str(dest)], mirror, check=False)
        shutil.rmtree(dest, ignore_errors=True)
    git(["worktree", "prune"], mirror, check=False)


def apply_patches(worktree: Path, patches: Sequence[tuple[str, bytes]], base_label: str) -> None:
    """`git am` each patch after check_patch, then check each commit git made (the last defence).

    A refusal starts with the patch's mail (workers/patchname.py: Subject and Message-Id), then
    where, then the rule, so one line says it where a Patchwork check or a mail shows it.
    """
    # In the bare common dir git reads no .gitattributes from the tree, so a patch cannot mark
    # its own binary file as text ("* diff") to hide it from --numstat.
    common_dir = Path(git(["rev-parse", "--path-format=absolute", "--git-common-dir"], worktree).stdout.strip())
    for name, data in patches:
        mails = split_mails(data)  # one for a Patchwork patch; `labgate try` may hand over a whole mbox
        try:
            check_patch(name, data)
        except UserError as error:
            raise UserError(_named(_refused_mail(name, mails), str(error))) from error
        before = git(["rev-parse", "HEAD"], worktree).stdout.strip()
        process = subprocess.run(
            ["git", "am", "--quiet", "--no-3way"],
            cwd=worktree,
            input=data,
            capture_output=True,
            env={**os.environ, **GIT_IDENTITY},
        )
        commits = _commits_since(worktree, before)
        if process.returncode != 0:
            message = (process.stderr or process.stdout).decode(errors="replace").strip()
            git(["am", "--abort"], worktree, check=False)
            # git am stops at the mail it cannot apply, after one commit for each mail before it.
            label = patch_label(mails[len(commits)]) if len(commits) < len(mails) else None
            raise UserError(_named(label, f"{name} does not apply on {base_label}:\n{message}"))
        # Commit by commit, so the message names the culprit and a symlink that a later commit
        # removes is still refused (the intermediate commits stay in the kept history).
        for index, commit in enumerate(commits):
            # git am makes one commit per mail, in order: when the counts agree, commit i is mail i;
            # otherwise git split the input another way, and the commit is named as git made it.
            label = patch_label(mails[index]) if len(commits) == len(mails) else _commit_label(worktree, commit)
            diff = ["diff", "--raw", "--numstat", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
                    "--ignore-submodules=none", "--no-color", f"{commit}^", commit]  # fmt: skip
            try:
                check_applied(git(["-c", "core.bare=true", *diff], common_dir).stdout)
            except UnicodeDecodeError as error:  # git() reads text as UTF-8; a patch may create other byte names
                raise UserError(_named(label, f"{name}: after applying: a file name is not UTF-8")) from error
            except UserError as error:
                raise UserError(_named(label, f"{name}: {error}")) from error


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


def _commits_since(worktree: Path, before: str) -> list[str]:
    return git(["rev-list", "--reverse", f"{before}..HEAD"], worktree).stdout.split()


def _commit_label(worktree: Path, commit: str) -> str:
    subject = git(["log", "-1", "--format=%s", commit], worktree).stdout
    return f'commit {commit[:12]} "{shown(subject, MAX_SUBJECT)}"'


def merge_onto_base(mirror: Path, worktree: Path, base_sha: str, head_sha: str, base_label: str) -> str:
    """The speculative merge a maintainer would make; a conflict names its files."""
    add_worktree(mirror, worktree, base_sha)
    try:
        merged = git(["merge", "--no-ff", "--no-edit", "-m", f"labgate: merge {head_sha[:12]} onto {base_label}",
                      head_sha], worktree, check=False)  # fmt: skip
        if merged.returncode != 0:
            conflicted = git(["diff", "--name-only", "--diff-filter=U"], worktree, check=False).stdout.split()
            files = ", ".join(conflicted) or merged.stdout.strip() or merged.stderr.strip()
            raise UserError(f"merge conflict with {base_label}: {files}")
        return git(["rev-parse", "HEAD"], worktree).stdout.strip()
    finally:
        git(["merge", "--abort"], worktree, check=False)
        remove_worktree(mirror, worktree)


NAME_MAX_BYTES = 255  # one path component, as every Linux filesystem limits it
PATH_MAX_BYTES = 4095


def check_tree_names(mirror: Path, sha: str) -> None:
    """Refuse a tree the build could not be given: a name longer than the filesystem takes,
    or one that is not UTF-8 (nothing downstream could name it in a report)."""
    listing = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", sha], cwd=mirror, capture_output=True,
                             env={**os.environ, **GIT_IDENTITY}, check=False)  # fmt: skip
    if listing.returncode != 0:
        raise InfraError(f"git ls-tree {sha[:12]} failed: {listing.stderr.decode(errors='replace').strip()}")
    for raw in listing.stdout.split(b"\0"):
        if not raw:
            continue
        shown = raw.decode(errors="replace")[:120]
        if len(raw) > PATH_MAX_BYTES or any(len(part) > NAME_MAX_BYTES for part in raw.split(b"/")):
            raise UserError(f"the tree holds a path too long for a filesystem: {shown}...")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"the tree holds a file name that is not UTF-8: {shown}") from exc


def read_plan(mirror: Path, sha: str, plan_path: str) -> str | None:
    process = git(["show", f"{sha}:{plan_path}"], mirror, check=False)
    return process.stdout if process.returncode == 0 else None


def prepare_checkout(
    mirror: Path,
    url: str,
    *,
    base_ref: str,
    ref: str | None,
    patches: Sequence[tuple[str, bytes]],
    plan_path: str,
    plan_from: str,
    worktree: Path,
    keep_ref: str,
    merge: bool = False,
    credential_file: Path | None = None,
    base_branches: Sequence[str] = (),
) -> CheckoutOutcome:
    """Make the revision's head commit in the mirror (kept under keep_ref) and read its plan.
    With `base_branches`, base_ref is a commit that must be on one of them."""
    with locked(mirror):
        update_mirror(mirror, url, credential_file)
        base_sha = resolve(mirror, base_ref, "base")
        if base_branches:
            check_base_on_branches(mirror, base_ref, base_sha, base_branches)
        descends = True
        if ref is not None:
            head_sha = resolve(mirror, ref, "ref")
            tested_sha = head_sha
            descends = git(["merge-base", "--is-ancestor", base_sha, head_sha], mirror, check=False).returncode == 0
            if merge and not descends:
                tested_sha = merge_onto_base(mirror, worktree, base_sha, head_sha, f"{base_ref}@{base_sha[:12]}")
        else:
            add_worktree(mirror, worktree, base_sha)
            try:
                apply_patches(worktree, patches, f"{base_ref}@{base_sha[:12]}")
                head_sha = git(["rev-parse", "HEAD"], worktree).stdout.strip()
            finally:
                remove_worktree(mirror, worktree)
            tested_sha = head_sha
        check_tree_names(mirror, tested_sha)
        # Keeps the commit alive for the build jobs after the worktree is gone.
        git(["update-ref", keep_ref, tested_sha], mirror)
        plan_text = read_plan(mirror, head_sha if plan_from == "head" else base_sha, plan_path)
        diff = git(["diff", "--name-only", f"{base_sha}...{head_sha}"], mirror)
        hunks = git(["diff", "--unified=0", "--no-color", f"{base_sha}...{head_sha}"], mirror)
    return CheckoutOutcome(
        base_sha, head_sha, tested_sha, plan_text, tuple(diff.stdout.split()), parse_changed_lines(hunks.stdout),
        descends,
    )


_FILE_HEADER = re.compile(r"^\+\+\+ b/(.+)$")
_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


def parse_changed_lines(diff: str) -> dict[str, list[tuple[int, int]]]:
    """Line ranges of the new side of a `git diff -U0`: where the change wrote."""
    changed: dict[str, list[tuple[int, int]]] = {}
    current: str | None = None
    for line in diff.splitlines():
        header = _FILE_HEADER.match(line)
        if header:
            current = header.group(1)
            continue
        hunk = _HUNK_HEADER.match(line)
        if hunk and current is not None:
            start, count = int(hunk.group(1)), int(hunk.group(2) or 1)
            if count:
                changed.setdefault(current, []).append((start, start + count - 1))
    return changed


def make_bundle(mirror: Path, keep_ref: str, base_sha: str, dest: Path) -> bool:
    """The commits of keep_ref that the base lacks, as a git bundle at dest (for a build host with its own
    mirror, which has the base from the tree). False when there are none (the tested commit is the
    base's own history): the tree's mirror has all there is."""
    with locked(mirror):
        if not git(["rev-list", "--max-count=1", keep_ref, f"^{base_sha}"], mirror).stdout.strip():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        git(["bundle", "create", "--quiet", str(dest), keep_ref, f"^{base_sha}"], mirror)
    return True


def has_commit(mirror: Path, sha: str) -> bool:
    if not (mirror / "HEAD").exists():
        return False
    return git(["cat-file", "-e", f"{sha}^{{commit}}"], mirror, check=False).returncode == 0


def fetch_tested_commit(mirror: Path, url: str, sha: str, bundle: Path | None) -> None:
    """Make the tested commit present in this host's own mirror: fetched from the tree, then from the
    checkout's bundle. Git checks every object it takes from the bundle (transfer.fsckObjects) and the
    commit is looked up by its id afterwards: a bundle that lacks it fails the job as ours."""
    with locked(mirror):
        if has_commit(mirror, sha):
            return
        update_mirror(mirror, url)
        if has_commit(mirror, sha):
            return
        if bundle is None:
            raise InfraError(f"the tested commit {sha[:12]} is neither in the tree nor in a bundle")
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
            raise InfraError(f"the tested commit {sha[:40]!r} is no commit id")
        git(["bundle", "verify", "--quiet", str(bundle)], mirror)
        # The bundle's refs go under the tested commit's own name: whatever refs a bundle names, it cannot
        # move the mirror's (another pipeline's keep ref, a branch) on a host that also checks out.
        git(["-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-tags", str(bundle),
             f"+refs/labgate/*:refs/labgate/bundles/{sha}/*"], mirror)  # fmt: skip
        if not has_commit(mirror, sha):
            raise InfraError(f"the checkout's bundle does not hold the tested commit {sha[:12]}")
