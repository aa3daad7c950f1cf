"""A hostile build, sent through `labgate try` as a patch to the Makefile, under the base's own plan.

Each test names the attack, makes sure the host could be hurt at all (so the test can
fail), runs it, and checks the host from outside: files not written, sysctls unchanged,
secrets absent from everything the job published, processes gone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import uuid
from pathlib import Path

from tests.security.conftest import CAPS, AttackLab
from tests.security.listener import loopback_listener
from workers.slots import processes_of

HELLO_MAKEFILE = (Path(__file__).resolve().parents[2] / "examples" / "hello" / "Makefile").read_text()
BUILD_UIDS = range(64100, 64108)


def makefile_running(recipe: str) -> dict[str, str]:
    """The hello Makefile with `recipe` (shell lines) run first by the default target."""
    lines = "".join(f"\t@{line}\n" for line in recipe.strip().splitlines())  # @: make does not echo it
    makefile = HELLO_MAKEFILE.replace("all: $(TEST_BINS)\n", f"all: attack $(TEST_BINS)\n\nattack:\n{lines}", 1)
    return {"Makefile": makefile + "\n.PHONY: attack\n"}


def test_core_pattern_cannot_be_rewritten_to_run_a_script_as_host_root(attack_lab: AttackLab, tmp_path: Path) -> None:
    assert os.access("/proc/sys/kernel/core_pattern", os.W_OK), "as root the host's core_pattern is writable"
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    marker = Path(f"/tmp/labgate-pwned-{uuid.uuid4().hex}")
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running(f"""
printf '#!/bin/sh\\ntouch {marker}\\n' > $(CURDIR)/x.sh; chmod +x $(CURDIR)/x.sh
echo "|$(CURDIR)/x.sh %p" > /proc/sys/kernel/core_pattern; echo "core_pattern write: $$?"
sh -c 'kill -SEGV $$$$'; true
mount -o remount,rw /proc/sys; echo "remount /proc/sys: $$?"
"""))
    tried = attack_lab.try_(repo, patch)
    log = attack_lab.job_log(tried.pipeline_id, "build")
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before
    assert not marker.exists()
    assert "core_pattern write: 0" not in log and "Read-only file system" in log, log
    assert "remount /proc/sys: 32" in log or "must be superuser" in log, log


def test_system_directories_cannot_be_remounted_writable(attack_lab: AttackLab) -> None:
    name = f"labgate-pwned-{uuid.uuid4().hex}"
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running(f"""
mount -o remount,bind,rw /etc; touch /etc/{name}; echo "etc: $$?"
mount -o remount,rw /usr; touch /usr/{name}; echo "usr: $$?"
unshare -Urm sh -c 'mount -o remount,rw /usr && touch /usr/{name}'; echo "userns: $$?"
mount -t tmpfs none /tmp/x 2>&1; echo "setuid mount: $$?"
grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; id
"""))
    tried = attack_lab.try_(repo, patch)
    log = attack_lab.job_log(tried.pipeline_id, "build")
    assert not Path(f"/etc/{name}").exists() and not Path(f"/usr/{name}").exists()
    assert "usr: 0" not in log and "etc: 0" not in log and "userns: 0" not in log, log
    assert "CapEff:\t0000000000000000" in log and "CapBnd:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log and "Seccomp:\t2" in log
    # mount is setuid root on the host; with no_new_privs it runs as the build's own uid.
    assert "setuid mount: 32" in log or "must be superuser" in log, log
    assert "uid=0" not in log and "uid=641" in log, log
    assert tried.returncode == 0, tried.output  # the attack lines fail quietly; the build itself passes


def test_host_secrets_and_labgate_data_are_not_visible(attack_lab: AttackLab, tmp_path: Path) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    planted = Path(f"/etc/labgate-test-secret-{uuid.uuid4().hex[:8]}")
    planted.write_text(secret + "\n")
    shadow_root = Path("/etc/shadow").read_text().split("\n")[0]
    try:
        assert planted.read_text().strip() == secret  # readable by the worker's own user
        repo = attack_lab.repo()
        data = attack_lab.data_dir
        patch = attack_lab.patch(repo, makefile_running(f"""
cat /etc/shadow; cat {planted}; ls -la /etc
ls {data} {data}/artifacts {data}/worker; cat {data}/labgate.sqlite3 | head -c 200
ls $(CURDIR)/../../..; env | sort
exit 1
"""))
        tried = attack_lab.try_(repo, patch)
        log = attack_lab.job_log(tried.pipeline_id, "build")
    finally:
        planted.unlink()
    assert tried.returncode == 1, tried.output
    for published in (log, tried.output, attack_lab.build_message(tried.pipeline_id)):
        assert secret not in published and shadow_root not in published
    assert "No such file or directory" in log
    assert "LABGATE_CONFIG" not in log and "DATABASE_URL" not in log and "BROKER" not in log
    etc_listing = log[log.index("total") : log.index("total") + 600]
    assert "passwd" in etc_listing and "shadow" not in etc_listing and "labgate-test-secret" not in etc_listing


def test_host_loopback_listener_is_unreachable(attack_lab: AttackLab) -> None:
    with loopback_listener() as listener:
        probe = f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{listener.port}' && echo CONNECTED || echo REFUSED"
        # The control half: the very probe the build runs reaches the listener from outside the sandbox.
        # If it cannot (no listener, no bash /dev/tcp), the test fails here rather than pass for nothing.
        outside = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, timeout=30)
        assert outside.stdout.strip() == "CONNECTED", outside
        assert listener.wait_for(1) == 1
        repo = attack_lab.repo()
        tried = attack_lab.try_(repo, attack_lab.patch(repo, makefile_running(probe)))
        log = attack_lab.job_log(tried.pipeline_id, "build")
        assert "REFUSED" in log and "CONNECTED" not in log, log
        # Refused, not unreachable: the sandbox has a loopback of its own, where nothing listens.
        assert "Connection refused" in log, log
        assert listener.wait_for(2, timeout_s=1) == 1  # the listener saw the control connection only


def test_fork_bomb_is_held_at_the_process_cap(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running("""
i=0; while [ $$i -lt 3000 ]; do sleep 20 & i=$$((i+1)); done; wait
"""))
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _count_build_processes())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tried = attack_lab.try_(repo, patch)
    done.set()
    watcher.join()
    assert tried.returncode == 1, tried.output
    assert f"the process cap of {CAPS['max_build_processes']}" in attack_lab.build_message(tried.pipeline_id)
    assert 20 < peak[0] <= CAPS["max_build_processes"], peak
    assert sum(len(processes_of(uid)) for uid in BUILD_UIDS) == 0


def test_disk_filling_build_stops_at_the_disk_cap(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running("dd if=/dev/zero of=$(O)/big bs=1M count=3000"))
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1 and f"the disk cap of {CAPS['max_build_disk_bytes'] >> 20} MiB" in message, message
    assert "No space left on device" in attack_lab.job_log(tried.pipeline_id, "build")
    outputs = attack_lab.job_outputs(tried.pipeline_id, "build")
    assert str(outputs["confinement"]["disk"]).startswith("loop ext4")  # type: ignore[index]


def test_a_build_that_ignores_a_full_disk_or_tmp_and_exits_0_still_fails(attack_lab: AttackLab) -> None:
    for where, cap in (("$(O)/big", f"the disk cap of {CAPS['max_build_disk_bytes'] >> 20} MiB"),
                       ("/tmp/big", f"the /tmp cap of {CAPS['max_build_tmp_bytes'] >> 20} MiB")):  # fmt: skip
        repo = attack_lab.repo()
        patch = attack_lab.patch(repo, makefile_running(f"dd if=/dev/zero of={where} bs=1M count=3000 || true"))
        tried = attack_lab.try_(repo, patch)
        message = attack_lab.build_message(tried.pipeline_id)
        assert tried.returncode == 1 and cap in message, (where, message)


def test_tmp_filling_build_stops_at_the_tmp_cap(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running("dd if=/dev/zero of=/tmp/big bs=1M count=1000"))
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1 and f"the /tmp cap of {CAPS['max_build_tmp_bytes'] >> 20} MiB" in message, message


def test_memory_hog_is_killed_at_the_memory_cap(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    # Four processes of ~150 MB each: each alone is under the cap, together they are over it.
    patch = attack_lab.patch(repo, makefile_running("""
for i in 1 2 3 4; do python3 -c 'import time; x = b"x" * (150 << 20); time.sleep(30)' & done; wait
"""))
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1
    assert f"the memory cap of {CAPS['max_build_memory_bytes'] >> 20} MiB" in message, message
    outputs = attack_lab.job_outputs(tried.pipeline_id, "build")
    assert "cgroup v1" in str(outputs["confinement"]["memory"]) or "cgroup v2" in str(outputs["confinement"]["memory"])  # type: ignore[index]


def test_output_flood_stops_at_the_log_cap(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running("yes 'flood flood flood'"))
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1 and f"the output cap of {CAPS['max_log_bytes']} bytes" in message, message
    assert len(attack_lab.job_log(tried.pipeline_id, "build")) < CAPS["max_log_bytes"] + 4096


def test_double_forked_setsid_daemon_dies_with_the_build(attack_lab: AttackLab) -> None:
    marker = f"labgate-daemon-{uuid.uuid4().hex[:8]}"
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running(f"""
(setsid bash -c 'exec -a {marker} sleep 300' & ) ; (setsid bash -c 'exec -a {marker} sleep 300' & ); sleep 1
ps -eo pid,comm,args | grep {marker} | grep -v grep
"""))
    tried = attack_lab.try_(repo, patch)
    assert marker in attack_lab.job_log(tried.pipeline_id, "build")  # the daemons did start
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    assert survivors == []
    assert sum(len(processes_of(uid)) for uid in BUILD_UIDS) == 0


def _count_build_processes() -> int:
    """Processes of any build uid, in one quick pass (a stat per pid: the bomb lives a moment)."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                count += os.stat(f"/proc/{pid}").st_uid in BUILD_UIDS
    return count


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
