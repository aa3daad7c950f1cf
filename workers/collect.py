"""Collect a build's artifacts from its build dir without ever following a link the build made.

The build dir belongs to the change: every name in it may be a symlink to / or into the
worker's data. So matching walks directory file descriptors (openat-style): each component
is opened relative to its parent with O_NOFOLLOW, a symlink or a non-regular file that a
pattern matches is refused by name, and sizes are capped per file and per job before a byte
is copied. Collection runs only after every process of the job is dead, so nothing can
swap a name between the check and the open.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from workers.artifacts import ArtifactStore
from workers.spec import ArtifactRef, unsafe_path_reason

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us


@dataclass(frozen=True)
class ArtifactCaps:
    max_file_bytes: int
    max_total_bytes: int


@dataclass
class Collected:
    artifacts: dict[str, ArtifactRef] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # patterns that matched nothing
    refused: list[str] = field(default_factory=list)  # why each refused match was refused
    total_bytes: int = 0


def collect_artifacts(build_dir: Path, patterns: tuple[str, ...], store: ArtifactStore,
                      caps: ArtifactCaps) -> Collected:  # fmt: skip
    """Store every regular file matching the plan's patterns, refusing links, odd files and oversize."""
    collected = Collected()
    root = os.open(build_dir, _DIR_FLAGS)
    try:
        for pattern in patterns:
            reason = unsafe_path_reason(pattern)
            if reason:
                collected.refused.append(f"pattern {pattern!r}: {reason}")
                continue
            matched = False
            refused_before = len(collected.refused)
            for relative in _match(root, (), PurePosixPath(pattern).parts, collected):
                matched = True
                if relative not in collected.artifacts:
                    _store_one(root, relative, store, caps, collected)
            if not matched and len(collected.refused) == refused_before:
                collected.missing.append(pattern)
    finally:
        os.close(root)
    return collected


def _match(dir_fd: int, prefix: tuple[str, ...], parts: tuple[str, ...], collected: Collected) -> Iterator[str]:
    """Paths (relative to the build dir) of regular files below dir_fd that match parts."""
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _match(dir_fd, prefix, rest, collected)  # ** matches no directory too
        for name, mode in _entries(dir_fd):
            if stat.S_ISDIR(mode):
                yield from _descend(dir_fd, prefix, name, parts, collected)
        return
    for name, mode in _entries(dir_fd):
        if not fnmatch.fnmatchcase(name, head):
            continue
        path = "/".join((*prefix, name))
        if not _is_utf8(name):
            # Nothing downstream could name it in a report, a spec or a page.
            collected.refused.append(f"{shown(path)}: its name is not UTF-8")
        elif stat.S_ISLNK(mode):
            collected.refused.append(f"{path}: is a symlink; links are never followed out of the build dir")
        elif rest:
            if stat.S_ISDIR(mode):
                yield from _descend(dir_fd, prefix, name, rest, collected)
        elif stat.S_ISREG(mode):
            yield path
        elif not stat.S_ISDIR(mode):
            collected.refused.append(f"{path}: is not a regular file")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir gave undecodable bytes as surrogates
        return False
    return True


def shown(path: str) -> str:
    """A path as a report can carry it (undecodable bytes shown as U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _descend(dir_fd: int, prefix: tuple[str, ...], name: str, parts: tuple[str, ...],
             collected: Collected) -> Iterator[str]:  # fmt: skip
    try:
        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:  # ELOOP: it became a link (cannot happen once the job is dead, but refuse)
        where = shown("/".join((*prefix, name)))
        collected.refused.append(f"{where}: cannot be opened as a directory ({exc.strerror})")
        return
    try:
        yield from _match(child, (*prefix, name), parts, collected)
    finally:
        os.close(child)


def _entries(dir_fd: int) -> list[tuple[str, int]]:
    """(name, lstat mode) of a directory's entries, sorted for a stable order."""
    found = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                found.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
    return sorted(found)


def _store_one(root: int, relative: str, store: ArtifactStore, caps: ArtifactCaps, collected: Collected) -> None:
    fd = _open_beneath(root, relative)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            collected.refused.append(f"{relative}: is not a regular file")
            return
        if info.st_size > caps.max_file_bytes:
            collected.refused.append(f"{relative}: {info.st_size} bytes is over the per-file cap of "
                                     f"{caps.max_file_bytes} bytes")  # fmt: skip
            return
        if collected.total_bytes + info.st_size > caps.max_total_bytes:
            collected.refused.append(f"{relative}: would bring the job's artifacts over their cap of "
                                     f"{caps.max_total_bytes} bytes")  # fmt: skip
            return
        digest = store.put_fd(fd, limit=caps.max_file_bytes)
        collected.total_bytes += info.st_size
        collected.artifacts[relative] = ArtifactRef(digest=digest, mode=0o755 if info.st_mode & 0o111 else 0o644)
    finally:
        os.close(fd)


def _open_beneath(root: int, relative: str) -> int:
    """Open relative below root, every component with O_NOFOLLOW."""
    parts = relative.split("/")
    fd = os.dup(root)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
