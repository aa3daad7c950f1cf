"""Looking at processes from outside, for tests that check what a job left running."""

from __future__ import annotations

import subprocess
from pathlib import Path


def children_of(pid: int) -> list[int]:
    """Pids whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL if it is still there after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
