"""A stand-in board: a QEMU that its power outlet starts and stops, booting what was staged for it.

The board belongs to its PDU's process, never to the worker that uses it: the worker reaches it
only as labgrid does a real board (power port, UARTs, image staging). Power-on copies the
staged kernel and initramfs (as a board loads them over TFTP) and starts QEMU confined the
way lab/runner.py confines it: an unprivileged slot uid under bubblewrap and setpriv (no
capabilities, no_new_privs, seccomp), no network namespace of the host's, `-sandbox on`,
cgroup caps, dying with the PDU. QEMU's two UARTs are unix sockets in its runtime directory
that workers/standin/relay.py serves on TCP: ttyS0 is the console, ttyS1 the DUT runner's port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab.board import INITRAMFS_NAME, KERNEL_NAME  # what the board boots from its image directory
from lab.errors import LabSetupError
from lab.runner import QEMU_SANDBOX, TCG_CODE_BUFFER_MIB
from workers import seccomp
from workers.cgroups import JobCgroup, create_job_cgroup
from workers.sandbox import SandboxMounts, bwrap_argv, write_synthetic_etc
from workers.slots import DEFAULT_QEMU_UIDS, QEMU_UIDS_ENV, Slot, UidRange, hold_slot
from workers.standin.relay import SerialRelay
from workers.standin.staging_sshd import STAGE_USER
from workers.testjob import QEMU_MAX_PROCESSES, QEMU_OVERHEAD_BYTES, QEMU_TMP_BYTES

log = logging.getLogger(__name__)

_CONNECT_CAP_S = 15.0  # QEMU connects its UARTs within ms of starting; longer means it died
_STOP_WAIT_S = 10.0


class BoardError(Exception):
    """The board cannot power on (nothing staged, QEMU did not start): the PDU answers 500."""


@dataclass(frozen=True)
class BoardSettings:
    name: str
    images: Path  # the TFTP root the exporter announces; the worker's staging links files here
    state_dir: Path  # logs and the copies of the images, root's own
    memory_mb: int = 512
    boot_args: str = "console=ttyS0 panic=-1"
    qemu: str = "qemu-system-x86_64"
    reader: str | None = STAGE_USER  # who staged images are read as (None: the PDU's own user)


class StandinBoard:
    """One board: its UART relays live as long as the PDU; QEMU lives from power-on to power-off."""

    def __init__(self, settings: BoardSettings, console_port: int = 0, runner_port: int = 0) -> None:
        self.settings = settings
        self.console = SerialRelay(f"{settings.name}-console", console_port)
        self.runner = SerialRelay(f"{settings.name}-runner", runner_port)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._held = contextlib.ExitStack()
        self._cgroup: JobCgroup | None = None
        self._runtime: Path | None = None
        self.boots = 0
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"board-{settings.name}")

    def is_on(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def qemu_pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def power_on(self) -> None:
        """Start QEMU on the staged images; a board already on stays as it is (outlets are idempotent)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            self._off()
            try:
                self._on()
            except BaseException:
                self._off()
                raise

    def power_off(self) -> None:
        with self._lock:
            self._off()

    def close(self) -> None:
        self.power_off()
        self.console.close()
        self.runner.close()
        self._spawner.shutdown()

    def _on(self) -> None:
        uids = UidRange.from_env(QEMU_UIDS_ENV, DEFAULT_QEMU_UIDS)
        slot: Slot = self._held.enter_context(hold_slot("qemu", uids))
        boot_dir = self.settings.state_dir / "boot"
        shutil.rmtree(boot_dir, ignore_errors=True)
        boot_dir.mkdir(parents=True)
        boot_dir.chmod(0o755)
        images = []
        for name in (KERNEL_NAME, INITRAMFS_NAME):
            staged = self.settings.images / name
            if not staged.is_file():
                raise BoardError(f"{self.settings.name}: nothing staged as {staged}")
            copy = boot_dir / name
            self._load(staged, copy)  # a copy: later staging cannot change a running boot
            images.append(copy)
        kernel, initramfs = images
        self._runtime = runtime = Path(tempfile.mkdtemp(prefix="labgate-standin-"))
        runtime.chmod(0o700)
        if slot.uid is not None:
            os.chown(runtime, slot.uid, slot.uid)
        self.console.attach(runtime / "console.sock", slot.uid)
        self.runner.attach(runtime / "runner.sock", slot.uid)
        self._cgroup = create_job_cgroup(slot.name, memory_bytes=(self.settings.memory_mb << 20) + QEMU_OVERHEAD_BYTES,
                                         max_pids=QEMU_MAX_PROCESSES)  # fmt: skip
        self._process = self._start_qemu(slot, kernel, initramfs, runtime)
        self.boots += 1
        deadline = time.monotonic() + _CONNECT_CAP_S
        while not (self.console.is_connected() and self.runner.is_connected()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BoardError(f"{self.settings.name}: QEMU did not come up; its log ends:\n{self._log_tail()}")
            time.sleep(0.005)

    def _load(self, staged: Path, copy: Path) -> None:
        """Read a staged image as the staging user, as a TFTP server reads its root as its own user: the
        staging user makes the links, and a link to a file only root may read must not get it into a boot."""
        command = ["cat", "--", str(staged)]
        if self.settings.reader is not None:
            setpriv = shutil.which("setpriv") or "setpriv"
            user = pwd.getpwnam(self.settings.reader)
            command = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *command]
        with open(copy, "wb") as out:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, timeout=120)
        copy.chmod(0o644)
        if done.returncode != 0:
            copy.unlink()
            why = done.stderr.decode(errors="replace").strip()[-300:]
            raise BoardError(f"{self.settings.name}: cannot read {staged} as {self.settings.reader}: {why}")

    def _start_qemu(self, slot: Slot, kernel: Path, initramfs: Path, runtime: Path) -> subprocess.Popen[bytes]:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise LabSetupError("setpriv not found; install util-linux")
        qemu = shutil.which(self.settings.qemu)
        if qemu is None:
            raise LabSetupError(f"{self.settings.qemu} not found; install qemu-system-x86 (apt)")
        etc = write_synthetic_etc(self.settings.state_dir / "etc", slot.uid, "qemu")
        filter_fd = None
        if seccomp.is_supported():
            filter_file = self.settings.state_dir / "seccomp.bpf"
            filter_file.write_bytes(seccomp.build_filter())
            filter_fd = os.open(filter_file, os.O_RDONLY)
        qemu_argv = [
            qemu, "-machine", "q35", "-cpu", "qemu64", "-m", f"{self.settings.memory_mb}M",
            "-accel", f"tcg,tb-size={TCG_CODE_BUFFER_MIB}",  # the lab's code buffer (lab/runner.py)
            "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none", "-sandbox", QEMU_SANDBOX,
            "-kernel", str(kernel), "-initrd", str(initramfs), "-append", self.settings.boot_args,
            "-chardev", f"socket,id=console,path={runtime}/console.sock",
            "-device", "isa-serial,chardev=console,index=0",
            "-chardev", f"socket,id=runner,path={runtime}/runner.sock",
            "-device", "isa-serial,chardev=runner,index=1",
        ]  # fmt: skip
        confined = bwrap_argv(
            qemu_argv, cwd=runtime, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, uid=slot.uid,
            mounts=SandboxMounts(writable=(runtime,), read_only=(kernel, initramfs), etc_dir=etc, dev_shm=False),
            tmp_bytes=QEMU_TMP_BYTES, seccomp_fd=filter_fd,
        )  # fmt: skip
        # QEMU joins the cgroup before it starts (a shell line, not preexec_fn: this process has threads),
        # and setpriv's parent-death signal takes it down with the PDU.
        procs = [d / "cgroup.procs" for d in self._cgroup.dirs] if self._cgroup is not None else []
        script = "".join(f"echo $$ > {shlex.quote(str(p))}; " for p in procs)
        script += "exec " + shlex.join([setpriv, "--pdeathsig", "KILL", "--", *confined])
        log_file = open(self.settings.state_dir / "qemu.log", "wb")  # noqa: SIM115 (the child holds it)
        try:
            # The parent-death signal fires when the *thread* that forked exits, and an HTTP request's
            # thread ends with the request: QEMU is forked from the board's own long-lived thread.
            return self._spawner.submit(
                subprocess.Popen, ["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, pass_fds=(filter_fd,) if filter_fd is not None else (),
                start_new_session=True,
            ).result()  # fmt: skip
        finally:
            log_file.close()
            if filter_fd is not None:
                os.close(filter_fd)

    def _off(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if self._cgroup is not None:
                self._cgroup.kill_all()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            try:
                process.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.error("%s: QEMU pid %s survived SIGKILL", self.settings.name, process.pid)
        self.console.detach()
        self.runner.detach()
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
        self._held.close()  # the slot's uid goes back to the pool

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.settings.state_dir / "qemu.log").read_text(errors="replace").splitlines()
            return "\n".join(lines[-15:])
        return ""
