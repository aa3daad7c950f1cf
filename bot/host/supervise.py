"""Child processes labgate starts itself (redis, workers, web): start, watch, restart, stop."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


# What a child that must not inherit the supervisor's environment (a job worker) still gets:
# where things are and how to talk, never a secret the supervisor was started with.
CLEAN_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
                   "LABGATE_CACHE_DIR", "LABGATE_KERNEL", "LABGATE_LOG_LEVEL", "LABGATE_WORKER_LOG_LEVEL")  # fmt: skip


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    inherit_env: bool = True

    def full_env(self) -> dict[str, str]:
        if self.inherit_env:
            return {**os.environ, **self.env}
        return {**{k: os.environ[k] for k in CLEAN_ENV_NAMES if k in os.environ}, **self.env}


@dataclass
class Supervisor:
    """Owns a set of children; `stop` ends each one's whole process group."""

    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *,
              inherit_env: bool = True) -> Child:  # fmt: skip
        child = Child(name, list(argv), dict(env), log_path, inherit_env=inherit_env)
        self._spawn(child)
        self.children.append(child)
        return child

    def adopt(self, name: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.children.append(Child(name, list(map(str, process.args)), {}, log_path, process))  # type: ignore[arg-type]

    def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with child.log_path.open("ab") as log_file:
            child.process = subprocess.Popen(
                child.argv, env=child.full_env(), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip

    def restart_dead(self) -> list[str]:
        """Restart children that exited; the names restarted."""
        restarted = []
        for child in self.children:
            if child.process is not None and child.process.poll() is not None and child.env:
                log.warning("%s exited with %s; restarting", child.name, child.process.returncode)
                child.restarts += 1
                self._spawn(child)
                restarted.append(child.name)
        return restarted

    def stop(self, grace_s: float = 10.0) -> None:
        """TERM every child group (Celery finishes or requeues its job), KILL what lingers."""
        for child in reversed(self.children):
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            if child.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervising process dies, even by SIGKILL,
    so a killed `labgate try` or `labgate up` leaves no worker consuming from the broker."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def labgate_argv(*args: str) -> list[str]:
    """Run a labgate subcommand with this same interpreter (works without the console script)."""
    return [sys.executable, "-m", "bot.cli", *args]
