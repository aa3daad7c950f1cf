"""Unprivileged uids for jobs: one per concurrent job slot, held with a lock file while a job runs.

RLIMIT_NPROC, file ownership and signal permission all go by uid, so two jobs that shared
one uid could count against, read and kill each other. A slot's uid is never shared while
it is held, and whatever an earlier job left running under it is killed before reuse.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.errors import ConfigError, InfraError

log = logging.getLogger(__name__)

BUILD_UIDS_ENV = "LABGATE_BUILD_UIDS"
QEMU_UIDS_ENV = "LABGATE_QEMU_UIDS"
DEFAULT_BUILD_UIDS = "64100:8"
DEFAULT_QEMU_UIDS = "64200:8"
_WAIT_S = 0.2


@dataclass(frozen=True)
class UidRange:
    first: int
    count: int

    @classmethod
    def parse(cls, text: str, what: str) -> UidRange:
        """`FIRST:COUNT`, e.g. 64100:8."""
        try:
            first, count = (int(part) for part in text.split(":"))
        except ValueError as exc:
            raise ConfigError(f"{what}: {text!r} is not FIRST:COUNT (e.g. 64100:8)") from exc
        if first < 1000 or count < 1:
            raise ConfigError(f"{what}: {text!r}: the first uid must be >= 1000 and the count >= 1")
        return cls(first, count)

    @classmethod
    def from_env(cls, name: str, default: str) -> UidRange:
        return cls.parse(os.environ.get(name) or default, name)


@dataclass(frozen=True)
class Slot:
    index: int
    uid: int | None  # None: the worker is not root, jobs run as the worker's own uid
    name: str  # stable per slot: cgroups and the like are named after it

    @property
    def gid(self) -> int | None:
        return self.uid


def host_lock_dir() -> Path:
    """Where slot locks live: one place per host, since uids are the host's, not one labgate's
    (two instances with their own data dirs must not hand out the same uid at once)."""
    if os.geteuid() == 0:
        return Path("/run/labgate/slots")
    return Path(tempfile.gettempdir()) / f"labgate-slots-{os.getuid()}"


@contextlib.contextmanager
def hold_slot(role: str, uids: UidRange, *, lock_dir: Path | None = None, wait_s: float = 3600) -> Iterator[Slot]:
    """The first free slot of this role, held until the block ends."""
    lock_dir = lock_dir or host_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for index in range(uids.count):
            lock = _try_lock(lock_dir / f"uid-{uids.first + index}.lock")
            if lock is None:
                continue
            uid = uids.first + index if os.geteuid() == 0 else None
            if uid is not None and not kill_processes_of(uid):
                # Processes of an earlier job still blocked in I/O: this slot waits until they are gone.
                log.warning("slot %s: processes of uid %s outlive SIGKILL; trying another slot", index, uid)
                os.close(lock)
                continue
            # Named by uid: a uid is the host's, so its cgroup is the same for every labgate instance.
            name = f"labgate-uid-{uid}" if uid is not None else f"labgate-{role}-{index}-{os.getuid()}"
            try:
                yield Slot(index, uid, name)
            finally:
                os.close(lock)  # releases the flock
            return
        if time.monotonic() > deadline:
            raise InfraError(f"no free {role} slot among {uids.count} within {wait_s:.0f} s")
        time.sleep(_WAIT_S)


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) pids whose real uid is `uid`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.stat().st_uid != uid:  # /proc/<pid> belongs to the process's (effective) uid
                continue
            status = Path(entry.path, "status").read_text().splitlines()
            fields = dict(line.split(":", 1) for line in status if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found.append(int(entry.name))
    return found


def kill_processes_of(uid: int, rounds: int = 50) -> bool:
    """SIGKILL every process of uid (a job's uid owns nothing else); True when none is left."""
    for _ in range(rounds):
        pids = processes_of(uid)
        if not pids:
            return True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return not processes_of(uid)
