"""Boot a kernel + initramfs on QEMU through labgrid's QEMUDriver; capture the console and the runner's port.

Two serial ports: the first is labgrid's console (the kernel's console, kept whole for crash
detection), the second is the DUT runner's own port, the only source of results. Both are read
under the boot's caps (lab/caps.py). QEMU runs with its seccomp sandbox on, no host device, and
no NIC at all unless the request grants a network: then a user-mode (slirp) NIC whose sockets
are QEMU's own, so inside the caller's network namespace. When the caller
gives a confinement prefix (bwrap + setpriv, built by the worker), as an unprivileged uid
in a mount namespace of its own. Its sockets live in a runtime directory owned by that uid:
labgrid makes its console socket in a private mkdtemp() directory, which QEMU under
another uid could not reach, so that directory is made inside ours and handed over.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2
from labgrid import Environment

from lab.arch import Arch, arch_named
from lab.caps import CAP_ENDINGS, END_MARKER, BootCaps, Ended, Port, PortsReading, cap_message
from lab.errors import LabSetupError

__all__ = ["END_MARKER", "BootOutcome", "BootRequest", "Ended", "LabSetupError", "boot_caps", "run_boot"]

log = logging.getLogger(__name__)

# The DUT's NIC when a network is granted: e1000, which most kernels have (built in by x86_64's
# defconfig, a module in Debian's), on QEMU's user-mode network. Its gateway 10.0.2.2 forwards to
# the loopback of QEMU's network namespace: the sandbox's, never the host's.
NETWORK_NIC = "user,model=e1000"
_PRINTED_LINE = re.compile(r"^(?!# labgate: |# qemu: )[^\n]*\S", re.M)  # a line the target printed
QEMU_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# TCG's buffer of translated code. QEMU's default is 1 GiB (an eighth of the host's memory at most), and a
# guest that keeps writing fresh code (self-modifying code, a JIT: any test binary, unprivileged) fills it
# all; past the job's memory allowance QEMU is killed, which reads as qemu-crashed (ours, retried, never
# the change's). Bounded, QEMU's own memory stays well within that allowance (workers/testjob.py).
TCG_CODE_BUFFER_MIB = 256
SECCOMP_FD = 9  # the wrapper opens the filter here for bwrap --seccomp (dash knows fds 0-9 only)

_ENVS = Path(__file__).resolve().parent / "envs"
_READ_POLL_S = 1.0  # upper bound on one read(); data and QEMU's exit wake it sooner
_ACCEPT_CAP_S = 15.0  # QEMU connects the serial socket within ms; longer means it died
_STOP_WAIT_S = 10.0
_EXIT_WAIT_S = 3.0


@dataclass(frozen=True)
class BootRequest:
    kernel: Path
    initramfs: Path
    work_dir: Path  # where the env yaml, the QEMU wrapper and the logs go
    timeout_s: float  # whole boot cap, from qemu.on()
    boot_timeout_s: float | None = None  # qemu.on() to the runner's first byte; None: only timeout_s
    silence_timeout_s: float | None = None  # no byte on either port; None: only timeout_s
    network: bool = False  # a user-mode NIC (in the caller's network namespace); False: no NIC at all
    memory: str = "512M"
    machine: str = "q35"
    cpu: str = "qemu64"
    boot_args: str | None = None  # None: the arch's console and panic=-1
    max_console_bytes: int = 16 * 1024 * 1024
    max_runner_bytes: int = 16 * 1024 * 1024  # the runner's port carries the commands' output
    arch: str = "x86_64"  # lab/arch.py: the QEMU binary, the console and the runner's port
    qemu: str | None = None  # name on PATH or absolute path; None: the arch's
    accel: str = "tcg"  # the only accelerator that boots stock guests on kvm-pvm hosts
    # argv that runs QEMU confined (bwrap ... -- setpriv --reuid ... --); () runs it directly.
    confine: tuple[str, ...] = ()
    sandbox_uid: int | None = None  # owner of the runtime dir and sockets (QEMU's uid)
    # Sockets live here; the default is a fresh short path in /tmp (AF_UNIX paths are capped at
    # 108 bytes). A caller that confines QEMU makes it and binds it writable inside `confine`.
    runtime_dir: Path | None = None
    seccomp_filter: bytes | None = None  # opened on SECCOMP_FD for `confine`
    cgroup_procs: tuple[Path, ...] = ()  # QEMU joins these cgroups before it starts


@dataclass(frozen=True)
class BootOutcome:
    console: str  # whole console, CR stripped, truncated with a marker line past the cap
    runner: str  # what the runner wrote on its own port (the KTAP document), CR stripped
    ended: Ended
    boot_s: float  # from qemu.on() to the end of the runner's document
    qemu_status: int | None  # QEMU's exit status when it exited on its own (0: the guest powered off)
    setup_s: float  # env file, labgrid environment, driver activation and sockets, before on()

    @property
    def reached_runner(self) -> bool:
        """Whether the DUT runner wrote anything on its port: the boot got as far as the tests."""
        return bool(self.runner)

    @property
    def console_silent(self) -> bool:
        """Whether the target printed nothing on its console (labgate's own notes at its end aside)."""
        return _PRINTED_LINE.search(self.console) is None


class _Capped(Protocol):
    @property
    def timeout_s(self) -> float: ...
    @property
    def boot_timeout_s(self) -> float | None: ...
    @property
    def silence_timeout_s(self) -> float | None: ...
    @property
    def max_console_bytes(self) -> int: ...
    @property
    def max_runner_bytes(self) -> int: ...


def boot_caps(req: _Capped) -> BootCaps:
    """The caps a boot or board request carries."""
    return BootCaps(job_s=req.timeout_s, boot_s=req.boot_timeout_s, silence_s=req.silence_timeout_s,
                    console_bytes=req.max_console_bytes, runner_bytes=req.max_runner_bytes)  # fmt: skip


def run_boot(req: BootRequest) -> BootOutcome:
    """Boot once, read both ports until the runner's end marker or a cap, stop QEMU, return it all.

    A failing guest is an outcome, never an exception; LabSetupError means the host
    cannot boot anything (missing kernel, QEMU, setpriv, or QEMU never came up).
    """
    started = time.monotonic()
    for what, path in (("kernel", req.kernel), ("initramfs", req.initramfs)):
        if not Path(path).is_file():
            raise LabSetupError(f"{what} {path} is not a file; build or fetch it first")
    work_dir = Path(req.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    runtime = _runtime_dir(req)
    arch = arch_named(req.arch)
    tools = _host_tools(req.qemu or arch.qemu, arch.qemu_package)
    listener = _listen(runtime / "runner.sock", req.sandbox_uid)
    try:
        wrapper = _write_qemu_wrapper(work_dir, tools, req)
        env_file = work_dir / "labgrid-env.yaml"
        env_file.write_text(render_env(req, wrapper, runtime / "runner.sock"))
        target = Environment(str(env_file)).get_target("main")
        qemu: Any = None
        try:
            qemu = _activate(target, runtime, req.sandbox_uid)
            setup_s = time.monotonic() - started
            raw, runner_raw, ended, boot_s, exit_status = _boot(qemu, listener, req)
        finally:
            _release(target, qemu)
    finally:
        listener.close()
        shutil.rmtree(runtime, ignore_errors=True)
    console = _render_console(raw, ended, req, exit_status, work_dir / "qemu.log", boot_s)
    (work_dir / "console.log").write_text(console, encoding="utf-8")
    runner_text = runner_raw.decode("utf-8", errors="replace").replace("\r", "")
    (work_dir / "runner.log").write_text(runner_text, encoding="utf-8")
    return BootOutcome(console=console, runner=runner_text, ended=ended, boot_s=boot_s, setup_s=setup_s,
                       qemu_status=exit_status if ended == "qemu-exit" else None)  # fmt: skip


def render_env(req: BootRequest, qemu_wrapper: Path, runner_socket: Path | None = None) -> str:
    """The labgrid environment YAML for one boot (lab/envs/qemu.yaml.j2)."""
    accel = f"tcg,tb-size={TCG_CODE_BUFFER_MIB}" if req.accel == "tcg" else req.accel
    extra = ["-accel", accel, "-no-reboot", "-initrd", str(Path(req.initramfs).resolve()),
             "-sandbox", QEMU_SANDBOX]  # fmt: skip
    if runner_socket is not None:
        extra += ["-chardev", f"socket,id=runner,path={runner_socket}", "-device", arch_named(req.arch).runner_device]
    kernel = str(Path(req.kernel).resolve())
    if "$" in kernel or "$" in str(qemu_wrapper):
        # labgrid runs os.path.expandvars over tool and image paths.
        raise LabSetupError(f"paths with '$' are not supported: {kernel}, {qemu_wrapper}")
    return _template().render(
        machine=req.machine,
        cpu=req.cpu,
        memory=req.memory,
        boot_args=boot_args_of(req),
        extra_args=shlex.join(extra),
        qemu_bin=str(qemu_wrapper),
        kernel=kernel,
        nic=NETWORK_NIC if req.network else "none",
    )


def boot_args_of(req: BootRequest) -> str:
    """The kernel command line: the request's, else the arch's console and a reboot (QEMU's exit) on panic."""
    return req.boot_args if req.boot_args is not None else default_boot_args(arch_named(req.arch))


def default_boot_args(arch: Arch) -> str:
    return f"console={arch.console} panic=-1"


def _runtime_dir(req: BootRequest) -> Path:
    """QEMU's own directory for sockets: its uid's alone (0700), made fresh for the boot."""
    if req.runtime_dir is None:
        runtime = Path(tempfile.mkdtemp(prefix="labgate-qemu-"))
    else:
        runtime = Path(req.runtime_dir)
        shutil.rmtree(runtime, ignore_errors=True)
        runtime.mkdir(parents=True)
    runtime.chmod(0o700)
    if req.sandbox_uid is not None:
        os.chown(runtime, req.sandbox_uid, req.sandbox_uid)
    return runtime


def _listen(path: Path, uid: int | None) -> socket.socket:
    """The runner port's host end: QEMU connects to it as a client when it starts."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    path.chmod(0o600)
    if uid is not None:
        os.chown(path, uid, uid)
    return listener


def _activate(target: Any, runtime: Path, uid: int | None) -> Any:
    """Activate QEMUDriver with its mkdtemp() socket dir inside runtime, then hand it to QEMU's uid."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(runtime)
    try:
        qemu = target.get_driver("QEMUDriver")  # activation binds the console socket
    finally:
        tempfile.tempdir = saved
    if uid is not None:
        os.chown(qemu._tempdir, uid, uid)
        os.chown(f"{qemu._tempdir}/serialrw", uid, uid)
    return qemu


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_ENVS),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["yaml"] = json.dumps  # a JSON string is a valid YAML scalar
    return env.get_template("qemu.yaml.j2")


@dataclass(frozen=True)
class _HostTools:
    qemu: str
    setpriv: str
    version_line: str


@functools.cache
def _host_tools(qemu_name: str, package: str = "qemu-system-x86") -> _HostTools:
    qemu = shutil.which(qemu_name)
    if qemu is None:
        raise LabSetupError(f"{qemu_name} not found; install {package} (apt)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise LabSetupError("setpriv not found; install util-linux (it kills QEMU with us)")
    try:
        done = subprocess.run([qemu, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabSetupError(f"`{qemu} -version` failed: {exc}") from exc
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise LabSetupError(f"`{qemu} -version` failed: {done.stderr.strip()[:300]}")
    return _HostTools(qemu=qemu, setpriv=setpriv, version_line=lines[0])


def _write_qemu_wrapper(work_dir: Path, tools: _HostTools, req: BootRequest) -> Path:
    """A qemu_bin for labgrid: QEMU confined, dying with its parent, -version answered from cache.

    QEMUDriver runs `qemu -version` on every activation (~0.1 s here); the answer is the
    same for the life of this process. setpriv's PR_SET_PDEATHSIG makes the kernel
    SIGKILL the confinement (and with it QEMU) if the process that started it dies, even
    by SIGKILL. The wrapper lives in the job's root-owned directory, out of QEMU's reach.
    """
    wrapper = work_dir / "qemu"
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Generated by labgate (lab/runner.py) for labgrid's QEMUDriver.",
        f'if [ "$#" = 1 ] && [ "$1" = -version ]; then echo {q(tools.version_line)}; exit 0; fi',
        f"exec 2>{q(str(work_dir / 'qemu.log'))}",
    ]
    lines += [f"echo $$ > {q(str(procs))}" for procs in req.cgroup_procs]
    if req.seccomp_filter is not None:
        filter_file = work_dir / "seccomp.bpf"
        filter_file.write_bytes(req.seccomp_filter)
        lines.append(f"exec {SECCOMP_FD}<{q(str(filter_file))}")
    confine = " ".join(q(arg) for arg in req.confine)
    lines.append(f'exec {q(tools.setpriv)} --pdeathsig KILL -- {confine} {q(tools.qemu)} "$@"')
    wrapper.write_text("\n".join(lines) + "\n")
    wrapper.chmod(0o755)
    return wrapper


def _boot(qemu: Any, listener: socket.socket, req: BootRequest) -> tuple[bytes, bytes, Ended, float, int | None]:
    on_at = time.monotonic()
    # QEMUDriver.on() blocks in accept() on the serial socket; a QEMU that dies first
    # would block it forever.
    qemu._socket.settimeout(max(0.1, min(req.timeout_s, _ACCEPT_CAP_S)))
    try:
        qemu.on()
        listener.settimeout(max(0.1, min(req.timeout_s, _ACCEPT_CAP_S)))
        runner_port, _ = listener.accept()  # QEMU connected it before the console
    except Exception as exc:
        child = qemu._child
        if child is not None and child.poll() is not None:
            return b"", b"", "qemu-exit", time.monotonic() - on_at, child.returncode
        _stop(qemu, graceful=False)
        raise LabSetupError(f"QEMU did not come up ({type(exc).__name__}: {exc}); see {req.work_dir}/qemu.log") from exc
    try:
        raw, runner_raw, ended = read_ports(qemu._clientsocket, runner_port, qemu._child, boot_caps(req), on_at)
    finally:
        runner_port.close()
    boot_s = time.monotonic() - on_at
    return raw, runner_raw, ended, boot_s, _stop(qemu, graceful=ended == "end-marker", exiting=ended == "qemu-exit")


class _Exited(Protocol):
    def poll(self) -> int | None: ...


def read_ports(
    console: socket.socket, runner: socket.socket, child: _Exited, caps: BootCaps, on_at: float
) -> tuple[bytes, bytes, Ended]:
    """Read the console and the runner's port until the runner's end marker, a cap or QEMU's exit."""
    reading = PortsReading(caps, on_at)
    ports: dict[int, tuple[Port, socket.socket]] = {console.fileno(): ("console", console),
                                                    runner.fileno(): ("runner", runner)}  # fmt: skip
    while True:
        now = time.monotonic()
        ended = reading.due(now)
        if ended is not None:
            return reading.result(ended)
        if not ports:
            return reading.result("qemu-exit")
        ready, _, _ = select.select(list(ports), [], [], min(reading.wait_s(now), _READ_POLL_S))
        if not ready:
            if child.poll() is not None:
                return reading.result("qemu-exit")
            continue
        for fd in ready:
            name, port = ports[fd]
            try:
                chunk = port.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:  # QEMU closed the port: it is exiting
                del ports[fd]
                continue
            ended = reading.take(name, chunk, time.monotonic())
            if ended is not None:
                return reading.result(ended)


def _stop(qemu: Any, *, graceful: bool, exiting: bool = False) -> int | None:
    """Stop QEMU for good and return its exit status (None if it was never started).
    `exiting`: QEMU closed its ports, so it is on its way out; give it a moment to say how."""
    child = qemu._child
    if child is None:
        return None
    if exiting:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=_EXIT_WAIT_S)
    if graceful and child.poll() is None and qemu.status:
        try:
            qemu.off()  # QMP quit
            return 0
        except Exception:  # raced with the guest's own poweroff; fall through to kill
            log.debug("QMP quit failed, killing QEMU", exc_info=True)
    if child.poll() is None:
        child.kill()
    try:
        status: int | None = child.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        status = None
        log.error("QEMU pid %s survived SIGKILL for %s s", child.pid, _STOP_WAIT_S)
    for pipe in (child.stdin, child.stdout):
        with contextlib.suppress(OSError, ValueError):
            if pipe is not None:
                pipe.close()
    # The guest may have powered itself off: mark the driver off so that deactivation
    # does not send QMP quit to a dead process (ValueError: write to closed file).
    qemu.status = 0
    qemu._child = None
    return status


def _release(target: Any, qemu: Any) -> None:
    if qemu is not None:
        _stop(qemu, graceful=False)
        atexit.unregister(qemu._atexit)
    try:
        target.cleanup()
    except Exception:
        log.warning("labgrid target cleanup failed", exc_info=True)
    # Each Target registers an atexit hook; a long-lived worker would pile them up.
    atexit.unregister(target._atexit_cleanup)


def _render_console(
    raw: bytes, ended: Ended, req: BootRequest, exit_status: int | None, qemu_log: Path, boot_s: float | None = None
) -> str:
    text = raw.decode("utf-8", errors="replace").replace("\r", "")
    notes = []
    if ended in CAP_ENDINGS:
        notes.append(f"# labgate: {cap_message(ended, boot_caps(req), boot_s)}; QEMU was killed")
    elif ended == "qemu-exit":
        notes.append(f"# labgate: qemu exited (status {exit_status}) before the end marker")
        with contextlib.suppress(OSError):
            tail = qemu_log.read_text(errors="replace").splitlines()[-20:]
            notes += [f"# qemu: {line}" for line in tail if line.strip()]
    if notes:
        if text and not text.endswith("\n"):
            text += "\n"
        text += "\n".join(notes) + "\n"
    return text
