"""Run a command under bubblewrap: no network, few writable paths, time and memory caps."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.errors import InfraError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MEMORY_BYTES = 8 * 1024**3


@dataclass(frozen=True)
class SandboxOutcome:
    exit_code: int
    timed_out: bool
    duration_s: float
    log_truncated: bool


def bwrap_argv(
    command: Sequence[str],
    *,
    cwd: Path,
    writable: Sequence[Path],
    env: Mapping[str, str],
) -> list[str]:
    """The bwrap command line. Writable paths keep their host paths inside the
    sandbox: Kbuild rebuilds everything when absolute paths change."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise InfraError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    argv = [
        bwrap,
        "--unshare-all",  # includes the network: the sandbox sees only its own lo
        "--die-with-parent",  # a killed worker takes its build down with it
        "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--ro-bind", "/etc", "/etc",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
    ]  # fmt: skip
    for path in writable:
        argv += ["--bind", str(path), str(path)]
    argv += ["--chdir", str(cwd), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv + ["--", *command]


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_sandboxed(
    command: Sequence[str],
    *,
    cwd: Path,
    writable: Sequence[Path],
    env: Mapping[str, str],
    timeout_s: float,
    log_path: Path,
    max_log_bytes: int,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> SandboxOutcome:
    """Run command in the sandbox, its output (stdout+stderr) into log_path, capped."""
    full_env = {"PATH": SYSTEM_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PWD": str(cwd), **env}
    argv = bwrap_argv(command, cwd=cwd, writable=writable, env=full_env)
    started = time.monotonic()
    truncated = False
    timed_out = False
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _limit_memory(memory_bytes),
        )
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        written = 0
        deadline = started + timeout_s
        while True:
            chunk = _read_available(process.stdout.fileno())
            if chunk:
                keep = chunk[: max(0, max_log_bytes - written)]
                log.write(keep)
                written += len(keep)
                truncated = truncated or len(keep) < len(chunk)
                continue
            if chunk is None:  # end of output
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.02)
        if timed_out:
            _kill_group(process)
            log.write(f"\n*** labgate: killed after the {timeout_s:.0f} s cap ***\n".encode())
        exit_code = process.wait()
        if truncated:
            log.write(f"\n*** labgate: log cut at {max_log_bytes} bytes ***\n".encode())
    return SandboxOutcome(exit_code, timed_out, time.monotonic() - started, truncated)


def _read_available(fd: int) -> bytes | None:
    """Bytes ready on fd; b"" when nothing is ready yet; None at end of file."""
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""
    return data if data else None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
