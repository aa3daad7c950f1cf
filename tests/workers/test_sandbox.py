"""The sandbox itself: identity, what it sees, and each cap, run directly (no pipeline around it)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.cgroups import JobCgroup, create_job_cgroup
from workers.jobdisk import JobDisk
from workers.sandbox import SandboxLimits, SandboxMounts, SandboxOutcome, run_sandboxed, write_synthetic_etc
from workers.slots import Slot, kill_processes_of

MIB = 1 << 20
TEST_UID = 64107  # the last build slot's uid: no build of these tests runs there
LIMITS = SandboxLimits(timeout_s=20, max_output_bytes=MIB, memory_bytes=256 * MIB, max_processes=64,
                       tmp_bytes=8 * MIB, max_file_bytes=64 * MIB)  # fmt: skip
root_only = pytest.mark.needs("root", "the worker runs as root in CI; uids and cgroups need it")


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    work.mkdir()
    if os.geteuid() == 0:
        os.chown(work, TEST_UID, TEST_UID)
    yield work
    if os.geteuid() == 0:
        kill_processes_of(TEST_UID)


def _slot() -> Slot:
    return Slot(7, TEST_UID if os.geteuid() == 0 else None, "labgate-test-sandbox")


def _run(tmp_path: Path, work: Path, script: str, *, limits: SandboxLimits = LIMITS, cgroup: JobCgroup | None = None,
         disk: JobDisk | None = None) -> tuple[SandboxOutcome, str]:  # fmt: skip
    etc = write_synthetic_etc(tmp_path / "etc", _slot().uid, "build")
    log = tmp_path / "log"
    outcome = run_sandboxed(["sh", "-c", script], cwd=work, mounts=SandboxMounts(writable=(work,), etc_dir=etc),
                            env={"X": "1"}, limits=limits, log_path=log, slot=_slot(), cgroup=cgroup,
                            disk=disk)  # fmt: skip
    return outcome, log.read_text()


@root_only
def test_runs_as_the_slot_uid_with_no_capabilities(tmp_path: Path, work: Path) -> None:
    outcome, log = _run(tmp_path, work, "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
    assert outcome.exit_code == 0, log
    assert log.split("\n")[0] == str(TEST_UID)
    assert "CapEff:\t0000000000000000" in log and "CapBnd:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log and "Seccomp:\t2" in log
    assert outcome.confinement["uid"] == f"{TEST_UID} (slot 7)"


def test_only_named_paths_are_writable_and_etc_is_synthetic(tmp_path: Path, work: Path) -> None:
    script = ("touch ok && touch /usr/nope; touch /etc/nope; echo > /proc/sys/kernel/domainname;"
              " ls /etc; echo X=$X HOME=$HOME; cat /etc/passwd")  # fmt: skip
    outcome, log = _run(tmp_path, work, script)
    assert (work / "ok").exists()
    assert log.count("Read-only file system") >= 2, log
    assert "X=1 HOME=/tmp" in log
    etc = log.split("\n")
    assert "passwd" in etc and "group" in etc and "shadow" not in etc and "alternatives" in etc
    assert f"build:x:{_slot().uid or os.getuid()}:" in log


@root_only
def test_vsock_and_odd_socket_families_are_refused_and_sync_calls_do_nothing(tmp_path: Path, work: Path) -> None:
    # AF_VSOCK is not per network namespace; fsync on a pipe is EINVAL unless the filter made it a no-op.
    (work / "probe.py").write_text(
        "import os, socket\n"
        "for fam in (1, 2, 10, 16, 40, 17):\n"
        "    try:\n"
        "        socket.socket(fam, socket.SOCK_STREAM if fam == 1 else socket.SOCK_DGRAM).close()\n"
        "        print(fam, 'ok')\n"
        "    except OSError as e:\n"
        "        print(fam, e.errno)\n"
        "r, w = os.pipe()\n"
        "print('fsync', os.fsync(w))\n"
        "os.sync()\n"
    )
    outcome, log = _run(tmp_path, work, "python3 probe.py")
    assert log.split("\n")[:7] == ["1 ok", "2 ok", "10 ok", "16 ok", "40 97", "17 97", "fsync None"], log


@root_only
def test_user_namespaces_and_io_uring_are_refused_by_seccomp(tmp_path: Path, work: Path) -> None:
    outcome, log = _run(tmp_path, work, "unshare -U true; echo userns=$?; python3 -c 'import ctypes;"
                        " l = ctypes.CDLL(None, use_errno=True); print(\"io_uring\", l.syscall(425, 1, 0),"
                        " ctypes.get_errno())'")  # fmt: skip
    assert "userns=1" in log and "io_uring -1 1" in log, log


def test_timeout_fires_while_output_keeps_flowing(tmp_path: Path, work: Path) -> None:
    started = time.monotonic()
    limits = SandboxLimits(**{**LIMITS.__dict__, "timeout_s": 2})
    outcome, log = _run(tmp_path, work, "while :; do echo tick; sleep 0.05; done", limits=limits)
    assert outcome.cap == "the wall-time cap of 2 s" and time.monotonic() - started < 8
    assert "tick" in log and "stopped: the wall-time cap of 2 s" in log


def test_timeout_fires_when_the_command_closes_its_output(tmp_path: Path, work: Path) -> None:
    limits = SandboxLimits(**{**LIMITS.__dict__, "timeout_s": 2})
    outcome, _ = _run(tmp_path, work, "exec >/dev/null 2>&1; sleep 60", limits=limits)
    assert outcome.cap == "the wall-time cap of 2 s" and outcome.duration_s < 5


def test_output_past_the_cap_stops_the_command(tmp_path: Path, work: Path) -> None:
    limits = SandboxLimits(**{**LIMITS.__dict__, "max_output_bytes": 1000})
    outcome, log = _run(tmp_path, work, "yes", limits=limits)
    assert outcome.cap == "the output cap of 1000 bytes"
    assert len(log) < 1200


def test_exit_status_is_reported(tmp_path: Path, work: Path) -> None:
    outcome, _ = _run(tmp_path, work, "exit 3")
    assert outcome.exit_code == 3 and outcome.cap is None


@root_only
def test_a_setsid_daemon_dies_with_the_command(tmp_path: Path, work: Path) -> None:
    cgroup = create_job_cgroup("labgate-test-sandbox", memory_bytes=256 * MIB, max_pids=64)
    assert cgroup is not None, "this host has writable cgroups (v1 memory and pids, or delegated v2)"
    try:
        outcome, log = _run(tmp_path, work, "(setsid sh -c 'sleep 300' &); (setsid sh -c 'sleep 301' &); echo started",
                            cgroup=cgroup)  # fmt: skip
        assert outcome.exit_code == 0 and "started" in log
        assert cgroup.pids() == set()
        assert not any("sleep 30" in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())
    finally:
        cgroup.remove()


@root_only
def test_memory_of_all_processes_together_is_capped(tmp_path: Path, work: Path) -> None:
    cgroup = create_job_cgroup("labgate-test-sandbox", memory_bytes=128 * MIB, max_pids=64)
    assert cgroup is not None
    try:
        script = "for i in 1 2 3; do python3 -c 'import time; x = b\"x\" * (60 << 20); time.sleep(5)' & done; wait"
        limits = SandboxLimits(**{**LIMITS.__dict__, "memory_bytes": 128 * MIB})
        outcome, _ = _run(tmp_path, work, script, cgroup=cgroup, limits=limits)
    finally:
        cgroup.remove()
    assert outcome.cap is not None and outcome.cap.startswith("the memory cap of 128 MiB"), outcome


def test_without_a_cgroup_rlimits_hold_one_process(tmp_path: Path, work: Path) -> None:
    limits = SandboxLimits(**{**LIMITS.__dict__, "memory_bytes": 96 * MIB})
    outcome, log = _run(tmp_path, work, "python3 -c 'x = b\"x\" * (200 << 20)'; echo rc=$?", limits=limits)
    assert "MemoryError" in log and "rc=1" in log, log
    assert "rlimit" in outcome.confinement["memory"]


def test_polled_disk_cap_stops_a_writer(tmp_path: Path, work: Path) -> None:
    disk = JobDisk(work, 8 * MIB, None)
    outcome, _ = _run(tmp_path, work, "while :; do head -c 1048576 /dev/zero >> big; sleep 0.05; done", disk=disk)
    assert outcome.cap == "the disk cap of 8 MiB"
    assert "du polled" in outcome.confinement["disk"]


def test_tmp_is_a_small_tmpfs(tmp_path: Path, work: Path) -> None:
    outcome, log = _run(tmp_path, work, "dd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1; df -k /tmp | tail -1")
    assert "No space left on device" in log
    assert outcome.confinement["tmp"].startswith("tmpfs of 8 MiB")


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
