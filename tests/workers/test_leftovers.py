"""A killed job's mounts and directory are released by the next sweep, and a live job's never are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.processes import stop_process
from tests.requirements import need
from workers.jobdisk import mount_job_tmp, open_job_disk
from workers.leftovers import holding_job, job_lock_path, sweep_orphans

# A process that owns job 7 as a job worker's pool process does, until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from workers.leftovers import holding_job
with holding_job(Path(sys.argv[1]), 7):
    print("held", flush=True)
    time.sleep(600)
"""


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [point for point in points if point.startswith(str(path))]


def start_holder(work_root: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work_root)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_killed_jobs_disk_tmp_and_directory_are_released_and_a_live_ones_kept(tmp_path: Path) -> None:
    need("root", "the job's disk is a loop mount and its /tmp a tmpfs")
    job_dir = tmp_path / "work" / "job-7"
    holder = start_holder(tmp_path)
    try:
        disk = open_job_disk(job_dir, 8 << 20)
        assert disk.image is not None, "no loop mount: the test would prove nothing"
        (disk.root / "build-output").write_bytes(b"a change's bytes")
        assert mount_job_tmp(job_dir, 1 << 20) is not None
        assert len(mounts_under(job_dir)) == 2

        assert sweep_orphans(tmp_path) == []  # its process lives: nothing of it is touched
        assert len(mounts_under(job_dir)) == 2 and (disk.root / "build-output").exists()

        os.kill(holder.pid, signal.SIGKILL)  # as a cancelled or crashed job's process dies: no clean-up
        holder.wait(timeout=10)
        assert sweep_orphans(tmp_path) == [7]
        assert mounts_under(job_dir) == []
        assert not job_dir.exists() and not job_lock_path(tmp_path, 7).exists()
        assert sweep_orphans(tmp_path) == []
    finally:
        holder.kill()
        holder.wait(timeout=10)
        sweep_orphans(tmp_path)


def test_a_job_directory_with_no_lock_at_all_is_a_leftover(tmp_path: Path) -> None:
    """What a worker from before the locks left, or one killed between making the lock and the dir."""
    stale = tmp_path / "work" / "job-3" / "src"
    stale.mkdir(parents=True)
    (tmp_path / "work" / "job-x").mkdir()  # not a job's: left alone
    (tmp_path / "work" / "mirror.git").mkdir()
    assert sweep_orphans(tmp_path) == [3]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["job-x", "mirror.git"]


def test_a_job_that_waited_for_a_sweep_locks_the_new_file_not_the_unlinked_one(tmp_path: Path) -> None:
    """A delivery that starts while a sweep holds its job's lock waits, then owns the job under a lock
    that a second sweep can see is held (not the file the first sweep unlinked)."""
    (tmp_path / "work" / "job-5").mkdir(parents=True)
    started, go_on, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def delivery() -> None:
        started.set()
        with holding_job(tmp_path, 5):
            seen.append(sweep_orphans(tmp_path))  # a sweep while we run: our job is not its
            go_on.wait(10)
        done.set()

    with holding_job(tmp_path, 5):  # stands for a sweep holding job 5
        thread = threading.Thread(target=delivery)
        thread.start()
        started.wait(5)
        time.sleep(0.2)
        assert not seen  # it waits
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == [[]]
    go_on.set()
    assert done.wait(10)
    thread.join(5)


def test_a_build_worker_releases_a_killed_jobs_mount_when_it_starts(tmp_path: Path, redis_db_url: str) -> None:
    """The wiring: a real `labgate worker` for the build queue sweeps its work dir as it comes up."""
    need("root", "the leftover is a tmpfs mount")
    job_dir = tmp_path / "work" / "job-11"
    assert mount_job_tmp(job_dir, 1 << 20) is not None
    env = {**os.environ, "LABGATE_WORK_DIR": str(tmp_path), "LABGATE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "LABGATE_BROKER_URL": redis_db_url, "LABGATE_WORKER_ROLE": "build", "LABGATE_LONGEST_JOB_S": "60"}
    worker = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker", "--queues", "build"], env=env,
                              cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (mounts_under(job_dir) or job_dir.exists()) and time.monotonic() < deadline:
            assert worker.poll() is None, "the worker exited"
            time.sleep(0.2)
        assert mounts_under(job_dir) == [] and not job_dir.exists()
    finally:
        stop_process(worker)
        sweep_orphans(tmp_path)
