"""Unpack a build's modules tarball (lib/modules/<release>/...) for the initramfs, refusing what could escape.

The tarball is the change's output: its member names, types, modes and link targets are hostile
until checked. Only directories, regular files and symlinks that stay inside lib/modules are
taken; absolute names, `..`, hardlinks, devices, FIFOs, setuid/setgid bits and anything outside
lib/modules are refused with the member's name, and nothing is written through a link. kbuild's
own `build` and `source` links (lib/modules/<release>/build -> the build tree) are left out:
they name a path of the build host, meaningless on the DUT.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from pathlib import Path, PurePosixPath

__all__ = ["MAX_MODULES_BYTES", "MAX_MODULES_MEMBERS", "ModulesError", "unpack_modules"]

MAX_MODULES_BYTES = 256 * 1024 * 1024  # the initramfs lives in the guest's memory (512 MB by default)
MAX_MODULES_MEMBERS = 50_000
_ROOT = PurePosixPath("lib/modules")
_KBUILD_LINKS = ("build", "source")
_CHUNK = 1 << 20


class ModulesError(ValueError):
    """The tarball holds something the DUT must not get; the message names the member."""


def unpack_modules(tarball: Path, dest: Path, *, max_bytes: int = MAX_MODULES_BYTES,
                   max_members: int = MAX_MODULES_MEMBERS) -> Path:  # fmt: skip
    """Check every member of ``tarball`` and write what passes under ``dest`` (made fresh); return ``dest``.

    ``dest/lib/modules`` exists afterwards even for an empty tarball.
    """
    dest.mkdir(parents=True)
    (dest / _ROOT).mkdir(parents=True)
    links: set[PurePosixPath] = set()
    seen: set[PurePosixPath] = set()
    total = 0
    try:
        archive = tarfile.open(tarball, "r:*")  # noqa: SIM115 (its errors are the tarball's, said as such)
    except (tarfile.TarError, OSError) as exc:
        raise ModulesError(f"modules tarball: not a readable tar archive ({exc})") from exc
    with archive:
        for count, member in enumerate(archive, start=1):
            if count > max_members:
                raise ModulesError(f"modules tarball: more than {max_members} members")
            name = _checked_name(member.name)
            if name is None:
                continue  # ".", "lib", "lib/modules" themselves
            if name in seen:
                raise ModulesError(f"modules tarball: {member.name!r} appears twice")
            seen.add(name)
            if any(parent in links for parent in name.parents):
                raise ModulesError(f"modules tarball: {member.name!r} lies below a symlink")
            _check_kind(member)
            target = dest / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.issym():
                if len(name.parts) == 4 and name.name in _KBUILD_LINKS:
                    continue
                _check_link(member, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(member.linkname, target)
                links.add(name)
            else:
                total += member.size
                if total > max_bytes:
                    raise ModulesError(f"modules tarball: more than {max_bytes >> 20} MiB of files "
                                       f"(at {member.name!r}); the initramfs lives in the guest's memory")  # fmt: skip
                target.parent.mkdir(parents=True, exist_ok=True)
                _write(archive, member, target)
    return dest


def _checked_name(raw: str) -> PurePosixPath | None:
    if raw.startswith("/"):
        raise ModulesError(f"modules tarball: member {raw!r} is absolute")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ModulesError(f"modules tarball: member {raw!r} climbs with '..'")
    name = PurePosixPath(*parts) if parts else PurePosixPath(".")
    if name in (PurePosixPath("."), PurePosixPath("lib"), _ROOT):
        return None
    if name.parts[:2] != _ROOT.parts:
        raise ModulesError(f"modules tarball: member {raw!r} is outside lib/modules/")
    return name


def _check_kind(member: tarfile.TarInfo) -> None:
    if member.islnk():
        raise ModulesError(f"modules tarball: {member.name!r} is a hardlink (to {member.linkname!r})")
    if not (member.isdir() or member.isfile() or member.issym()):
        raise ModulesError(f"modules tarball: {member.name!r} is a device, FIFO or other special file")
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ModulesError(f"modules tarball: {member.name!r} is setuid or setgid (mode {member.mode:o})")


def _check_link(member: tarfile.TarInfo, name: PurePosixPath) -> None:
    """A symlink's target must be relative and, read from where the link sits, stay in lib/modules."""
    if member.linkname.startswith("/"):
        raise ModulesError(f"modules tarball: symlink {member.name!r} points to the absolute {member.linkname!r}")
    resolved = posixpath.normpath(posixpath.join(str(name.parent), member.linkname))
    if resolved != str(_ROOT) and not resolved.startswith(f"{_ROOT}/"):
        raise ModulesError(f"modules tarball: symlink {member.name!r} points out of lib/modules ({member.linkname!r})")


def _write(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(member)
    assert source is not None  # a regular file
    # O_EXCL | O_NOFOLLOW: never through a link, never over a name written before.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if member.mode & 0o111 else 0o644)
    with source, os.fdopen(fd, "wb") as out:
        left = member.size
        while left:
            chunk = source.read(min(left, _CHUNK))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
