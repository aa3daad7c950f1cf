"""Boot a kernel + initramfs on QEMU through labgrid's QEMUDriver and capture the console."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import pexpect
from labgrid import Environment

from lab.errors import LabSetupError

__all__ = ["END_MARKER", "BootOutcome", "BootRequest", "LabSetupError", "run_boot"]

log = logging.getLogger(__name__)

END_MARKER = "# labgate: end"
Ended = Literal["end-marker", "timeout", "qemu-exit", "console-limit"]

_END_LINE = re.compile(rb"\n" + re.escape(END_MARKER.encode()) + rb"\r?\n")
_ENVS = Path(__file__).resolve().parent / "envs"
_READ_POLL_S = 1.0  # upper bound on one read(); data and QEMU's exit wake it sooner
_ACCEPT_CAP_S = 15.0  # QEMU connects the serial socket within ms; longer means it died
_STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class BootRequest:
    kernel: Path
    initramfs: Path
    work_dir: Path  # where the env yaml, the QEMU wrapper and the logs go
    timeout_s: float  # whole boot cap, from qemu.on()
    memory: str = "512M"
    machine: str = "q35"
    cpu: str = "qemu64"
    boot_args: str = "console=ttyS0 panic=-1"
    max_console_bytes: int = 16 * 1024 * 1024
    qemu: str = "qemu-system-x86_64"  # name on PATH or absolute path
    accel: str = "tcg"  # the only accelerator that boots stock guests on kvm-pvm hosts


@dataclass(frozen=True)
class BootOutcome:
    console: str  # whole console, CR stripped, truncated with a marker line past the cap
    ended: Ended
    boot_s: float  # from qemu.on() to the end of the console
    setup_s: float  # env file, labgrid environment and driver activation, before on()


def run_boot(req: BootRequest) -> BootOutcome:
    """Boot once, read the console until the end marker or a cap, stop QEMU, return it all.

    A failing guest is an outcome, never an exception; LabSetupError means the host
    cannot boot anything (missing kernel, QEMU, setpriv, or QEMU never came up).
    """
    started = time.monotonic()
    for what, path in (("kernel", req.kernel), ("initramfs", req.initramfs)):
        if not Path(path).is_file():
            raise LabSetupError(f"{what} {path} is not a file; build or fetch it first")
    work_dir = Path(req.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    tools = _host_tools(req.qemu)
    wrapper = _write_qemu_wrapper(work_dir, tools)
    env_file = work_dir / "labgrid-env.yaml"
    env_file.write_text(render_env(req, wrapper))
    target = Environment(str(env_file)).get_target("main")
    qemu: Any = None
    try:
        qemu = target.get_driver("QEMUDriver")  # activation binds the serial socket
        setup_s = time.monotonic() - started
        raw, ended, boot_s, exit_status = _boot(qemu, req)
    finally:
        _release(target, qemu)
    console = _render_console(raw, ended, req, exit_status, work_dir / "qemu.log")
    (work_dir / "console.log").write_text(console, encoding="utf-8")
    return BootOutcome(console=console, ended=ended, boot_s=boot_s, setup_s=setup_s)


def render_env(req: BootRequest, qemu_wrapper: Path) -> str:
    """The labgrid environment YAML for one boot (lab/envs/qemu.yaml.j2)."""
    extra = ["-accel", req.accel, "-no-reboot", "-initrd", str(Path(req.initramfs).resolve())]
    kernel = str(Path(req.kernel).resolve())
    if "$" in kernel or "$" in str(qemu_wrapper):
        # labgrid runs os.path.expandvars over tool and image paths.
        raise LabSetupError(f"paths with '$' are not supported: {kernel}, {qemu_wrapper}")
    return _template().render(
        machine=req.machine,
        cpu=req.cpu,
        memory=req.memory,
        boot_args=req.boot_args,
        extra_args=shlex.join(extra),
        qemu_bin=str(qemu_wrapper),
        kernel=kernel,
    )


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
def _host_tools(qemu_name: str) -> _HostTools:
    qemu = shutil.which(qemu_name)
    if qemu is None:
        raise LabSetupError(f"{qemu_name} not found; install qemu-system-x86 (apt)")
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


def _write_qemu_wrapper(work_dir: Path, tools: _HostTools) -> Path:
    """A qemu_bin for labgrid: QEMU dies with its parent, and -version is answered from cache.

    QEMUDriver runs `qemu -version` on every activation (~0.1 s here); the answer is the
    same for the life of this process. setpriv's PR_SET_PDEATHSIG makes the kernel
    SIGKILL QEMU if the process that started it dies, even by SIGKILL. (Strictly, when
    the starting *thread* exits; run_boot stops QEMU before it returns anyway.)
    """
    wrapper = work_dir / "qemu"
    q = shlex.quote
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Generated by labgate (lab/runner.py) for labgrid's QEMUDriver.\n"
        f'if [ "$#" = 1 ] && [ "$1" = -version ]; then echo {q(tools.version_line)}; exit 0; fi\n'
        f"exec 2>{q(str(work_dir / 'qemu.log'))}\n"
        f'exec {q(tools.setpriv)} --pdeathsig KILL -- {q(tools.qemu)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def _boot(qemu: Any, req: BootRequest) -> tuple[bytes, Ended, float, int | None]:
    on_at = time.monotonic()
    deadline = on_at + req.timeout_s
    # QEMUDriver.on() blocks in accept() on the serial socket; a QEMU that dies first
    # would block it forever.
    qemu._socket.settimeout(max(0.1, min(req.timeout_s, _ACCEPT_CAP_S)))
    try:
        qemu.on()
    except Exception as exc:
        child = qemu._child
        if child is not None and child.poll() is not None:
            return b"", "qemu-exit", time.monotonic() - on_at, child.returncode
        raise LabSetupError(
            f"QEMU did not come up ({type(exc).__name__}: {exc}); see {req.work_dir}/qemu.log"
        ) from exc
    raw, ended = _read_console(qemu, deadline, req.max_console_bytes)
    boot_s = time.monotonic() - on_at
    return raw, ended, boot_s, _stop(qemu, graceful=ended == "end-marker")


def _read_console(qemu: Any, deadline: float, limit: int) -> tuple[bytes, Ended]:
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(buf), "timeout"
        try:
            chunk = qemu.read(size=4096, timeout=min(remaining, _READ_POLL_S))
        except pexpect.TIMEOUT:
            if qemu._child.poll() is not None:
                return bytes(buf), "qemu-exit"
            continue
        except OSError:
            chunk = b""
        if not chunk:  # EOF: QEMU closed the serial socket, it is exiting
            return bytes(buf), "qemu-exit"
        searched_to = max(0, len(buf) - len(END_MARKER) - 2)
        buf += chunk
        found = _END_LINE.search(buf, searched_to)
        if found and found.end() <= limit:
            return bytes(buf[: found.end()]), "end-marker"
        if len(buf) > limit:
            return bytes(buf[:limit]), "console-limit"


def _stop(qemu: Any, *, graceful: bool) -> int | None:
    """Stop QEMU for good and return its exit status (None if it was never started)."""
    child = qemu._child
    if child is None:
        return None
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
    raw: bytes, ended: Ended, req: BootRequest, exit_status: int | None, qemu_log: Path
) -> str:
    text = raw.decode("utf-8", errors="replace").replace("\r", "")
    notes = []
    if ended == "console-limit":
        notes.append(f"# labgate: console truncated at {req.max_console_bytes} bytes")
    elif ended == "timeout":
        notes.append(f"# labgate: boot timed out after {req.timeout_s:g} s")
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
