"""A job's disk: a loop filesystem of fixed size where the host allows it, else a polled du."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from workers.jobdisk import disk_usage, open_job_disk

MIB = 1 << 20


@pytest.mark.needs("root", "loop mounts need root (the worker's case in CI)")
def test_a_loop_disk_says_enospc_at_the_cap_and_is_gone_after(tmp_path: Path) -> None:
    disk = open_job_disk(tmp_path, 32 * MIB)
    try:
        assert disk.image is not None and os.path.ismount(disk.root), "loop mounts work on this host"
        wrote = subprocess.run(["dd", "if=/dev/zero", f"of={disk.root}/big", "bs=1M", "count=200"],
                               capture_output=True, text=True)  # fmt: skip
        assert wrote.returncode != 0 and "No space left on device" in wrote.stderr
        assert disk.is_full()
        assert 30 * MIB < (disk.root / "big").stat().st_size < 40 * MIB
    finally:
        disk.release()
    assert not disk.root.exists() and not (tmp_path / "disk.img").exists()


@pytest.mark.needs("root", "loop mounts need root")
def test_a_stale_mount_of_a_killed_worker_is_released(tmp_path: Path) -> None:
    stale = open_job_disk(tmp_path, 16 * MIB)
    (stale.root / "left").write_text("over")
    fresh = open_job_disk(tmp_path, 16 * MIB)  # as the redelivered job does
    try:
        assert not (fresh.root / "left").exists() and os.path.ismount(fresh.root)
    finally:
        fresh.release()


def test_disk_usage_counts_blocks_and_never_follows_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * (2 * MIB))
    (tmp_path / "link").symlink_to("/usr")
    assert 2 * MIB <= disk_usage(tmp_path) < 3 * MIB
