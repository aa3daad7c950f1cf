"""A build's source tree: the tested commit's files, exported from the mirror into a fresh directory.

The export holds no `.git`: the build runs the change's code, and a `.git` it could rewrite
(a config with core.fsmonitor, hooks) would be run by the next git command in that
directory, which would be root's. Git here only writes into a directory that nothing has
touched yet, with its index kept outside it, and never runs in the tree again afterwards:
the worker deletes it with plain file operations.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.errors import InfraError, UserError
from workers.spec import unsafe_path_reason


def export_tree(mirror: Path, sha: str, dest: Path, index_file: Path) -> None:
    """Write the files of commit sha into the empty directory dest."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InfraError(f"{dest} is not empty; a source export needs a fresh directory")
    env = {**os.environ, "GIT_INDEX_FILE": str(index_file), "GIT_TERMINAL_PROMPT": "0"}
    git = ["git", f"--git-dir={mirror}", "-c", "core.hooksPath=/dev/null", "-c", "checkout.workers=0"]
    for argv in ([*git, "read-tree", sha], [*git, f"--work-tree={dest}", "checkout-index", "--all", "--force"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            # The mirror and the commit are known good (the checkout made them): what fails here is
            # the tree's own content (a name too long, more than the disk cap), so it is the change's.
            raise UserError(f"the tested tree {sha[:12]} cannot be written out for the build: "
                            f"{done.stderr.strip()[-600:]}")  # fmt: skip
    index_file.unlink(missing_ok=True)


def give_to(uid: int | None, *paths: Path) -> None:
    """Hand the job's directories to the sandbox's uid (root keeps nothing it must trust in them).
    Nothing of the job runs yet, so walking without following links is enough."""
    if uid is None:
        return
    try:
        for path in paths:
            os.lchown(path, uid, uid)
            for top, dirs, files in os.walk(path):
                for name in (*dirs, *files):
                    os.lchown(os.path.join(top, name), uid, uid)
    except OSError as exc:
        raise InfraError(f"handing {exc.filename} to uid {uid} failed: {exc.strerror}") from exc


# Warm sources (workers/warm.py): a tree kept from one build to the next and brought to each tested
# commit by rewriting only the files that differ, so that make recompiles exactly what a patch touched.
# Git reads the bare mirror only; the files are written here, by root, with plain file operations that
# never follow a link the tree holds (a path below a symlink of an earlier commit stays inside the tree).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_MODES = {"100644": 0o644, "100755": 0o755}
_SYMLINK, _GITLINK = "120000", "160000"


@dataclass(frozen=True)
class TreeChange:
    path: str
    mode: str  # the new mode ("000000" when deleted)
    blob: str  # the new blob's id (zeros when deleted)

    @property
    def deleted(self) -> bool:
        return self.mode == "000000"


def changed_between(mirror: Path, old: str, new: str) -> list[TreeChange]:
    """Every path that differs between two commits, read from the mirror (no renames: a rename is a
    deletion and an addition, so no file is ever moved, only written anew)."""
    argv = [*_git(mirror), "diff", "--raw", "-z", "--no-renames", "--no-abbrev", "--no-ext-diff", old, new, "--"]
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise InfraError(f"git diff {old[:12]} {new[:12]} in the mirror failed: {done.stderr.decode()[-600:]}")
    fields = done.stdout.split(b"\0")
    changes = []
    for meta, raw_path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta:
            break
        _old_mode, new_mode, _old_blob, new_blob, _status = meta.decode().lstrip(":").split(" ")
        path = os.fsdecode(raw_path)
        reason = tree_path_reason(path)
        if reason:
            raise UserError(f"the tested tree {new[:12]} holds a path that cannot be written out: {path!r} {reason}")
        changes.append(TreeChange(path, new_mode, new_blob))
    return changes


def check_tree(mirror: Path, sha: str) -> None:
    """Refuse a commit whose files cannot be a directory's: a name listed twice, or a file where another
    path needs a directory. Git stores such trees (a hostile pusher's git need not refuse them), its
    checkout writes one of the entries and its diff pairs another, so the warm source would stop being
    exactly its commit's files, and the next commit's sync (the next build's, maybe a trusted one)
    would delete or keep the wrong file."""
    argv = [*_git(mirror), "ls-tree", "-r", "-z", "--full-tree", "--name-only", sha]
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise InfraError(f"git ls-tree {sha[:12]} in the mirror failed: {done.stderr.decode()[-600:]}")
    reason = tree_names_reason([os.fsdecode(raw) for raw in done.stdout.split(b"\0") if raw])
    if reason:
        raise UserError(f"the tested tree {sha[:12]} {reason}")


def tree_names_reason(names: list[str]) -> str | None:
    """Why the paths of a tree (`git ls-tree -r --name-only`) cannot all be files of one directory: a
    name listed twice, or a file where another path needs a directory; None if they can."""
    files: set[str] = set()
    for name in names:
        if name in files:
            return f"lists {name!r} twice"
        files.add(name)
    for name in names:
        parent = name.rpartition("/")[0]
        while parent:
            if parent in files:
                return f"holds {parent!r} as both a file and a directory"
            parent = parent.rpartition("/")[0]
    return None


def tree_path_reason(path: str) -> str | None:
    """Why a path of a commit cannot be written below the warm tree; None if it can."""
    reason = unsafe_path_reason(path)
    if reason:
        return reason
    if any(part.lower() == ".git" for part in path.split("/")):
        return "has a .git component"
    return None


def apply_changes(mirror: Path, changes: list[TreeChange], dest: Path) -> None:
    """Bring dest from one commit's files to another's: deletions first (a file may become a directory),
    then each new or changed file unlinked and written anew with a fresh mtime."""
    for change in changes:
        if change.deleted or change.mode == _GITLINK:
            _remove(dest, change.path)
    writes = [change for change in changes if not change.deleted and change.mode != _GITLINK]
    for change, content in zip(writes, _blobs(mirror, [change.blob for change in writes]), strict=True):
        _write(dest, change, content)


def _git(mirror: Path) -> list[str]:
    return ["git", f"--git-dir={mirror}", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]


def _blobs(mirror: Path, blobs: list[str]) -> list[bytes]:
    if not blobs:
        return []
    request = "".join(f"{blob}\n" for blob in blobs).encode()
    done = subprocess.run([*_git(mirror), "cat-file", "--batch"], input=request, capture_output=True, check=False)
    if done.returncode != 0:
        raise InfraError(f"git cat-file in the mirror failed: {done.stderr.decode()[-600:]}")
    out, at, found = done.stdout, 0, []
    for blob in blobs:
        header_end = out.index(b"\n", at)
        header = out[at:header_end].split(b" ")
        if len(header) != 3 or header[0].decode() != blob:
            raise InfraError(f"git cat-file answered {out[at:header_end][:100]!r} for blob {blob}")
        size = int(header[2])
        found.append(out[header_end + 1 : header_end + 1 + size])
        at = header_end + 1 + size + 1
    return found


def _parent_fd(dest: Path, path: str, *, create: bool) -> int | None:
    """An fd of path's directory below dest, each component opened without following links; None
    when it is not there (and create is False)."""
    fd = os.open(dest, _DIR_FLAGS)
    try:
        for part in path.split("/")[:-1]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # ELOOP, ENOTDIR: a link or a file where git says a directory is
                raise InfraError(f"warm tree: {path}: a parent is not a directory ({exc.strerror})") from exc
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _remove(dest: Path, path: str) -> None:
    fd = _parent_fd(dest, path, create=False)
    if fd is None:
        return
    try:
        _unlink_any(fd, path.rsplit("/", 1)[-1])
    finally:
        os.close(fd)


def _unlink_any(dir_fd: int, name: str) -> None:
    """Remove name in dir_fd whatever it is: a file, a link, or a directory left empty by deletions
    (a directory that becomes a file, a submodule's empty directory)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _write(dest: Path, change: TreeChange, content: bytes) -> None:
    fd = _parent_fd(dest, change.path, create=True)
    assert fd is not None
    name = change.path.rsplit("/", 1)[-1]
    try:
        _unlink_any(fd, name)
        if change.mode == _SYMLINK:
            os.symlink(os.fsdecode(content), name, dir_fd=fd)
            return
        mode = _FILE_MODES.get(change.mode)
        if mode is None:
            raise InfraError(f"warm tree: {change.path}: unknown git mode {change.mode}")
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(out, view) :]
            os.fchmod(out, mode)  # the umask must not take the execute bit away
        finally:
            os.close(out)
    finally:
        os.close(fd)
