"""Per-job cgroups on this host: found from /proc, caps written, every process killed, events read."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from workers.cgroups import create_job_cgroup

pytestmark = pytest.mark.needs("root", "cgroups are written by the root worker (CI runs as root)")


def test_a_job_cgroup_caps_processes_and_kills_a_detached_daemon() -> None:
    cgroup = create_job_cgroup("labgate-test-cgroup", memory_bytes=64 << 20, max_pids=10)
    assert cgroup is not None, "this host has writable cgroups (v1 memory+pids, or delegated v2)"
    try:
        assert (cgroup.pids_dir / "pids.max").read_text().strip() == "10"
        started = subprocess.run(
            ["sh", "-c", "for i in $(seq 30); do (setsid sleep 60 >/dev/null 2>&1 &) 2>/dev/null; done; echo done"],
            preexec_fn=lambda: cgroup.attach(os.getpid()), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "done" in started.stdout
        left = cgroup.pids()
        assert 0 < len(left) <= 10  # the daemons outlived their shell, inside the cap
        assert cgroup.events().pids_refused > 0
        assert cgroup.kill_all()
        assert cgroup.pids() == set()
    finally:
        cgroup.remove()
    assert not cgroup.pids_dir.exists() and not cgroup.memory_dir.exists()


def test_a_stale_cgroup_of_a_killed_worker_is_emptied_and_reused() -> None:
    first = create_job_cgroup("labgate-test-cgroup", memory_bytes=64 << 20, max_pids=10)
    assert first is not None
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: first.attach(os.getpid()))
    try:
        second = create_job_cgroup("labgate-test-cgroup", memory_bytes=32 << 20, max_pids=5)
        assert second is not None and second.pids() == set()
        assert sleeper.wait(timeout=5) == -9
        assert (second.pids_dir / "pids.max").read_text().strip() == "5"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        first.remove()


def test_memory_cap_kills_inside_the_cgroup_only() -> None:
    cgroup = create_job_cgroup("labgate-test-cgroup", memory_bytes=48 << 20, max_pids=10)
    assert cgroup is not None
    try:
        started = time.monotonic()
        done = subprocess.run(["python3", "-c", "x = b'x' * (200 << 20)"], capture_output=True, timeout=60,
                              preexec_fn=lambda: cgroup.attach(os.getpid()))  # fmt: skip
        assert done.returncode == -9 and time.monotonic() - started < 30
        assert cgroup.events().oom_kills >= 1
    finally:
        cgroup.remove()
