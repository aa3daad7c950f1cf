"""A job's writable disk: a fixed-size loop-mounted filesystem, else a polled `du` cap.

A loop filesystem makes the cap exact: the kernel says ENOSPC at the limit, whatever the
build does. It needs root, mkfs.ext4 and a free loop device. Without them the worker
measures the job's directories every `POLL_S` seconds and kills the job past the cap; the
overshoot is whatever the build writes within one poll, and the job's record says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.errors import InfraError

POLL_S = 1.0
_FS_USABLE = 0.955  # ext4 keeps ~4 % for inode tables and the superblock at these sizes
_FS_SLACK_BYTES = 4 << 20
_NEARLY_FULL_BYTES = 2 << 20
# One file may grow a little past the cap, so that on a loop filesystem ENOSPC (which names
# the cap) always comes before SIGXFSZ (which kills a child the build may not report).
FILE_SIZE_SLACK_BYTES = 16 << 20


@dataclass
class JobDisk:
    root: Path  # where the job's writable directories live
    limit_bytes: int
    image: Path | None  # the loop image, when the cap is a filesystem

    @property
    def mechanism(self) -> str:
        if self.image is not None:
            return f"loop ext4 of {self.limit_bytes >> 20} MiB"
        return f"du polled every {POLL_S:g} s (writes within one poll may pass the cap)"

    @property
    def polled(self) -> bool:
        return self.image is None

    def usage_bytes(self) -> int:
        if self.image is not None:
            stats = os.statvfs(self.root)
            return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        return disk_usage(self.root)

    def is_full(self) -> bool:
        """The job wrote up to its cap (give or take the filesystem's own bookkeeping)."""
        if self.image is not None and is_nearly_full(self.root):
            return True
        return self.usage_bytes() >= self.limit_bytes - (1 << 20)

    def release(self) -> None:
        release_disk(self.root, self.image)


def open_job_disk(job_dir: Path, limit_bytes: int) -> JobDisk:
    """A clean disk for the job under job_dir/disk; a stale one of a killed worker is removed first."""
    root = job_dir / "disk"
    image = job_dir / "disk.img"
    release_disk(root, image)
    root.mkdir(parents=True)
    if _can_loop_mount():
        try:
            _make_filesystem(image, int(limit_bytes / _FS_USABLE) + _FS_SLACK_BYTES)
            _run(["mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(root)])
            return JobDisk(root, limit_bytes, image)
        except InfraError:
            image.unlink(missing_ok=True)  # no loop device free: fall back, the record says so
    return JobDisk(root, limit_bytes, None)


def release_disk(root: Path, image: Path | None) -> None:
    if os.path.ismount(root):
        # Lazy: a process of the job that has not been reaped yet must not keep the mount alive.
        subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)
    if root.exists() and not os.path.ismount(root):
        shutil.rmtree(root, ignore_errors=True)
    if image is not None:
        image.unlink(missing_ok=True)


def mount_job_tmp(job_dir: Path, size_bytes: int) -> Path | None:
    """A size-capped tmpfs for the job's /tmp and /dev/shm, mounted by the worker so that its fill
    can be read after the job; None where mounting is not possible (bwrap then makes its own)."""
    tmp = job_dir / "tmp"
    release_job_tmp(tmp)
    tmp.mkdir(parents=True)
    if os.geteuid() != 0:
        return None
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=1777,nosuid,nodev", "tmpfs",
                           str(tmp)], capture_output=True, text=True, check=False)  # fmt: skip
    return tmp if done.returncode == 0 else None


def release_job_tmp(tmp: Path) -> None:
    if os.path.ismount(tmp):
        subprocess.run(["umount", "-l", str(tmp)], capture_output=True, check=False)
    if tmp.exists() and not os.path.ismount(tmp):
        shutil.rmtree(tmp, ignore_errors=True)


def is_nearly_full(path: Path) -> bool:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES


def disk_usage(root: Path) -> int:
    """Bytes allocated under root (like `du -s`). Walks directory file descriptors and never follows
    a link: the job may swap a directory for a link to /usr between two polls."""
    total = 0
    for _top, dirs, files, top_fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.stat(name, dir_fd=top_fd, follow_symlinks=False).st_blocks * 512
    return total


def _can_loop_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None and shutil.which("mount") is not None


def _make_filesystem(image: Path, size: int) -> None:
    with open(image, "wb") as handle:
        handle.truncate(size)  # sparse: only what the job writes takes space
    # No journal and no reserved blocks: the filesystem lives for one job.
    _run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1,nodiscard",
          str(image)])  # fmt: skip


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InfraError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
