"""Mirror cache (locked, fetches coalesced), the tested commit made without a worktree, reading the plan."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from workers.errors import InfraError, UserError
from workers.patchapply import apply_patches
from workers.source import tree_names_reason

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
    tree_has: dict[str, bool] = field(default_factory=dict)  # static tools at the base, by BASE_TOOLS name
    maintainers: bytes | None = None  # the base's MAINTAINERS (None: none, or past MAX_MAINTAINERS_BYTES)
    # Asked for by a bisection (list_commits): base..head's first-parent commits, oldest first, with their
    # authors; None when not asked. Past MAX_LISTED_COMMITS only the newest are listed (the control side
    # then finds the list does not reach the base and refuses it).
    commits: tuple[tuple[str, str], ...] | None = None


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


@dataclass(frozen=True)
class _Fetches:
    """A mirror's fetch count, kept beside it: `started` fetches began (each under the lock), the one
    numbered `done` is the last that succeeded, from the tree whose URL hashes to `url`."""

    started: int = 0
    done: int = 0
    url: str = ""


def _fetches_file(mirror: Path) -> Path:
    return Path(f"{mirror}.fetches")


def _read_fetches(mirror: Path) -> _Fetches:
    try:
        return _Fetches(**json.loads(_fetches_file(mirror).read_text()))
    except (OSError, ValueError, TypeError):  # none yet, or torn by a crash: every waiter fetches
        return _Fetches()


def _write_fetches(mirror: Path, fetches: _Fetches) -> None:
    staged = Path(f"{_fetches_file(mirror)}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(dataclasses.asdict(fetches)))
    os.replace(staged, _fetches_file(mirror))  # a reader without the lock sees the old count or the new


def fetch_ticket(mirror: Path) -> int:
    """Taken before waiting for the mirror's lock: any fetch numbered above it began after the
    caller started waiting, so it saw the tree at least as new as the caller would."""
    return _read_fetches(mirror).started


@contextmanager
def fresh_mirror(mirror: Path, url: str, credential_file: Path | None = None) -> Iterator[None]:
    """The mirror, locked and up to date: fetched unless a fetch that began while we waited did it for us
    (ten jobs on one tree at once make one fetch, not ten in a row)."""
    ticket = fetch_ticket(mirror)
    with locked(mirror):
        update_mirror(mirror, url, credential_file, ticket=ticket)
        yield


def update_mirror(mirror: Path, url: str, credential_file: Path | None = None, *, ticket: int | None = None) -> None:
    """Clone the tree as a bare mirror, or fetch what is new. Called under the mirror's lock; with a
    `ticket` (fetch_ticket, taken before the lock), a fetch that began after it serves instead."""
    env = credential_env(credential_file)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    url_key = hashlib.sha256(url.encode()).hexdigest()
    fetches = _read_fetches(mirror)
    cloned = (mirror / "HEAD").exists()
    if cloned and ticket is not None and fetches.done > ticket and fetches.url == url_key:
        return
    # Counted before git starts: a waiter that read the count before this write is served by this fetch.
    number = fetches.started + 1
    _write_fetches(mirror, dataclasses.replace(fetches, started=number))
    if not cloned:
        _clone(mirror, url, env)
    else:
        # Forges publish change heads under refs/pull/* (GitHub) or refs/merge-requests/* (GitLab).
        git(["fetch", "--prune", "--quiet", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
             "+refs/pull/*/head:refs/pull/*/head", "+refs/merge-requests/*/head:refs/merge-requests/*/head"],
            mirror, env=env)  # fmt: skip
    _write_fetches(mirror, _Fetches(started=number, done=number, url=url_key))


def _clone(mirror: Path, url: str, env: dict[str, str]) -> None:
    shutil.rmtree(mirror, ignore_errors=True)
    process = git(["clone", "--mirror", "--quiet", url, str(mirror)], mirror.parent, check=False, env=env)
    if process.returncode != 0:
        raise UserError(f"cannot clone {url}: {process.stderr.strip()}")
    # An automatic gc inside a job's git commands stalls it for minutes on a kernel
    # tree; packing the mirror is maintenance, not job work.
    git(["config", "gc.auto", "0"], mirror)


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


def merge_onto_base(mirror: Path, base_sha: str, head_sha: str, base_label: str) -> str:
    """The speculative merge a maintainer would make (`git merge --no-ff`), made in the object store by
    `git merge-tree` without a worktree; a conflict names its files."""
    if git(["merge-base", "--is-ancestor", head_sha, base_sha], mirror, check=False).returncode == 0:
        return base_sha  # already in the base: `git merge` makes no commit ("Already up to date")
    merged = git(["merge-tree", "--write-tree", "--name-only", "-z", base_sha, head_sha], mirror, check=False)
    # Exit 1 is a conflict: the tree, then the conflicted names, then an empty field; other codes are errors.
    fields = merged.stdout.split("\0")
    if merged.returncode == 1:
        conflicted = sorted(set(name for name in fields[1 : fields.index("", 1)] if name))
        raise UserError(f"merge conflict with {base_label}: {', '.join(conflicted) or merged.stderr.strip()}")
    if merged.returncode != 0:  # e.g. unrelated histories: git's own words, as `git merge` gave them
        raise UserError(f"merge conflict with {base_label}: {merged.stderr.strip()}")
    message = f"labgate: merge {head_sha[:12]} onto {base_label}"
    return git(["commit-tree", fields[0], "-p", base_sha, "-p", head_sha, "-m", message], mirror).stdout.strip()


NAME_MAX_BYTES = 255  # one path component, as every Linux filesystem limits it
PATH_MAX_BYTES = 4095


def check_tree_names(mirror: Path, sha: str) -> None:
    """Refuse a tree the build could not be given: a name longer than the filesystem takes, one that is
    not UTF-8 (nothing downstream could name it in a report), a name listed twice or a file where a
    directory is (git's checkout and diff would each take another entry: workers/source.py)."""
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
    reason = tree_names_reason([raw.decode() for raw in listing.stdout.split(b"\0") if raw])
    if reason:
        raise UserError(f"the tree {sha[:12]} {reason}")


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
    list_commits: bool = False,
    revert_sha: str | None = None,
) -> CheckoutOutcome:
    """Make the revision's head commit in the mirror (kept under keep_ref) and read its plan.
    With `base_branches`, base_ref is a commit that must be on one of them. `worktree` is a scratch
    directory for the temporary index patches are applied in; it is gone when this returns."""
    with fresh_mirror(mirror, url, credential_file):
        base_sha = resolve(mirror, base_ref, "base")
        if base_branches:
            check_base_on_branches(mirror, base_ref, base_sha, base_branches)
        descends = True
        if ref is not None:
            head_sha = resolve(mirror, ref, "ref")
            tested_sha = head_sha
            descends = git(["merge-base", "--is-ancestor", base_sha, head_sha], mirror, check=False).returncode == 0
            if merge and not descends:
                tested_sha = merge_onto_base(mirror, base_sha, head_sha, f"{base_ref}@{base_sha[:12]}")
            if revert_sha is not None:
                tested_sha = revert_on(mirror, head_sha, revert_sha, worktree)
        else:
            shutil.rmtree(worktree, ignore_errors=True)  # a killed worker's leftovers
            worktree.mkdir(parents=True)
            try:
                head_sha = apply_patches(mirror, base_sha, patches, f"{base_ref}@{base_sha[:12]}", worktree,
                                         GIT_IDENTITY)  # fmt: skip
            finally:
                shutil.rmtree(worktree, ignore_errors=True)
            tested_sha = head_sha
        check_tree_names(mirror, tested_sha)
        if head_sha != tested_sha:  # merged: git merge-tree keeps one entry of a name the head lists twice
            check_tree_names(mirror, head_sha)  # the static stage reads the head's own tree
        # Keeps the commit alive for the build jobs: nothing else refers to it.
        git(["update-ref", keep_ref, tested_sha], mirror)
        plan_text = read_plan(mirror, head_sha if plan_from == "head" else base_sha, plan_path)
        diff = git(["diff", "--name-only", f"{base_sha}...{head_sha}"], mirror)
        hunks = git(["diff", "--unified=0", "--no-color", f"{base_sha}...{head_sha}"], mirror)
        tree_has, maintainers = base_facts(mirror, base_sha)
        commits = first_parent_commits(mirror, base_sha, head_sha) if list_commits else None
    changed_lines = parse_changed_lines(hunks.stdout)
    return CheckoutOutcome(base_sha, head_sha, tested_sha, plan_text, tuple(diff.stdout.split()), changed_lines,
                           base_is_ancestor=descends, tree_has=tree_has, maintainers=maintainers,
                           commits=commits)  # fmt: skip


MAX_LISTED_COMMITS = 1024  # bot/core/bisect.py's cap
MAX_AUTHOR_CHARS = 200


def first_parent_commits(mirror: Path, base_sha: str, head_sha: str) -> tuple[tuple[str, str], ...]:
    """base..head along first parents (the branch as its maintainer moved it), oldest first, with each
    commit's author as "Name <mail>": the newest MAX_LISTED_COMMITS of them."""
    listed = git(["log", "--first-parent", f"--max-count={MAX_LISTED_COMMITS}", "--format=%H%x00%an <%ae>%x00",
                  f"{base_sha}..{head_sha}"], mirror).stdout  # fmt: skip
    fields = listed.split("\0")
    pairs = [(fields[i].strip(), fields[i + 1][:MAX_AUTHOR_CHARS]) for i in range(0, len(fields) - 1, 2)]
    return tuple(reversed(pairs))


def revert_on(mirror: Path, head_sha: str, revert_sha: str, scratch: Path) -> str:
    """`head` with `revert_sha` (a commit of its history) reverted, as `git revert` would make it
    when nothing conflicts: the commit's diff against its first parent, applied in reverse on a temporary
    index that holds head's tree (no worktree). One that does not apply is the tree's error (UserError)."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", revert_sha):
        raise UserError(f"the commit to revert {revert_sha[:80]!r} is no commit id")
    if git(["merge-base", "--is-ancestor", revert_sha, head_sha], mirror, check=False).returncode != 0:
        raise UserError(f"the commit to revert {revert_sha[:12]} is not in {head_sha[:12]}'s history")
    if git(["rev-parse", "--verify", "--quiet", f"{revert_sha}^1"], mirror, check=False).returncode != 0:
        raise UserError(f"the commit to revert {revert_sha[:12]} is the tree's first commit: it has no parent")
    shutil.rmtree(scratch, ignore_errors=True)  # a killed worker's leftovers
    scratch.mkdir(parents=True)
    try:
        env = {"GIT_INDEX_FILE": str(scratch / "index")}
        git(["read-tree", head_sha], mirror, env=env)
        reverse = ["git", "diff", "--binary", "--full-index", "--no-renames", revert_sha, f"{revert_sha}^1"]
        diff = subprocess.run(reverse, cwd=mirror, capture_output=True, env={**os.environ, **GIT_IDENTITY}, check=False)
        if diff.returncode != 0:
            raise InfraError(f"git diff of {revert_sha[:12]} failed: {diff.stderr.decode(errors='replace').strip()}")
        if diff.stdout:
            applied = subprocess.run(["git", "apply", "--cached", "--whitespace=nowarn", "-"], cwd=mirror,
                                     input=diff.stdout, capture_output=True, check=False,
                                     env={**os.environ, **GIT_IDENTITY, **env})  # fmt: skip
            if applied.returncode != 0:
                why = applied.stderr.decode(errors="replace").strip()[:2000]
                raise UserError(f"the revert of {revert_sha[:12]} does not apply on {head_sha[:12]}: {why}")
        tree = git(["write-tree"], mirror, env=env).stdout.strip()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    message = f"labgate: revert {revert_sha} on {head_sha[:12]}"
    return git(["commit-tree", tree, "-p", head_sha, "-m", message], mirror).stdout.strip()


# What the static stage needs from the base (the base's copies run, never the change's), by output name.
BASE_TOOLS = {"checkpatch": "scripts/checkpatch.pl", "kernel_doc": "scripts/kernel-doc"}
MAINTAINERS_FILE = "MAINTAINERS"
MAX_MAINTAINERS_BYTES = 4 * 1024 * 1024  # Linux 6.1's is 0.7 MiB


def base_facts(mirror: Path, base_sha: str) -> tuple[dict[str, bool], bytes | None]:
    """Which static tools the base has (regular files only), and its MAINTAINERS file (None when it has
    none, or one past the cap) for the control side to map areas to suites."""
    listing = git(["ls-tree", "-z", "--full-tree", base_sha, "--", *BASE_TOOLS.values(), MAINTAINERS_FILE],
                  mirror).stdout  # fmt: skip
    blobs: dict[str, tuple[str, str]] = {}  # path -> (mode, object) of each regular file
    for record in filter(None, listing.split("\0")):
        meta, _, path = record.partition("\t")
        mode, kind, sha = meta.split(" ")
        if kind == "blob" and mode in ("100644", "100755"):
            blobs[path] = (mode, sha)
    tree_has = {name: path in blobs for name, path in BASE_TOOLS.items()}
    if MAINTAINERS_FILE not in blobs:
        return tree_has, None
    sha = blobs[MAINTAINERS_FILE][1]
    if int(git(["cat-file", "-s", sha], mirror).stdout) > MAX_MAINTAINERS_BYTES:
        return tree_has, None
    content = subprocess.run(["git", "cat-file", "blob", sha], cwd=mirror, capture_output=True, check=False,
                             env={**os.environ, **GIT_IDENTITY})  # fmt: skip
    if content.returncode != 0:
        raise InfraError(f"git cat-file blob {sha[:12]} failed: {content.stderr.decode(errors='replace').strip()}")
    return tree_has, content.stdout


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
    ticket = fetch_ticket(mirror)
    with locked(mirror):
        if has_commit(mirror, sha):
            return
        update_mirror(mirror, url, ticket=ticket)
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
