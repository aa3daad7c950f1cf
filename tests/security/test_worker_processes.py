"""What a patch cannot reach, checked directly during a `labgate try`: every job worker's and QEMU's
/proc/<pid>/status and environ (uid, capabilities, environment). The QEMUs are the lab's own (their command
line names its data directory), so other tests' QEMUs may run beside it (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.processes import children_of
from tests.security.conftest import AttackLab

SECRET_NAMES = ("LABGATE_CONFIG", "LABGATE_DATABASE_URL", "LABGATE_DATA_DIR", "GITHUB", "TOKEN", "SECRET")


def _read(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _status(pid: int) -> dict[str, str]:
    lines = _read(pid, "status").decode(errors="replace").splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _environ(pid: int) -> dict[str, str]:
    items = _read(pid, "environ").split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)


def test_job_workers_hold_no_secret_and_qemu_runs_unprivileged_and_sandboxed(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    plan = (repo / ".labgate" / "plan.yaml").read_text()
    plan = plan.replace("run: ./tests/test_skip", "run: ./tests/test_skip; sleep 4")
    (repo / ".labgate" / "plan.yaml").write_text(plan)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=m", "-c", "user.email=m@m", "commit", "-qam", "slow"],
                   check=True)  # fmt: skip
    seen_qemu: dict[int, tuple[dict[str, str], str]] = {}
    stop = threading.Event()
    ours = str(attack_lab.data_dir)  # its kernel, initramfs and job directory are under it

    def watch() -> None:
        while not stop.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit() and b"qemu-system" in _read(int(entry), "cmdline")[:200]:
                    pid = int(entry)
                    cmdline = _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace")
                    if cmdline.startswith("/usr/bin/qemu-system") and ours in cmdline and pid not in seen_qemu:
                        seen_qemu[pid] = (_status(pid), cmdline)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tried = subprocess.run([sys.executable, "-m", "bot.cli", "try", str(repo), "--ref", "main", "--config",
                            str(attack_lab.config_path)], capture_output=True, text=True, timeout=300,
                           cwd=REPO_ROOT)  # fmt: skip
    stop.set()
    watcher.join()
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert seen_qemu, "QEMU was never seen running"
    for status, cmdline in seen_qemu.values():
        assert status["Uid"].split()[0] != "0" and status["Uid"].split()[0] in {str(u) for u in range(64200, 64208)}
        assert status["CapEff"] == "0000000000000000" and status["CapBnd"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" in cmdline
        assert "-nic none" in cmdline and not re.search(r"-(netdev|hda|drive|usb|device (virtio|vfio))", cmdline)

    workers = {child.name: child for child in attack_lab.services.supervisor.children}
    for name, child in workers.items():
        if not name.startswith("worker ") or name in ("worker control", "worker results"):
            continue
        assert child.process is not None
        pids = [child.process.pid, *children_of(child.process.pid)]
        for pid in pids:
            env = _environ(pid)
            leaked = [key for key in env if any(word in key for word in SECRET_NAMES)]
            assert leaked == [], (name, leaked)
            assert env["LABGATE_WORKER_ROLE"] in name
            broker = env["LABGATE_BROKER_URL"]
            assert "labgate-admin" not in broker and f"-{env['LABGATE_WORKER_ROLE']}:" in broker, (name, broker)
    control = workers["worker control"]
    assert control.process is not None and "LABGATE_DATABASE_URL" in _environ(control.process.pid)
