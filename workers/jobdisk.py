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
        if self.image is not None:
            stats = os.statvfs(self.root)
            if stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES:
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


def disk_usage(root: Path) -> int:
    """Bytes allocated under root (like `du -s`), never following a symlink."""
    total = 0
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
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
