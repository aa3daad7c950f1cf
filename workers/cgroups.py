"""Per-job control groups: memory and process caps for all of a job's processes together, and a kill-all.

cgroup v2 is used when this process's cgroup delegates the memory and pids controllers;
otherwise the v1 memory and pids hierarchies (as on hosts with the hybrid layout). Where
neither can be written (no root, no cgroupfs) the caller falls back to rlimits and the
job's record says so. Paths come from /proc/self/cgroup and /proc/self/mountinfo, never
hard-coded: a worker in a container sits deep in the hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

_KILL_PAUSE_S = 0.01


@dataclass(frozen=True)
class CapEvents:
    """What the kernel reports the caps did during the job."""

    oom_kills: int = 0
    pids_refused: int = 0  # forks refused at the process cap
    memory_peak_bytes: int | None = None


@dataclass
class JobCgroup:
    """One job's cgroup directories (one per v1 hierarchy, or one v2 directory)."""

    version: int
    memory_dir: Path
    pids_dir: Path
    dirs: list[Path] = field(default_factory=list)

    @property
    def mechanism(self) -> str:
        return f"cgroup v{self.version}"

    def attach(self, pid: int) -> None:
        """Move pid into the job's cgroup(s); called in the child before exec."""
        for directory in self.dirs:
            with open(directory / "cgroup.procs", "w") as handle:
                handle.write(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return found

    def kill_all(self, wait_s: float = 2.0) -> bool:
        """SIGKILL every process of the job until none is left; False if some are still there after wait_s
        (a process blocked in I/O dies only when the I/O ends)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.memory_dir / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + wait_s
        pause = _KILL_PAUSE_S
        while True:
            left = self.pids()
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in left:  # a fork between read and kill lands in the cgroup: the next round gets it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def events(self) -> CapEvents:
        if self.version == 2:
            memory = _read_keyed(self.memory_dir / "memory.events")
            pids = _read_keyed(self.pids_dir / "pids.events")
            peak = _read_int(self.memory_dir / "memory.peak")
        else:
            memory = _read_keyed(self.memory_dir / "memory.oom_control")
            pids = _read_keyed(self.pids_dir / "pids.events")
            peak = _read_int(self.memory_dir / "memory.max_usage_in_bytes")
        return CapEvents(oom_kills=memory.get("oom_kill", 0), pids_refused=pids.get("max", 0), memory_peak_bytes=peak)

    def remove(self) -> None:
        self.kill_all()
        for directory in self.dirs:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still busy for a moment after the last process exited
                    time.sleep(0.02)


def create_job_cgroup(name: str, *, memory_bytes: int, max_pids: int) -> JobCgroup | None:
    """A fresh cgroup named `name` below this process's own, with both caps set; None if unavailable."""
    mounts = _cgroup_mounts()
    own = _own_cgroups()
    v2_mount = mounts.get("cgroup2")
    if v2_mount is not None and "" in own:
        created = _create_v2(v2_mount / own[""].lstrip("/"), name, memory_bytes, max_pids)
        if created is not None:
            return created
    if "memory" in mounts and "pids" in mounts and "memory" in own and "pids" in own:
        return _create_v1(mounts, own, name, memory_bytes, max_pids)
    return None


def _create_v2(parent: Path, name: str, memory_bytes: int, max_pids: int) -> JobCgroup | None:
    try:
        delegated = set((parent / "cgroup.subtree_control").read_text().split())
    except OSError:
        return None
    if not {"memory", "pids"} <= delegated:
        # Enabling controllers in a cgroup that holds processes (ours) fails; only a
        # delegated subtree (systemd Delegate=yes, a container's root) can be used.
        return None
    directory = parent / name
    try:
        _fresh_dir(directory)
        (directory / "memory.max").write_text(str(memory_bytes))
        with contextlib.suppress(OSError):  # no swap configured: the file may be absent
            (directory / "memory.swap.max").write_text("0")
        (directory / "pids.max").write_text(str(max_pids))
    except OSError:
        with contextlib.suppress(OSError):
            directory.rmdir()
        return None
    return JobCgroup(2, directory, directory, [directory])


def _create_v1(
    mounts: dict[str, Path], own: dict[str, str], name: str, memory_bytes: int, max_pids: int
) -> JobCgroup | None:
    memory = mounts["memory"] / own["memory"].lstrip("/") / name
    pids = mounts["pids"] / own["pids"].lstrip("/") / name
    made: list[Path] = []
    try:
        for directory in (memory, pids):
            _fresh_dir(directory)
            made.append(directory)
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        with contextlib.suppress(OSError):  # swap accounting off: memsw files are absent
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        (pids / "pids.max").write_text(str(max_pids))
    except OSError:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        return None
    return JobCgroup(1, memory, pids, made)


def _fresh_dir(directory: Path) -> None:
    """Create the cgroup; one a killed worker left behind is emptied and reused."""
    try:
        directory.mkdir()
    except FileExistsError:
        JobCgroup(0, directory, directory, [directory]).kill_all()


def _cgroup_mounts() -> dict[str, Path]:
    """v1 controller name (or "cgroup2") -> mount point, from /proc/self/mountinfo."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            point = Path(fields[4].replace("\\040", " "))
            if tail[0] == "cgroup2":
                mounts.setdefault("cgroup2", point)
            elif tail[0] == "cgroup":
                for option in tail[2].split(","):
                    if option in ("memory", "pids"):
                        mounts.setdefault(option, point)
    return mounts


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ("" is the v2 unified hierarchy)."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _read_keyed(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
    return values


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
