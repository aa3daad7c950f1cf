"""A kernel build's fixed paths, environment and ledger: every unit's warnings, what was recompiled,
and one digest over what boots.

Kernel builds see their source, build dir, compiler wrapper and ccache at the same /labgate/... paths
every time (Kbuild records absolute paths in its .cmd files: a path that moves rebuilds everything).
The wrapper (kbuild-cc.sh) keeps each unit's compiler output in OBJ.labgate-diag next to its object, so
after an incremental build the warnings of units not recompiled are still there to read, and the
diag files this build wrote (by mtime) name the units it recompiled. All of it is the build's own
output, read only after every process of the job is dead, without following a link it made.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.spec import MAX_LEDGER_WARNINGS, ArtifactRef, KernelBuild

SRC = "/labgate/src"
BUILD = "/labgate/build"
CC = "/labgate/bin/cc"
CCACHE_SHARED = "/labgate/ccache"  # the tree's shared ccache of (arch, toolchain): a `file:` remote storage
CCACHE_LOCAL = "/labgate/ccache-local"  # this job's own ccache dir, thrown away with its disk
WRAPPER = Path(__file__).with_name("kbuild-cc.sh")
DIAG_SUFFIX = ".labgate-diag"
BUILD_PREFIX = "<build>/"  # a warning in a file the build made (generated headers), told apart from the tree's
MAX_RECOMPILED = 1000
MAX_DIAG_BYTES = 256 << 10  # of one unit's diag file
# Reproducible builds: equal inputs give equal vmlinux, whoever built them and when.
REPRODUCIBLE_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "Mon Jan  1 00:00:00 UTC 2024",
    "KBUILD_BUILD_USER": "labgate",
    "KBUILD_BUILD_HOST": "labgate",
    "KBUILD_BUILD_VERSION": "1",
}
_WARNING = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<level>warning|error): (?P<text>.*?)"
    r"(?: \[(?P<flag>-W[^\]]+)\])?$"
)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def makes_config(path: str) -> bool:
    """Whether a changed file can change what the config steps write (Kconfig files and what they include,
    defconfigs and fragments, the config tools, the compiler probes Kconfig runs, the plan's own files)."""
    name = path.rsplit("/", 1)[-1]
    return (name.startswith("Kconfig") or name.endswith("config") or path == "Makefile"
            or path.startswith(("scripts/kconfig/", ".labgate/"))
            or (path.startswith("scripts/") and path.count("/") == 1))  # fmt: skip


def kernel_env(kernel: KernelBuild, *, trusted: bool) -> dict[str, str]:
    """The sandbox environment of a kernel build. Trusted builds read and write the shared ccache
    (remote-only: nothing of it stays in the job's own dir); untrusted ones read it read-only and
    write a cache of their own, thrown away with the job."""
    shared = f"file:{CCACHE_SHARED}" + ("|update-mtime=true" if trusted else "|read-only")
    return {
        "LABGATE_SRC": SRC,
        "LABGATE_BUILD": BUILD,
        "LABGATE_CC": CC,
        "CCACHE_DIR": CCACHE_LOCAL,
        "CCACHE_CONFIGPATH": f"{CCACHE_LOCAL}/ccache.conf",
        "CCACHE_REMOTE_STORAGE": shared,
        # ccache refuses "false" for a boolean variable (it wants CCACHE_NOREMOTE_ONLY): set it only when meant.
        **({"CCACHE_REMOTE_ONLY": "1"} if trusted else {}),
        **({"LLVM": "1"} if kernel.toolchain == "clang" else {}),
        **REPRODUCIBLE_ENV,
    }


@dataclass(frozen=True)
class Ledger:
    warnings: list[dict[str, object]]
    complete: bool
    recompiled: list[str]


def read_ledger(build_dir: Path, since_ns: int, source: Path | None = None) -> Ledger:
    """Warnings of every unit of build_dir (deduplicated: a header's warning is one warning however many
    units include it), and the objects whose diag file was written at or after since_ns. With `source`
    (the tree the build read), an object whose source file is in neither tree is left out: Kbuild never
    deletes the objects (and so the diag files) of a file an earlier commit had, and their warnings are not
    this commit's (a base counted with them would call the same warning, come back, pre-existing)."""
    warnings: list[dict[str, object]] = []
    seen: set[tuple[object, ...]] = set()
    complete = True
    recompiled: list[str] = []
    for relative, info, content in _diag_files(build_dir):
        if info.st_mtime_ns >= since_ns and len(recompiled) < MAX_RECOMPILED:
            recompiled.append(relative.removesuffix(DIAG_SUFFIX))
        if source is not None and _stale(relative.removesuffix(DIAG_SUFFIX), source, build_dir):
            continue
        if content is None:  # over the per-file cap: its warnings are not all read
            complete = False
            continue
        for warning in parse_warnings(content.decode("utf-8", "replace")):
            key = tuple(warning.values())
            if key in seen:
                continue
            if len(warnings) >= MAX_LEDGER_WARNINGS:
                complete = False
                break
            seen.add(key)
            warnings.append(warning)
    return Ledger(warnings, complete, recompiled)


UNIT_SOURCES = (".c", ".S", ".s", ".rs")


def _stale(output: str, source: Path, build_dir: Path) -> bool:
    """An object whose unit's source is in neither the tree nor the build dir (generated sources): left
    from a file an earlier commit had. Outputs other than objects (linker scripts, .i) are never stale."""
    if not output.endswith(".o"):
        return False
    stem = output.removesuffix(".o")
    return not any(os.path.lexists(root / f"{stem}{suffix}") for root in (source, build_dir) for suffix in UNIT_SOURCES)


def parse_warnings(text: str) -> list[dict[str, object]]:
    """gcc/clang `file:line:col: warning|error: text [-Wflag]` lines, paths as the report names them."""
    found: list[dict[str, object]] = []
    for line in text.split("\n"):
        match = _WARNING.match(line)
        if match:
            found.append({"file": shown_path(match["file"]), "line": int(match["line"]),
                          "col": int(match["col"] or 0), "level": match["level"], "flag": match["flag"] or "",
                          "text": match["text"]})  # fmt: skip
    return found


def shown_path(path: str) -> str:
    """A diagnostic's path relative to the tree; a file of the build dir (generated) gets BUILD_PREFIX."""
    if path.startswith(SRC + "/"):
        return path[len(SRC) + 1 :]
    if path.startswith(BUILD + "/"):
        return BUILD_PREFIX + path[len(BUILD) + 1 :]
    if path.startswith("/"):
        return path  # a system header
    return BUILD_PREFIX + os.path.normpath(path)  # Kbuild compiles in the build dir: relative is there


def _diag_files(build_dir: Path) -> Iterator[tuple[str, os.stat_result, bytes | None]]:
    """(path relative to build_dir, stat, content or None when over the cap) of each diag file, sorted."""
    found = sorted(
        os.path.relpath(os.path.join(top, name), build_dir)
        for top, _dirs, files in os.walk(build_dir)  # os.walk never descends into a link
        for name in files
        if name.endswith(DIAG_SUFFIX)
    )
    for relative in found:
        opened = _open_beneath(build_dir, relative)
        if opened is None:
            continue
        with os.fdopen(opened, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                continue
            content = handle.read(MAX_DIAG_BYTES + 1)
        yield relative, info, content if len(content) <= MAX_DIAG_BYTES else None


def _open_beneath(root: Path, relative: str) -> int | None:
    """Open relative below root with no component followed as a link; None if that fails."""
    parts = relative.split("/")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def binary_digest(build_dir: Path, artifacts: dict[str, ArtifactRef]) -> str:
    """sha256 over vmlinux, every module (.ko) and every collected artifact, by path: equal digests of two
    builds mean they built the same kernel."""
    parts = [f"artifact {path} {ref.digest}" for path, ref in sorted(artifacts.items())]
    for relative in _kernel_binaries(build_dir):
        opened = _open_beneath(build_dir, relative)
        if opened is None:
            continue
        digest = hashlib.sha256()
        with os.fdopen(opened, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                continue
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        parts.append(f"binary {relative} {digest.hexdigest()}")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _kernel_binaries(build_dir: Path) -> list[str]:
    found = ["vmlinux"]  # opened without following links, skipped when missing or not a regular file
    for top, _dirs, files in os.walk(build_dir):
        found += [os.path.relpath(os.path.join(top, name), build_dir) for name in files if name.endswith(".ko")]
    return sorted(found)
