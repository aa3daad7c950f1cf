"""Build the DUT initramfs: a pure-Python gzip'd cpio (newc) with busybox, runner and artifacts.

Pure Python so that no root (mknod) and no `cpio` binary are needed. The image is two
gzip members, each a complete cpio archive, which the kernel unpacks in order: a base
(directories, busybox, device nodes, /init, /usr/bin/labgate-run) that is built once
per process and reused, then this boot's commands and artifacts. Output is
deterministic: mtime 0, uid/gid 0, sorted entries, normalised modes.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from lab.errors import LabSetupError

__all__ = [
    "ARTIFACTS_DIR",
    "COMMANDS_FILE",
    "DUT_DIR",
    "DUT_UID",
    "Command",
    "StoredFile",
    "build_initramfs",
    "render_commands",
]

# Package data (pyproject.toml): found next to this module, in a checkout and in an installed labgate alike.
DUT_DIR = Path(__file__).resolve().with_name("dut")
ARTIFACTS_DIR = "/labgate/artifacts"
COMMANDS_FILE = "/labgate/commands"
RUN_DIR = "/labgate/run"
KUNIT_FLAG = "/labgate/kunit"
RUNNER_PORT_FILE = "/labgate/runner-port"  # /init writes the runner's document to /dev/<this>
MODULES_DIR = "/lib/modules"  # a build's modules, where modprobe looks
# The unprivileged user DUT commands run as (labgate-run drops to it with su).
DUT_USER = "dut"
DUT_UID = 1000
_PASSWD = f"root:x:0:0:root:/root:/bin/sh\n{DUT_USER}:x:{DUT_UID}:{DUT_UID}:labgate DUT user:/tmp:/bin/sh\n".encode()
_GROUP = f"root:x:0:\n{DUT_USER}:x:{DUT_UID}:\n".encode()

_BASE_DIRS = (
    "bin", "dev", "etc", "labgate", "labgate/artifacts", "labgate/run", "proc", "root",
    "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin",
)  # fmt: skip
_RUN_INODE_BASE = 1 << 20  # keeps inode numbers of the two archives apart
_GZIP_LEVEL = 1  # speed over size: the image lives for one boot
_CHUNK = 1 << 20


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class Command:
    """One command of a test: run with `sh -c` in /labgate/artifacts on the target."""

    name: str
    run: str
    timeout_s: int = 0  # 0: no per-command cap, only the whole boot's
    root: bool = False  # run as root instead of the DUT user (its results are not forge-proof)


@dataclass(frozen=True)
class StoredFile:
    """A host file copied into the image with the mode the build gave it (store files are 0444)."""

    path: Path
    executable: bool


@dataclass(frozen=True)
class _Entry:
    name: str  # path inside the image, without the leading "/"
    mode: int  # file type bits included
    data: bytes | Path = b""
    rdev: tuple[int, int] = (0, 0)


def render_commands(commands: Sequence[Command]) -> dict[str, bytes]:
    """The files that tell labgate-run what to run: an index plus one file per command.

    /labgate/commands has one line per command, ``name<TAB>timeout_s<TAB>user``; the shell
    text of command N (1-based) is in /labgate/run/N, so it may span lines.
    """
    files: dict[str, bytes] = {}
    index = []
    for number, command in enumerate(commands, start=1):
        if not command.name or any(c in command.name for c in "\t\n\r#"):
            raise ValueError(f"command name {command.name!r} is empty or holds tab/newline/#")
        if command.timeout_s < 0:
            raise ValueError(f"command {command.name!r}: negative timeout")
        user = "root" if command.root else DUT_USER
        index.append(f"{command.name}\t{int(command.timeout_s)}\t{user}\n")
        files[f"{RUN_DIR}/{number}"] = command.run.encode()
    files[COMMANDS_FILE] = "".join(index).encode()
    return files


def build_initramfs(
    out: Path,
    files: Mapping[str, Path | bytes | StoredFile],
    *,
    commands: Sequence[Command] | None = None,
    kunit: bool = False,
    runner_port: str = "ttyS1",
    modules: Path | None = None,
    busybox: Path = Path("/bin/busybox"),
    dut_dir: Path = DUT_DIR,
) -> Path:
    """Write the gzip'd cpio image to ``out`` and return ``out``.

    ``files`` maps absolute paths inside the image (``/labgate/artifacts/test_x``) to a
    host path (a file, a directory copied recursively, or a symlink kept as a symlink,
    never followed) or to bytes. Exec bits of host files are kept (as 0755, else 0644).
    ``commands``, when given, adds the output of :func:`render_commands`; ``kunit`` asks
    the runner to relay in-kernel KUnit results. ``runner_port`` is the device /init gives the
    runner (lab/arch.py). ``modules`` is a directory holding ``lib/modules/<release>/``, already
    checked (lab/modules.py), put at /lib/modules.
    """
    if not runner_port.isalnum():
        raise ValueError(f"runner port {runner_port!r} is not a plain device name")
    wanted: dict[str, Path | bytes | StoredFile] = dict(files)
    wanted[RUNNER_PORT_FILE] = f"{runner_port}\n".encode()
    if modules is not None:
        wanted[MODULES_DIR] = Path(modules) / "lib" / "modules"
    if kunit:
        wanted[KUNIT_FLAG] = b"1\n"
    if commands is not None:
        for path, data in render_commands(commands).items():
            if path in wanted:
                raise ValueError(f"{path} is both in files and made from commands")
            wanted[path] = data
    base = _base_archive(_file_key(busybox), _file_key(dut_dir / "init"), _file_key(dut_dir / "labgate-run"))
    entries = _run_entries(wanted, set(base[1]))
    with open(out, "wb") as sink:
        sink.write(base[0])
        with _gzip(sink) as gz:
            _write_archive(gz, entries, first_inode=_RUN_INODE_BASE)
    return out


def _gzip(sink: Any) -> gzip.GzipFile:
    # No file name and mtime 0 in the gzip header: the same input gives the same bytes.
    return gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=_GZIP_LEVEL, mtime=0)


def _file_key(path: Path) -> tuple[str, int, int, int]:
    """Identity of a host file for the base cache: rebuilt when it changes."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LabSetupError(f"initramfs input {path} is missing ({exc.strerror})") from exc
    return (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _check_static(busybox: Path) -> None:
    """A dynamically linked busybox would find no libc in the image and /init would die."""
    with open(busybox, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise LabSetupError(f"{busybox} is not a 64-bit ELF; install busybox-static")
        phoff, phentsize, phnum = (
            int.from_bytes(head[32:40], "little"),
            int.from_bytes(head[54:56], "little"),
            int.from_bytes(head[56:58], "little"),
        )
        f.seek(phoff)
        headers = f.read(phentsize * phnum)
    for i in range(phnum):
        if int.from_bytes(headers[i * phentsize : i * phentsize + 4], "little") == 3:  # PT_INTERP
            raise LabSetupError(f"{busybox} is dynamically linked; install busybox-static")


@functools.lru_cache(maxsize=4)
def _base_archive(
    busybox: tuple[str, int, int, int],
    init: tuple[str, int, int, int],
    runner: tuple[str, int, int, int],
) -> tuple[bytes, tuple[str, ...]]:
    _check_static(Path(busybox[0]))
    entries = [_Entry(d, stat.S_IFDIR | (0o1777 if d == "tmp" else 0o755)) for d in _BASE_DIRS]
    entries += [
        _Entry("bin/busybox", stat.S_IFREG | 0o755, Path(busybox[0])),
        # The kernel opens /dev/console before /init runs; without it init has no stdio.
        _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        _Entry("etc/group", stat.S_IFREG | 0o644, _GROUP),
        _Entry("etc/passwd", stat.S_IFREG | 0o644, _PASSWD),
        _Entry("init", stat.S_IFREG | 0o755, Path(init[0])),
        _Entry("usr/bin/labgate-run", stat.S_IFREG | 0o755, Path(runner[0])),
    ]
    entries.sort(key=lambda e: PurePosixPath(e.name).parts)
    buffer = io.BytesIO()
    with _gzip(buffer) as gz:
        _write_archive(gz, entries, first_inode=1)
    return buffer.getvalue(), tuple(e.name for e in entries)


def _image_name(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or parts[0] != "/":
        raise ValueError(f"image path {path!r} must be absolute")
    rest = parts[1:]
    if not rest or ".." in rest:
        raise ValueError(f"image path {path!r} is not a plain absolute path")
    return "/".join(rest)


def _run_entries(files: Mapping[str, Path | bytes | StoredFile], base: set[str]) -> list[_Entry]:
    entries: dict[str, _Entry] = {}

    def add(entry: _Entry) -> None:
        if entry.name in base or entry.name in entries:
            raise ValueError(f"/{entry.name} is given twice or clashes with the base image")
        for parent in list(PurePosixPath(entry.name).parents)[:-1]:
            name = str(parent)
            if name not in base and name not in entries:
                entries[name] = _Entry(name, stat.S_IFDIR | 0o755)
        entries[entry.name] = entry

    for path, source in files.items():
        name = _image_name(path)
        if isinstance(source, bytes | bytearray):
            add(_Entry(name, stat.S_IFREG | 0o644, bytes(source)))
        elif isinstance(source, StoredFile):
            add(_Entry(name, stat.S_IFREG | (0o755 if source.executable else 0o644), source.path))
        else:
            for entry in _host_entries(name, Path(source)):
                add(entry)
    return sorted(entries.values(), key=lambda e: PurePosixPath(e.name).parts)


def _host_entries(name: str, source: Path) -> Iterable[_Entry]:
    st = os.lstat(source)
    if stat.S_ISLNK(st.st_mode):
        # Kept as a link: following it could copy host files (secrets) into the image.
        yield _Entry(name, stat.S_IFLNK | 0o777, os.readlink(source).encode())
    elif stat.S_ISREG(st.st_mode):
        yield _Entry(name, stat.S_IFREG | (0o755 if st.st_mode & 0o111 else 0o644), source)
    elif stat.S_ISDIR(st.st_mode):
        yield _Entry(name, stat.S_IFDIR | 0o755)
        for child in sorted(os.listdir(source)):
            yield from _host_entries(f"{name}/{child}", source / child)
    else:
        raise ValueError(f"{source} is neither a file, a directory nor a symlink")


def _write_archive(sink: _Sink, entries: Iterable[_Entry], *, first_inode: int) -> None:
    for inode, entry in enumerate(entries, start=first_inode):
        if isinstance(entry.data, Path):
            with open(entry.data, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                sink.write(_header(inode, entry, size))
                _copy_exactly(source, sink, size)
        else:
            sink.write(_header(inode, entry, len(entry.data)))
            sink.write(entry.data)
            size = len(entry.data)
        sink.write(b"\0" * (-size % 4))
    sink.write(_header(0, _Entry("TRAILER!!!", 0), 0))


def _copy_exactly(source: BinaryIO, sink: _Sink, size: int) -> None:
    """Copy exactly ``size`` bytes: a file changing under us must not corrupt the cpio."""
    left = size
    while left:
        chunk = source.read(min(left, _CHUNK))
        if not chunk:
            sink.write(b"\0" * left)
            return
        sink.write(chunk)
        left -= len(chunk)


def _header(inode: int, entry: _Entry, size: int) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (inode, entry.mode, 0, 0, nlink, 0, size, 0, 0, *entry.rdev, len(name), 0)
    header = b"070701" + "".join(f"{v:08X}" for v in fields).encode() + name
    return header + b"\0" * (-len(header) % 4)
