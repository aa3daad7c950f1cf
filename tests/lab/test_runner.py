"""Tests for lab.runner and the DUT runner: host-side runs, a fake driver, and real QEMU boots.

Real boots (TCG, ~4-8 s each with Debian's kernel) are kept to four.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from lab import runner
from lab.initramfs import DUT_DIR, Command, build_initramfs, render_commands
from lab.runner import BootOutcome, BootRequest, run_boot
from tests.lab.conftest import processes_mentioning

BUSYBOX = shutil.which("busybox")


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- labgate-run on the host (busybox sh, no boot) -------------------------------------


def run_dut_runner(tmp_path: Path, commands: list[Command]) -> str:
    root = tmp_path / "labgate"
    (root / "artifacts").mkdir(parents=True)
    for image_path, data in render_commands(commands).items():
        target = root / image_path.removeprefix("/labgate/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    assert BUSYBOX is not None
    done = subprocess.run(
        [BUSYBOX, "sh", str(DUT_DIR / "labgate-run")],
        env={"LABGATE_ROOT": str(root), "TMPDIR": str(tmp_path), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == ""
    return done.stdout


@pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")
def test_dut_runner_prints_one_document(tmp_path: Path) -> None:
    out = run_dut_runner(
        tmp_path,
        [
            Command("nested", "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 inner'"),
            Command("skip", "echo skipping; exit 4"),
            Command("fail", "printf 'no newline'; exit 3"),
            Command("cwd", 'pwd; read line; echo "stdin [$line]"'),
        ],
    )
    assert out.splitlines() == [
        "KTAP version 1",
        "1..4",
        "    KTAP version 1",
        "    1..1",
        "    ok 1 inner",
        "ok 1 nested",
        "    skipping",
        "ok 2 skip # SKIP",
        "    no newline",
        "not ok 3 fail # exit status 3",
        f"    {tmp_path / 'labgate' / 'artifacts'}",
        "    stdin []",
        "ok 4 cwd",
        "# labgate: end",
    ]


@pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")
def test_dut_runner_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    started = time.monotonic()
    out = run_dut_runner(
        tmp_path,
        [
            Command("hangs", "echo before; sleep 30; echo after", timeout_s=1),
            Command("leaves a child", "sleep 30 & echo started"),
        ],
    )
    assert time.monotonic() - started < 10
    assert "    before\n" in out and "    after" not in out
    assert "not ok 1 hangs # exit status 137 (timed out after 1 s)\n" in out
    assert "ok 2 leaves a child\n" in out
    assert out.endswith("# labgate: end\n")


@pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")
def test_dut_runner_without_commands_prints_an_empty_plan(tmp_path: Path) -> None:
    assert run_dut_runner(tmp_path, []) == "KTAP version 1\n1..0\n# labgate: end\n"


# --- the console loop against a fake driver --------------------------------------------


class FakeChild:
    def __init__(self) -> None:
        self.returncode: int | None = None
        self.killed = False

    def poll(self) -> int | None:
        return self.returncode


class FakeQEMUDriver:
    """Serves console chunks; None is a read that times out. Records the reads."""

    def __init__(self, chunks: list[bytes | None]) -> None:
        self.chunks = list(chunks)
        self.reads: list[float] = []
        self._child = FakeChild()

    def read(self, size: int = 1, timeout: float = 0.0) -> bytes:
        self.reads.append(timeout)
        if not self.chunks:
            time.sleep(min(timeout, 0.01))
            raise pexpect.TIMEOUT("fake")
        chunk = self.chunks.pop(0)
        if chunk is None:
            time.sleep(min(timeout, 0.01))
            raise pexpect.TIMEOUT("fake")
        return chunk


def read_fake(chunks: list[bytes | None], limit: int = 1 << 20, seconds: float = 5.0):
    return runner._read_console(FakeQEMUDriver(chunks), time.monotonic() + seconds, limit)


def test_end_marker_split_across_reads_is_found() -> None:
    raw, ended = read_fake([b"boot\r\nKTAP version 1\r\n# lab", None, b"gate: end\r\n", b"more"])
    assert ended == "end-marker"
    assert raw == b"boot\r\nKTAP version 1\r\n# labgate: end\r\n"


def test_indented_marker_does_not_end_the_boot() -> None:
    raw, ended = read_fake([b"x\n    # labgate: end\n"], seconds=0.1)
    assert ended == "timeout" and raw == b"x\n    # labgate: end\n"


def test_console_past_the_limit_is_cut() -> None:
    raw, ended = read_fake([b"a" * 600, b"b" * 600], limit=1000)
    assert ended == "console-limit" and raw == b"a" * 600 + b"b" * 400


def test_eof_means_qemu_exited() -> None:
    raw, ended = read_fake([b"Kernel panic\n", b""])
    assert ended == "qemu-exit" and raw == b"Kernel panic\n"


def test_rendered_console_notes_why_it_ended(tmp_path: Path) -> None:
    req = BootRequest(Path("k"), Path("i"), tmp_path, timeout_s=7, max_console_bytes=10)
    (tmp_path / "qemu.log").write_text("qemu: could not load kernel\n")
    assert runner._render_console(b"abc\r\n", "end-marker", req, 0, tmp_path / "x") == "abc\n"
    assert runner._render_console(b"abc", "timeout", req, None, tmp_path / "x") == (
        "abc\n# labgate: boot timed out after 7 s\n"
    )
    assert runner._render_console(b"a", "console-limit", req, None, tmp_path / "x").endswith(
        "\n# labgate: console truncated at 10 bytes\n"
    )
    assert runner._render_console(b"", "qemu-exit", req, 1, tmp_path / "qemu.log") == (
        "# labgate: qemu exited (status 1) before the end marker\n"
        "# qemu: qemu: could not load kernel\n"
    )


def test_env_yaml_carries_initrd_in_extra_args(tmp_path: Path) -> None:
    req = BootRequest(Path("/k/vmlinuz"), tmp_path / "my image.gz", tmp_path, timeout_s=1)
    text = runner.render_env(req, tmp_path / "qemu")
    assert f"-initrd '{tmp_path}/my image.gz'" in text
    assert "nic: none" in text and "display: none" in text and "initrd:" not in text


def test_missing_kernel_is_a_setup_error(tmp_path: Path) -> None:
    (tmp_path / "i").write_bytes(b"")
    with pytest.raises(runner.LabSetupError, match="kernel"):
        run_boot(BootRequest(tmp_path / "nope", tmp_path / "i", tmp_path, timeout_s=1))


# --- real boots ------------------------------------------------------------------------


def boot(kernel: Path, work_dir: Path, commands: list[Command], timeout_s: float) -> BootOutcome:
    work_dir.mkdir(parents=True, exist_ok=True)
    image = build_initramfs(work_dir / "initramfs.cpio.gz", {}, commands=commands)
    return run_boot(BootRequest(kernel, image, work_dir, timeout_s=timeout_s))


def test_boot_runs_the_commands_and_reports_each(debian_kernel: Path, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(uname -m)\n")
    script.chmod(0o755)
    image = build_initramfs(
        tmp_path / "initramfs.cpio.gz",
        {"/labgate/artifacts/bin/hello.sh": script},
        commands=[
            Command("ktap", "./bin/hello.sh; echo 'KTAP version 1'; echo 1..1; echo 'ok 1 a'"),
            Command("skipped", "exit 4"),
            Command("broken", "exit 1"),
        ],
    )

    outcome = run_boot(BootRequest(debian_kernel, image, tmp_path, timeout_s=120))

    print(f"setup_s={outcome.setup_s:.3f} boot_s={outcome.boot_s:.2f}")
    assert outcome.ended == "end-marker", outcome.console[-2000:]
    ktap = outcome.console[outcome.console.index("KTAP version 1\n1..3") :]
    assert ktap == (
        "KTAP version 1\n1..3\n"
        "    hello from x86_64\n    KTAP version 1\n    1..1\n    ok 1 a\nok 1 ktap\n"
        "ok 2 skipped # SKIP\n"
        "not ok 3 broken # exit status 1\n"
        "# labgate: end\n"
    )
    assert "Linux version" in outcome.console and "\r" not in outcome.console
    assert (tmp_path / "console.log").read_text() == outcome.console
    assert outcome.setup_s < 0.3
    assert processes_mentioning(str(tmp_path)) == []


def test_boot_past_its_cap_ends_in_timeout(debian_kernel: Path, tmp_path: Path) -> None:
    outcome = boot(debian_kernel, tmp_path, [Command("hang", "sleep 600")], timeout_s=8)

    assert outcome.ended == "timeout"
    assert 8 <= outcome.boot_s < 10
    assert outcome.console.endswith("# labgate: boot timed out after 8 s\n")
    assert processes_mentioning(str(tmp_path)) == []


def test_guest_that_resets_ends_in_qemu_exit(debian_kernel: Path, tmp_path: Path) -> None:
    reset = Command("reset", "echo going; sleep 1; echo b > /proc/sysrq-trigger; sleep 60")
    outcome = boot(debian_kernel, tmp_path, [reset], timeout_s=120)

    assert outcome.ended == "qemu-exit", outcome.console[-2000:]
    assert "    going\n" in outcome.console and "# labgate: end" not in outcome.console
    assert "# labgate: qemu exited (status 0) before the end marker" in outcome.console
    assert processes_mentioning(str(tmp_path)) == []


def _boot_in_child(kernel: Path, work_dir: Path) -> None:
    boot(kernel, work_dir, [Command("hang", "sleep 600")], timeout_s=300)


def test_killed_worker_takes_qemu_with_it(debian_kernel: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_boot_in_child, args=(debian_kernel, tmp_path))
    socket_dirs: list[str] = []
    child.start()
    try:
        qemu_up = wait_until(
            lambda: any("qemu-system" in cmd for _, cmd in processes_mentioning(str(tmp_path))),
            timeout_s=30,
        )
        assert qemu_up, "QEMU never started"
        # labgrid's socket directory outlives a SIGKILLed worker; clean it up ourselves.
        for _, cmd in processes_mentioning(str(tmp_path)):
            socket_dirs += re.findall(r"path=(/\S*labgrid-qemu-tmp-[^/\s]+)/serialrw", cmd)
        time.sleep(0.5)  # let it boot a little: the guest is busy, not waiting
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        assert wait_until(lambda: processes_mentioning(str(tmp_path)) == [], timeout_s=5), (
            processes_mentioning(str(tmp_path))
        )
    finally:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        for pid, _ in processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
        for socket_dir in socket_dirs:
            shutil.rmtree(socket_dir, ignore_errors=True)
