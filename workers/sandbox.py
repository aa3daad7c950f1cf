"""Run a job's command under bubblewrap as an unprivileged uid, with every cap enforced from outside.

Shape of a sandbox (the same for builds and for QEMU):
- bwrap starts as the worker's user (often root) only to build the mount, pid, net, ipc
  and uts namespaces; the command itself is started through setpriv as the slot's uid,
  with no capabilities (bounding set cleared), no_new_privs (setuid bits do nothing) and
  the seccomp filter of workers/seccomp.py. No user namespace: the uid on the host is the
  slot's own, so RLIMIT_NPROC, file ownership and signals all treat it as a stranger.
- What it sees: /usr read-only, a synthetic /etc (passwd, group, hosts; plus the two host
  files toolchains cannot run without: ld.so.cache and the alternatives links), a fresh
  /proc with /proc/sys read-only, a minimal /dev, a size-capped tmpfs /tmp, and the job's
  own directories at their host paths (Kbuild rebuilds everything when paths change), or,
  for kernel builds, at fixed /labgate/... paths that stay the same from one build to the next.
  Nothing else of the host: no data dir, config, sockets, secrets or other jobs.
- Caps: wall time (checked while output flows too), output bytes, memory and processes of
  all the job's processes together (a cgroup; rlimits when none can be made), /tmp bytes
  (tmpfs size), disk bytes (workers/jobdisk.py), one file's size (RLIMIT_FSIZE), no cores.
- The end: every process of the job is killed (cgroup, else the pid namespace's teardown
  when bwrap's init exits), before anything reads what the job left behind.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from workers import seccomp
from workers.cgroups import JobCgroup
from workers.errors import InfraError
from workers.jobdisk import POLL_S, JobDisk
from workers.slots import Slot

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host files under /etc that toolchains need: the dynamic linker's cache (multiarch libraries
# are not on its default path) and the alternatives links (cc, c++, awk, yacc... point there).
HOST_ETC = ("ld.so.cache", "alternatives")
SANDBOX_HOME = "/tmp"
_READ_CHUNK = 1 << 16
KILL_WAIT_S = 60.0  # a process in uninterruptible I/O dies when it ends; bounded by the disk cap
_TICK_S = 0.05


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float
    max_output_bytes: int
    memory_bytes: int
    max_processes: int
    tmp_bytes: int
    max_file_bytes: int


@dataclass(frozen=True)
class SandboxOutcome:
    exit_code: int
    duration_s: float
    cap: str | None  # the cap that stopped or broke the command, in words; None if none fired
    confinement: dict[str, str]  # mechanism of each boundary, for the job's record
    setup_s: float  # time spent before the command started and after it ended
    stuck: bool = False  # some process outlived SIGKILL (blocked in I/O): its disk must not be read


@dataclass(frozen=True)
class Bind:
    """A host path bound at another path in the sandbox (a kernel build's fixed /labgate/... paths)."""

    host: Path
    dest: str  # absolute, in the sandbox
    writable: bool = False


@dataclass(frozen=True)
class SandboxMounts:
    writable: tuple[Path, ...]
    read_only: tuple[Path, ...] = ()
    etc_dir: Path | None = None  # holds the synthetic passwd, group and hosts
    dev_shm: bool = True
    # A size-capped tmpfs the worker mounted for this job (its fill can be checked afterwards),
    # bound at /tmp and /dev/shm; None: bwrap makes one of its own for each.
    tmp_dir: Path | None = None
    placed: tuple[Bind, ...] = ()  # after the others: a destination may lie below another bind


def write_synthetic_etc(etc_dir: Path, uid: int | None, user: str) -> Path:
    """passwd, group and hosts for the sandbox: the job's own user and nothing of the host's."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    number = uid if uid is not None else os.getuid()
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{number}:{number}:labgate job:{SANDBOX_HOME}"
                  ":/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\n{user}:x:{number}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
        "hostname": "labgate\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }  # fmt: skip
    for name, text in files.items():
        (etc_dir / name).write_text(text)
        (etc_dir / name).chmod(0o644)
    return etc_dir


def bwrap_argv(
    command: Sequence[str],
    *,
    cwd: Path,
    mounts: SandboxMounts,
    env: Mapping[str, str],
    uid: int | None,
    tmp_bytes: int,
    seccomp_fd: int | None,
) -> list[str]:
    """The bwrap command line (namespaces, mounts, then setpriv down to the slot's uid)."""
    bwrap = shutil.which("bwrap")
    setpriv = shutil.which("setpriv")
    if bwrap is None or setpriv is None:
        raise InfraError("bubblewrap (bwrap) and setpriv (util-linux) are needed: apt-get install bubblewrap")
    argv = [
        bwrap,
        # No --unshare-user: as root it would map the command to host root again.
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent",  # a killed worker takes its job down with it
        "--new-session",  # no TIOCSTI into the worker's terminal
        "--hostname", "labgate",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--dir", "/etc",
    ]  # fmt: skip
    for name in HOST_ETC:
        if os.path.exists(f"/etc/{name}"):
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    if mounts.etc_dir is not None:
        for entry in sorted(os.listdir(mounts.etc_dir)):
            argv += ["--ro-bind", str(mounts.etc_dir / entry), f"/etc/{entry}"]
    argv += [
        "--proc", "/proc",
        "--ro-bind", "/proc/sys", "/proc/sys",  # sysctls (core_pattern...) stay read-only whoever asks
        "--dev", "/dev",
    ]  # fmt: skip
    if mounts.tmp_dir is not None:
        argv += ["--bind", str(mounts.tmp_dir), "/tmp"]
        if mounts.dev_shm:  # one budget for both, not one each
            argv += ["--bind", str(mounts.tmp_dir), "/dev/shm"]
    else:
        argv += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
        if mounts.dev_shm:
            argv += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]
    argv += _parent_dirs([*mounts.read_only, *mounts.writable, *(Path(bind.dest) for bind in mounts.placed)])
    for path in mounts.read_only:
        argv += ["--ro-bind", str(path), str(path)]
    for path in mounts.writable:
        argv += ["--bind", str(path), str(path)]
    for bind in mounts.placed:
        if not bind.dest.startswith("/") or bind.dest.startswith(("/usr", "/proc", "/dev", "/etc", "/tmp")):
            raise InfraError(f"sandbox bind destination {bind.dest!r} must be absolute and outside system paths")
        argv += ["--bind" if bind.writable else "--ro-bind", str(bind.host), bind.dest]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--chdir", str(cwd), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv.append("--")
    if uid is not None:
        argv += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                 "--inh-caps=-all", "--bounding-set=-all", "--"]  # fmt: skip
    return argv + list(command)


def _parent_dirs(paths: Sequence[Path]) -> list[str]:
    """Traversable parents for bind targets. bwrap would copy each host parent's mode, and a
    0700 parent (/root, pytest's temp root) would lock the sandbox's uid out of its own dirs;
    these parents are the sandbox's empty directories, not the host's."""
    made: list[str] = []
    for path in paths:
        for parent in reversed(Path(path).parents):
            name = str(parent)
            if name in ("/", "/tmp") or name in made or name.startswith(("/usr", "/proc", "/dev", "/etc")):
                continue
            made.append(name)
    argv: list[str] = []
    for name in made:
        argv += ["--perms", "0755", "--dir", name]
    return argv


def run_sandboxed(
    command: Sequence[str],
    *,
    cwd: Path,
    mounts: SandboxMounts,
    env: Mapping[str, str],
    limits: SandboxLimits,
    log_path: Path,
    slot: Slot,
    cgroup: JobCgroup | None,
    disk: JobDisk | None = None,
) -> SandboxOutcome:
    """Run command in the sandbox, its output (stdout+stderr) into log_path; a cap that fires is named."""
    prepared = time.monotonic()
    full_env = {"PATH": SYSTEM_PATH, "HOME": SANDBOX_HOME, "LANG": "C.UTF-8", "PWD": str(cwd),
                "USER": "build", **env}  # fmt: skip
    seccomp_fd = _seccomp_pipe() if seccomp.is_supported() else None
    argv = bwrap_argv(command, cwd=cwd, mounts=mounts, env=full_env, uid=slot.uid, tmp_bytes=limits.tmp_bytes,
                      seccomp_fd=seccomp_fd)  # fmt: skip
    confinement = describe_confinement(slot, cgroup, disk, limits, seccomp_fd is not None,
                                       mounted_tmp=mounts.tmp_dir is not None)  # fmt: skip
    cap: str | None = None
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(seccomp_fd,) if seccomp_fd is not None else (),
                preexec_fn=lambda: _enter_limits(cgroup, limits, slot),
            )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        started = time.monotonic()
        assert process.stdout is not None
        cap = _pump(process, log, limits, disk, started)
        ended = time.monotonic()
        killed = _kill_job(process, cgroup) if cap is not None else True
        try:
            exit_code = process.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # bwrap's init waits for its namespace's last process
            exit_code, killed = -signal.SIGKILL, False
        killed = _kill_job(process, cgroup) and killed  # a job ends with its last process, whatever it started
        if not killed:
            # Blocked in I/O: SIGKILL lands when the I/O ends. That is the job's doing (it wrote
            # the data), never our outage; the slot stays out of use until they are gone.
            cap = cap or f"processes that outlived SIGKILL for {KILL_WAIT_S} s (blocked in I/O)"
        cap = cap or _cap_from_events(cgroup, limits, exit_code)
        if cap is not None:
            log.write(f"\n*** labgate: stopped: {cap} ***\n".encode())
    setup_s = (started - prepared) + (time.monotonic() - ended)
    return SandboxOutcome(exit_code, ended - started, cap, confinement, setup_s, stuck=not killed)


def describe_confinement(
    slot: Slot, cgroup: JobCgroup | None, disk: JobDisk | None, limits: SandboxLimits, filtered: bool, *,
    mounted_tmp: bool = False,
) -> dict[str, str]:
    """Which mechanism holds each boundary on this host, in words for the job's record."""
    mib = 1 << 20
    where = cgroup.mechanism if cgroup is not None else "rlimit (per process: RLIMIT_AS; per uid: RLIMIT_NPROC)"
    record = {
        "uid": f"{slot.uid} (slot {slot.index})" if slot.uid is not None else f"{os.getuid()} (worker not root)",
        "capabilities": "none (bounding set cleared), no_new_privs",
        "network": "none (own network namespace)",
        "memory": f"{limits.memory_bytes // mib} MiB, {where}",
        "processes": f"{limits.max_processes}, {where} + RLIMIT_NPROC",
        "tmp": f"tmpfs of {limits.tmp_bytes // mib} MiB"
               + (", shared with /dev/shm" if mounted_tmp else " each for /tmp and /dev/shm"),
        "file_size": f"{limits.max_file_bytes // mib} MiB per file (RLIMIT_FSIZE)",
        "output": f"{limits.max_output_bytes // mib} MiB",
        "wall_time": f"{limits.timeout_s:g} s",
        "seccomp": f"deny list of {len(seccomp.DENIED_SYSCALLS) + 2} calls, no user namespaces"
        if filtered else "none (not x86_64)",
    }  # fmt: skip
    if disk is not None:
        record["disk"] = disk.mechanism
    return record


def _seccomp_pipe() -> int:
    """A pipe holding the BPF program (a few hundred bytes: it fits in the pipe buffer)."""
    read_end, write_end = os.pipe()
    os.write(write_end, seccomp.build_filter())
    os.close(write_end)
    return read_end


def _enter_limits(cgroup: JobCgroup | None, limits: SandboxLimits, slot: Slot) -> None:
    """In the child before exec: join the job's cgroup, set the rlimits every process inherits."""
    if cgroup is not None:
        cgroup.attach(os.getpid())
    else:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    if slot.uid is not None:  # counts per uid: only meaningful for a slot's own uid
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _pump(process: subprocess.Popen[bytes], log: BinaryIO, limits: SandboxLimits, disk: JobDisk | None,
          started: float) -> str | None:  # fmt: skip
    """Copy output to the log until the command ends or a cap fires; the cap's name when one does."""
    assert process.stdout is not None
    fd: int | None = process.stdout.fileno()
    deadline = started + limits.timeout_s
    next_disk_poll = started + POLL_S
    written = 0
    while True:
        now = time.monotonic()
        if now >= deadline:  # checked on every turn, also while output keeps flowing
            return f"the wall-time cap of {limits.timeout_s:g} s"
        if disk is not None and disk.polled and now >= next_disk_poll:
            next_disk_poll = now + POLL_S
            if disk.usage_bytes() > disk.limit_bytes:
                return f"the disk cap of {disk.limit_bytes >> 20} MiB"
        wait_s = min(_TICK_S * 4, deadline - now)
        if fd is None:  # the command closed its output but may still run
            if process.poll() is not None:
                return None
            time.sleep(min(_TICK_S, wait_s))
            continue
        ready, _, _ = select.select([fd], [], [], wait_s)
        if not ready:
            continue
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            fd = None
            continue
        keep = chunk[: max(0, limits.max_output_bytes - written)]
        log.write(keep)
        written += len(keep)
        if len(keep) < len(chunk):
            return f"the output cap of {limits.max_output_bytes} bytes"


def _kill_job(process: subprocess.Popen[bytes], cgroup: JobCgroup | None) -> bool:
    """SIGKILL every process of the job; False if some are still there after KILL_WAIT_S."""
    if cgroup is not None:
        return cgroup.kill_all(wait_s=KILL_WAIT_S)
    # Without a cgroup: killing bwrap's group makes its init exit, which tears the pid namespace down.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return True


def _cap_from_events(cgroup: JobCgroup | None, limits: SandboxLimits, exit_code: int) -> str | None:
    """A cap the kernel enforced. It counts even when the command exited 0: a build whose
    processes were OOM-killed or refused a fork did not run as written, whatever it says."""
    if exit_code in (128 + signal.SIGXFSZ, -signal.SIGXFSZ):
        return f"the file size cap of {limits.max_file_bytes >> 20} MiB"
    if cgroup is None:
        return None
    events = cgroup.events()
    if events.oom_kills:
        return f"the memory cap of {limits.memory_bytes >> 20} MiB ({events.oom_kills} process(es) killed)"
    if events.pids_refused:
        return f"the process cap of {limits.max_processes} ({events.pids_refused} fork(s) refused)"
    return None
