"""What a job leaves when the process running it dies: found by its free lock, and released.

A job's disk (a loop mount), its /tmp (a tmpfs) and its directory are removed by the process that
ran it, after its result is sent. A process killed before that (a cancelled job is terminated with
SIGTERM, a crash, an OOM kill, a worker stopped mid-job) leaves them all: a change's build output
still mounted, its source tree on disk. So the process running a job
holds an exclusive flock on `work/job-N.lock` from before the job starts until its clean-up is done;
the kernel drops the lock with the process, however it dies. A job directory whose lock can be taken
has no live owner, and `sweep_orphans` releases it. Job workers sweep when each pool process starts
(a terminated one is replaced at once) and when they shut down.

The lock file is unlinked by whoever holds it last, so the directory of locks does not grow with
the jobs run. A holder checks after locking that the path still names the file it locked: one
that locked a file just unlinked would otherwise own a job nobody else can see it owns.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from workers.jobdisk import release_disk, release_job_tmp

log = logging.getLogger(__name__)
_JOB_DIR = re.compile(r"job-(\d+)")


def job_lock_path(work_root: Path, job_id: int) -> Path:
    return work_root / "work" / f"job-{int(job_id)}.lock"


@contextlib.contextmanager
def holding_job(work_root: Path, job_id: int) -> Iterator[None]:
    """Own job `job_id`'s leftovers while the body runs (waiting for a sweep that holds them)."""
    path = job_lock_path(work_root, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(path, blocking=True)
    assert fd is not None
    try:
        yield
    finally:
        _unlock_and_forget(path, fd)


def sweep_orphans(work_root: Path) -> list[int]:
    """Release every job directory whose job has no live process; their ids.

    A private tree's credential file is not a leftover: the control side writes it before the job
    runs, and the token it holds expires on its own."""
    work = work_root / "work"
    if not work.is_dir():
        return []
    names = (entry.name.removesuffix(".lock") for entry in work.iterdir())
    job_ids = {int(match.group(1)) for name in names if (match := _JOB_DIR.fullmatch(name))}
    swept = []
    for job_id in sorted(job_ids):
        path = job_lock_path(work_root, job_id)
        fd = _lock(path, blocking=False)
        if fd is None:
            continue  # a live process runs it
        try:
            if release_job(work_root, job_id):
                swept.append(job_id)
        finally:
            _unlock_and_forget(path, fd)
    if swept:
        log.warning("released what %d killed job(s) left: %s", len(swept), ", ".join(map(str, swept)))
    return swept


def release_job(work_root: Path, job_id: int) -> bool:
    """Unmount and remove job `job_id`'s directory; whether there was one."""
    job_dir = work_root / "work" / f"job-{int(job_id)}"
    if not job_dir.exists():
        return False
    release_job_tmp(job_dir / "tmp")
    release_disk(job_dir / "disk", job_dir / "disk.img")
    shutil.rmtree(job_dir, ignore_errors=True)
    return True


def _lock(path: Path, *, blocking: bool) -> int | None:
    """An fd holding the exclusive lock of the file `path` names; None when another holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder unlinked it as we waited: lock the file the path names now


def _unlock_and_forget(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # while still held: a waiter finds the path gone or new, and locks again
    os.close(fd)
