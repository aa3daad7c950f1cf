"""Warm state for kernel builds: a source tree per tree, build dirs per warm key, a ccache per
(tree, arch, toolchain), kept under the worker's work dir between jobs, root's only.

Layout (work/warm, 0700):
  locks/tree-<tree>.lock, locks/ccache-<tree>-<arch>-<toolchain>.lock   fcntl locks, dropped with the process
                              (<tree>: the tree's name made a file name, with a digest of the name)
  trees/<tree>/src            the warm source: written by root from the mirror's blobs, bound read-only
  trees/<tree>/src.json       {"commit", "bytes"}; missing while the source is being changed
  trees/<tree>/builds/<key>   a warm build dir; <key>.json {"bytes", "used"}; <key>.dirty while a build
                              runs in it (a build that did not end on its own leaves it, and the next
                              user throws the dir away: make would trust truncated objects' fresh mtimes)
  ccache/<tree>/<arch>-<toolchain>   the tree's shared ccache (a ccache `file:` remote storage): a
                              tree's trusted builds run code trusted by that tree only, and a private
                              tree's objects and compiler output are nothing another tree's build may read

Only trusted builds (a trusted change, a base build) write any of it; an untrusted build reads the
source (read-only bind), builds in a throwaway copy of the build dir and reads the ccache read-only.
Builds of one tree on one host take turns (the tree lock); trusted builds of one (tree, arch, toolchain)
take turns too (they hold its ccache). The disk held is capped (LABGATE_WARM_MAX_BYTES): a shared ccache
at a quarter of it, then least recently used build dirs go first, then other trees' sources, then other
trees' ccaches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.errors import ConfigError, InfraError
from workers.jobdisk import disk_usage
from workers.source import apply_changes, changed_between, check_tree, export_tree
from workers.spec import KernelBuild

WARM_MAX_BYTES_ENV = "LABGATE_WARM_MAX_BYTES"
DEFAULT_WARM_MAX_BYTES = 40 << 30
# A bigger difference is written out whole: reading every changed blob at once would cost more memory
# than a fresh export costs time.
MAX_INCREMENTAL_CHANGES = 20000


def warm_max_bytes() -> int:
    text = os.environ.get(WARM_MAX_BYTES_ENV, "")
    if not text:
        return DEFAULT_WARM_MAX_BYTES
    if not text.isdigit():
        raise ConfigError(f"{WARM_MAX_BYTES_ENV}={text!r}: not a number of bytes")
    return int(text)


def _safe(name: str) -> str:
    """A file name for a tree's name: readable, never '.' or '..', and two names never share one."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def warm_root(root: Path) -> Path:
    """The warm state's directory (a worker's work/warm), made root's alone."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # nothing below is any other host user's business
    return root


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TreeWarm:
    root: Path  # the warm root
    name: str

    @property
    def dir(self) -> Path:
        return self.root / "trees" / _safe(self.name)

    @property
    def source(self) -> Path:
        return self.dir / "src"

    def build_dir(self, warm_key: str) -> Path:
        return self.dir / "builds" / warm_key


@contextlib.contextmanager
def holding_tree(root: Path, tree_name: str) -> Iterator[TreeWarm]:
    """The tree's warm state, this process's alone until the block ends (waits for another build)."""
    if not tree_name:
        raise InfraError("a kernel build's warm state needs the name of its tree")
    with _flock(root / "locks" / f"tree-{_safe(tree_name)}.lock"):
        tree = TreeWarm(root, tree_name)
        (tree.dir / "builds").mkdir(parents=True, exist_ok=True)
        yield tree


def ccache_dir(tree: TreeWarm, kernel: KernelBuild) -> Path:
    """The shared ccache of the tree's builds of (arch, toolchain). Never shared between trees: a trusted
    build of one tree (trusted by that tree) could plant objects another tree's builds would link, and any
    tree's build could read what a private tree compiled."""
    path = tree.root / "ccache" / _safe(tree.name) / f"{kernel.arch}-{kernel.toolchain}"  # [a-z0-9_]+ words
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o755)
    return path


@contextlib.contextmanager
def holding_ccache(tree: TreeWarm, kernel: KernelBuild) -> Iterator[Path]:
    """The shared ccache, for a trusted build to write (handed to its uid for the build)."""
    with _flock(tree.root / "locks" / f"ccache-{_safe(tree.name)}-{kernel.arch}-{kernel.toolchain}.lock"):
        yield ccache_dir(tree, kernel)


@dataclass(frozen=True)
class SourceUpdate:
    how: str  # "kept" (already at the commit), "synced" (changed files rewritten), "exported" (whole)
    changed: int  # files written or removed


def prepare_source(tree: TreeWarm, mirror: Path, sha: str, index_file: Path) -> SourceUpdate:
    """Bring the warm source to commit sha (the caller holds the mirror's lock)."""
    state_file = tree.dir / "src.json"
    state = _read_json(state_file)
    if state.get("commit") == sha and tree.source.is_dir():
        return SourceUpdate("kept", 0)
    check_tree(mirror, sha)  # the sync below trusts the source to be exactly its last commit's files
    # Missing while the tree is changed: a worker that dies half-way leaves a source the next build
    # writes out whole, never one it would take for a commit it is not.
    state_file.unlink(missing_ok=True)
    changes = None
    if state.get("commit"):
        with contextlib.suppress(InfraError):  # the old commit is gone from the mirror: write it out whole
            changes = changed_between(mirror, str(state["commit"]), sha)
    if changes is not None and tree.source.is_dir() and len(changes) <= MAX_INCREMENTAL_CHANGES:
        apply_changes(mirror, changes, tree.source)
        _write_json(state_file, {"commit": sha, "bytes": state.get("bytes", 0)})
        return SourceUpdate("synced", len(changes))
    shutil.rmtree(tree.source, ignore_errors=True)
    export_tree(mirror, sha, tree.source, index_file)
    os.chmod(tree.source, 0o755)
    _write_json(state_file, {"commit": sha, "bytes": disk_usage(tree.source)})
    return SourceUpdate("exported", -1)


def take_build_dir(tree: TreeWarm, warm_key: str) -> Path | None:
    """The warm build dir of warm_key if there is a clean one; a dirty one is thrown away."""
    path = tree.build_dir(warm_key)
    dirty = path.with_name(f"{warm_key}.dirty")
    if dirty.exists() or (path.exists() and not path.with_name(f"{warm_key}.json").exists()):
        shutil.rmtree(path, ignore_errors=True)
        path.with_name(f"{warm_key}.json").unlink(missing_ok=True)
        dirty.unlink(missing_ok=True)
    return path if path.is_dir() else None


def mark_dirty(tree: TreeWarm, warm_key: str) -> Path:
    """Before a trusted build runs in the warm build dir (made here when there is none)."""
    path = tree.build_dir(warm_key)
    path.with_name(f"{warm_key}.dirty").touch()
    path.mkdir(exist_ok=True)
    return path


def mark_clean(tree: TreeWarm, warm_key: str, configured_at: str | None = None) -> None:
    """After a build that ended on its own (whatever its exit code): the dir may be reused. `configured_at`:
    the commit whose files made the dir's .config (a build that passed), None when its config is in doubt."""
    path = tree.build_dir(warm_key)
    state: dict[str, object] = {"bytes": disk_usage(path), "used": time.time(), "configured_at": configured_at}
    _write_json(path.with_name(f"{warm_key}.json"), state)
    path.with_name(f"{warm_key}.dirty").unlink(missing_ok=True)


def configured_at(tree: TreeWarm, warm_key: str) -> str | None:
    """The commit the warm build dir's .config was made from (mark_clean), if known."""
    value = _read_json(tree.build_dir(warm_key).with_name(f"{warm_key}.json")).get("configured_at")
    return value if isinstance(value, str) else None


def touch_used(tree: TreeWarm, warm_key: str) -> None:
    """An untrusted build copied the dir: it was used, for the eviction's order."""
    state_file = tree.build_dir(warm_key).with_name(f"{warm_key}.json")
    state = _read_json(state_file)
    if state:
        _write_json(state_file, {**state, "used": time.time()})


def evict(root: Path, current: TreeWarm, keep: str, max_bytes: int) -> int:
    """Throw away least recently used build dirs, then other trees' sources, until the warm state holds at
    most max_bytes (never `keep` of the current tree, its source, nor anything of a tree while a build of
    it runs); the bytes held. Other trees' ccaches go last; the current tree's is pruned by its trusted builds."""
    held = sum(int(_read_json(path).get("bytes", 0)) for path in (root / "trees").glob("*/src.json"))
    held += sum(disk_usage(path) for path in (root / "ccache").glob("*") if path.is_dir())
    builds = []
    for state_file in (root / "trees").glob("*/builds/*.json"):
        state = _read_json(state_file)
        held += int(state.get("bytes", 0))
        builds.append((float(state.get("used", 0)), state_file))
    for _used, state_file in sorted(builds):
        if held <= max_bytes:
            break
        tree_dir, key = state_file.parents[1], state_file.stem
        if tree_dir == current.dir:
            if key == keep:
                continue
            held -= _drop_build(state_file)
            continue
        with _flock(root / "locks" / f"tree-{tree_dir.name}.lock", blocking=False) as locked:
            if locked:
                held -= _drop_build(state_file)
    # Still over: other trees' sources, the least recently written out first (a tree that builds again
    # exports its source anew).
    sources = sorted((path.stat().st_mtime, path) for path in (root / "trees").glob("*/src.json"))
    for _mtime, state_file in sources:
        if held <= max_bytes:
            break
        if state_file.parent == current.dir:
            continue
        with _flock(root / "locks" / f"tree-{state_file.parent.name}.lock", blocking=False) as locked:
            if locked:
                held -= int(_read_json(state_file).get("bytes", 0))
                state_file.unlink(missing_ok=True)
                shutil.rmtree(state_file.parent / "src", ignore_errors=True)
    # Last, other trees' ccaches (only a tree's trusted builds prune its own: a tree that builds no more
    # would keep its ccache for ever), the oldest first.
    caches = sorted((path.stat().st_mtime, path) for path in (root / "ccache").glob("*") if path.is_dir())
    for _mtime, tree_cache in caches:
        if held <= max_bytes:
            break
        if tree_cache.name == current.dir.name:
            continue
        with _flock(root / "locks" / f"tree-{tree_cache.name}.lock", blocking=False) as locked:
            if locked:
                held -= disk_usage(tree_cache)
                shutil.rmtree(tree_cache, ignore_errors=True)
    return held


def prune_ccache(path: Path, max_bytes: int) -> int:
    """Bring a shared ccache (a `file:` remote storage: ccache never evicts it) down to at most max_bytes,
    the entries least recently used first (trusted builds refresh an entry's mtime when they read it);
    the bytes it holds. The caller holds the ccache's lock."""
    entries = []
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(top, name))
                entries.append((info.st_mtime, info.st_blocks * 512, os.path.join(top, name)))
    held = sum(size for _mtime, size, _name in entries)
    for _mtime, size, name in sorted(entries):
        if held <= max_bytes:
            break
        if name.endswith("CACHEDIR.TAG"):
            continue
        with contextlib.suppress(OSError):
            os.unlink(name)
            held -= size
    return held


def _drop_build(state_file: Path) -> int:
    freed = int(_read_json(state_file).get("bytes", 0))
    state_file.unlink(missing_ok=True)  # first: a dir without its state is thrown away by its next user
    shutil.rmtree(state_file.with_suffix(""), ignore_errors=True)
    state_file.with_suffix(".dirty").unlink(missing_ok=True)
    return freed


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict[str, object]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)
