"""Tests for lab.runner and the DUT runner: host-side runs, a fake driver, and real QEMU boots.

Real boots (TCG, ~4-8 s each with Debian's kernel) are kept to four.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import runner
from lab.caps import BootCaps
from lab.initramfs import DUT_DIR, Command, build_initramfs, render_commands
from lab.runner import BootOutcome, BootRequest, run_boot
from tests.lab.conftest import processes_mentioning

BUSYBOX = "/bin/busybox"  # what the "busybox" host requirement checks (tests/requirements.py)
HOST_RUN = "labgate-run is a busybox sh script, run here on the host"
# Host runs name a user that does not exist: commands run as root, and the runner says so.
NO_DUT_USER = "# labgate: note: no DUT user (no unprivileged user nobody-here); commands run as root"


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- labgate-run on the host (busybox sh, no boot) -------------------------------------


def run_dut_runner(tmp_path: Path, commands: list[Command], *, dut_user: str = "nobody-here",
                   extra_env: dict[str, str] | None = None) -> str:  # fmt: skip
    """labgate-run on the host with busybox sh; commands marked root run as this test's user."""
    root = tmp_path / "labgate"
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    for image_path, data in render_commands(commands).items():
        target = root / image_path.removeprefix("/labgate/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    env = {"LABGATE_ROOT": str(root), "LABGATE_STATE": str(tmp_path / "state"), "LABGATE_DUT_USER": dut_user,
           "PATH": os.environ["PATH"], **(extra_env or {})}  # fmt: skip
    done = subprocess.run([BUSYBOX, "sh", str(DUT_DIR / "labgate-run")], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.needs("busybox", HOST_RUN)
def test_dut_runner_prints_one_document(tmp_path: Path) -> None:
    out = run_dut_runner(
        tmp_path,
        [
            Command("nested", "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 inner'", root=True),
            Command("skip", "echo skipping; exit 4", root=True),
            Command("fail", "printf 'no newline'; exit 3", root=True),
            Command("cwd", 'pwd; read line; echo "stdin [$line]"', root=True),
        ],
    )
    assert out.splitlines() == [
        "KTAP version 1",
        "1..4",
        NO_DUT_USER,
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


@pytest.mark.needs("busybox", HOST_RUN)
def test_dut_runner_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    started = time.monotonic()
    out = run_dut_runner(
        tmp_path,
        [
            Command("hangs", "echo before; sleep 30; echo after", timeout_s=1, root=True),
            Command("leaves a child", "sleep 30 & echo started", root=True),
        ],
    )
    assert time.monotonic() - started < 10
    assert "    before\n" in out and "    after" not in out
    assert "not ok 1 hangs # exit status 137 (timed out after 1 s)\n" in out
    assert "ok 2 leaves a child\n" in out
    assert out.endswith("# labgate: end\n")


@pytest.mark.needs("busybox", HOST_RUN)
def test_dut_runner_without_commands_prints_an_empty_plan(tmp_path: Path) -> None:
    assert run_dut_runner(tmp_path, []) == f"KTAP version 1\n1..0\n{NO_DUT_USER}\n# labgate: end\n"


# --- the two ports' read loop, on socket pairs ------------------------------------------


class FakeChild:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def read_pairs(console_chunks: list[bytes], runner_chunks: list[bytes], *, close: bool = False,
               console_limit: int = 1 << 20, runner_limit: int = 1 << 20, seconds: float = 3.0,
               boot_s: float | None = None, silence_s: float | None = None, pause_s: float = 0.02):  # fmt: skip
    console_host, console_qemu = socket.socketpair()
    runner_host, runner_qemu = socket.socketpair()
    for sock in (console_host, runner_host):
        sock.setblocking(False)

    def feed() -> None:
        for console, port in itertools.zip_longest(console_chunks, runner_chunks):
            if console:
                console_qemu.sendall(console)
            if port:
                runner_qemu.sendall(port)
            time.sleep(pause_s)
        if close:
            console_qemu.close()
            runner_qemu.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        caps = BootCaps(job_s=seconds, boot_s=boot_s, silence_s=silence_s, console_bytes=console_limit,
                        runner_bytes=runner_limit, panic_grace_s=0.5)  # fmt: skip
        return runner.read_ports(console_host, runner_host, FakeChild(), caps, time.monotonic())
    finally:
        feeder.join()
        for sock in (console_host, console_qemu, runner_host, runner_qemu):
            sock.close()


def test_the_end_marker_on_the_runner_port_ends_the_boot_even_split_across_reads() -> None:
    console, out, ended = read_pairs([b"boot\r\n"], [b"KTAP version 1\n1..0\n# lab", b"gate: end\n", b"more"])
    assert ended == "end-marker" and out == b"KTAP version 1\n1..0\n# labgate: end\n"
    assert console == b"boot\r\n"


def test_an_end_marker_on_the_console_or_indented_does_not_end_the_boot() -> None:
    _, _, ended = read_pairs([b"KTAP version 1\n# labgate: end\n"], [b"KTAP version 1\n    # labgate: end\n"],
                             seconds=0.5)  # fmt: skip
    assert ended == "timeout"


def test_each_port_past_its_limit_is_cut() -> None:
    console, _, ended = read_pairs([b"a" * 600, b"b" * 600], [], console_limit=1000)
    assert ended == "console-limit" and console == b"a" * 600 + b"b" * 400
    _, out, ended = read_pairs([], [b"r" * 600, b"s" * 600], runner_limit=1000)
    assert ended == "runner-limit" and len(out) == 1000


def test_both_ports_closing_means_qemu_exited() -> None:
    console, _, ended = read_pairs([b"Kernel panic\n"], [], close=True)
    assert ended == "qemu-exit" and console == b"Kernel panic\n"


def test_the_runner_start_and_silence_caps_end_the_read_and_the_job_cap_comes_first() -> None:
    # The runner never starts: the boot cap fires, though the console keeps talking.
    console, _, ended = read_pairs([b"x\n"] * 12, [], boot_s=0.3, silence_s=5, pause_s=0.05)
    assert ended == "boot-timeout" and 0 < len(console) < 12 * 2
    # The runner started, then both ports fell silent.
    started = time.monotonic()
    _, out, ended = read_pairs([b"boot\n"], [b"KTAP version 1\n"], boot_s=0.2, silence_s=0.5)
    assert ended == "silence" and out == b"KTAP version 1\n" and 0.5 <= time.monotonic() - started < 1.5
    _, _, ended = read_pairs([], [], seconds=0.3, boot_s=0.3, silence_s=0.3)
    assert ended == "timeout"


def test_a_panic_on_the_console_ends_the_read_after_its_grace() -> None:
    started = time.monotonic()
    console, _, ended = read_pairs([b"[ 2.1] Kernel panic - not syncing: Attempted to kill init!\n"], [],
                                   seconds=10, silence_s=5)  # fmt: skip
    assert ended == "kernel-panic" and console.endswith(b"kill init!\n") and 0.5 <= time.monotonic() - started < 3


def test_rendered_console_notes_why_it_ended(tmp_path: Path) -> None:
    req = BootRequest(Path("k"), Path("i"), tmp_path, timeout_s=7, max_console_bytes=10, silence_timeout_s=3)
    (tmp_path / "qemu.log").write_text("qemu: could not load kernel\n")
    assert runner._render_console(b"abc\r\n", "end-marker", req, 0, tmp_path / "x") == "abc\n"
    assert runner._render_console(b"abc", "timeout", req, None, tmp_path / "x", 7.02) == (
        "abc\n# labgate: the job cap fired: the runner's end marker did not come within 7 s of power-on"
        " (stopped 7.0 s after power-on); QEMU was killed\n"
    )
    assert runner._render_console(b"a", "silence", req, None, tmp_path / "x").endswith(
        "\n# labgate: the silence cap fired: no byte on the console nor the runner's port for 3 s; QEMU was killed\n"
    )
    assert runner._render_console(b"a", "console-limit", req, None, tmp_path / "x").endswith(
        "\n# labgate: the console cap fired: the kernel console passed 10 bytes (truncated there); QEMU was killed\n"
    )
    assert runner._render_console(b"", "qemu-exit", req, 1, tmp_path / "qemu.log") == (
        "# labgate: qemu exited (status 1) before the end marker\n"
        "# qemu: qemu: could not load kernel\n"
    )


def test_env_yaml_carries_initrd_in_extra_args(tmp_path: Path) -> None:
    req = BootRequest(Path("/k/vmlinuz"), tmp_path / "my image.gz", tmp_path, timeout_s=1)
    text = runner.render_env(req, tmp_path / "qemu")
    assert f"-initrd '{tmp_path}/my image.gz'" in text
    assert 'nic: "none"' in text and "display: none" in text and "initrd:" not in text


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
    ktap = outcome.runner
    assert ktap == (
        "KTAP version 1\n1..3\n"
        "    hello from x86_64\n    KTAP version 1\n    1..1\n    ok 1 a\nok 1 ktap\n"
        "ok 2 skipped # SKIP\n"
        "not ok 3 broken # exit status 1\n"
        "# labgate: end\n"
    )
    assert "Linux version" in outcome.console and "\r" not in outcome.console
    assert "KTAP version 1" not in outcome.console  # results never travel on the console
    assert (tmp_path / "console.log").read_text() == outcome.console
    assert outcome.setup_s < 0.3
    assert processes_mentioning(str(tmp_path)) == []


def test_boot_past_its_cap_ends_in_timeout(debian_kernel: Path, tmp_path: Path) -> None:
    outcome = boot(debian_kernel, tmp_path, [Command("hang", "sleep 600")], timeout_s=8)

    assert outcome.ended == "timeout"
    assert 8 <= outcome.boot_s < 10
    assert "# labgate: the job cap fired: the runner's end marker did not come within 8 s" in outcome.console
    assert processes_mentioning(str(tmp_path)) == []


def test_guest_that_resets_ends_in_qemu_exit(debian_kernel: Path, tmp_path: Path) -> None:
    reset = Command("reset", "echo going; sleep 1; echo b > /proc/sysrq-trigger; sleep 60", root=True)
    outcome = boot(debian_kernel, tmp_path, [reset], timeout_s=120)

    assert outcome.ended == "qemu-exit", outcome.console[-2000:]
    assert "    going\n" in outcome.runner and "# labgate: end" not in outcome.runner
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


# --- the DUT user and the KUnit relay, on the host ------------------------------------------


# A sandbox uid setup creates (the "sandbox-users" requirement); no boot of these tests uses slot 7.
DUT_STAND_IN = "labgate-qemu7"


@pytest.mark.needs("busybox", HOST_RUN)
@pytest.mark.needs("root", "su to the DUT user needs root")
@pytest.mark.needs("sandbox-users", "a sandbox uid stands in for the DUT user")
def test_dut_commands_run_unprivileged_and_nothing_they_start_outlives_them(tmp_path: Path) -> None:
    marker = f"labgate-daemon-{os.getpid()}"
    (tmp_path / "labgate" / "artifacts").mkdir(parents=True)
    (tmp_path / "labgate" / "artifacts").chmod(0o755)
    tmp_path.chmod(0o755)
    out = run_dut_runner(
        tmp_path,
        [
            Command("whoami", "id -un; touch /labgate-dut-probe 2>&1 | grep -c denied"),
            Command("daemon", f"(setsid sh -c 'exec -a {marker} sleep 300' >/dev/null 2>&1 &); echo started"),
            Command("after", f"ps -eo args | grep -c '^{marker}' || true"),
        ],
        dut_user=DUT_STAND_IN,
    )
    assert f"    {DUT_STAND_IN}\n    1\nok 1 whoami\n" in out, out
    assert "    started\nok 2 daemon\n" in out and "    0\nok 3 after\n" in out, out
    assert not Path("/labgate-dut-probe").exists()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


@pytest.mark.needs("busybox", HOST_RUN)
def test_kunit_results_in_debugfs_are_relayed_as_one_test_per_suite(tmp_path: Path) -> None:
    debugfs = tmp_path / "debug"
    suites = {
        "example": "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: example\n    1..2\n"
                   "    ok 1 example_simple_test\n    ok 2 example_skip_test # SKIP\nok 1 example\n",
        "broken": "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: broken\n    1..1\n"
                  "    not ok 1 broken_case\nnot ok 1 broken\n",
    }  # fmt: skip
    for name, text in suites.items():
        (debugfs / "kunit" / name).mkdir(parents=True)
        (debugfs / "kunit" / name / "results").write_text(text)
    (tmp_path / "labgate").mkdir()
    (tmp_path / "labgate" / "kunit").write_text("1\n")
    out = run_dut_runner(tmp_path, [Command("first", "true", root=True)], extra_env={"LABGATE_DEBUGFS": str(debugfs)})
    from lab.framing import check_runner_framing
    from lab.ktap import flatten_results, parse_ktap

    assert out.startswith(f"KTAP version 1\n1..3\n{NO_DUT_USER}\nok 1 first\n"), out
    assert "\nnot ok 2 kunit-broken\n" in out and "\nok 3 kunit-example\n# labgate: end\n" in out, out
    assert check_runner_framing(out, ["first"], kunit=True) == []
    leaves = {path: r.status for path, r in flatten_results(parse_ktap(out))}
    assert leaves["kunit-broken.broken.broken_case"] == "fail"
    assert leaves["kunit-example.example.example_simple_test"] == "pass"


@pytest.mark.needs("busybox", HOST_RUN)
@pytest.mark.needs("root", "su to the DUT user needs root")
@pytest.mark.needs("sandbox-users", "a sandbox uid stands in for the DUT user")
def test_a_kernel_without_users_runs_commands_as_root_and_says_so(tmp_path: Path) -> None:
    """tinyconfig has no CONFIG_MULTIUSER: su fails on setgroups. The runner says so in its framing."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "su").write_text("#!/bin/sh\necho \"su: can't set groups: Function not implemented\" >&2\nexit 1\n")
    (fake_bin / "su").chmod(0o755)
    out = run_dut_runner(tmp_path, [Command("first", "echo ran")], dut_user=DUT_STAND_IN,
                         extra_env={"LABGATE_SU": str(fake_bin / "su")})  # fmt: skip
    assert out.split("\n")[2] == ("# labgate: note: no DUT user (su: can't set groups: Function not implemented); "
                                  "commands run as root")  # fmt: skip
    assert "    ran\nok 1 first\n" in out
    from lab.framing import check_runner_framing

    assert check_runner_framing(out, ["first"]) == []


@pytest.mark.needs("busybox", HOST_RUN)
def test_a_command_cannot_read_the_command_index_to_skip_or_replay_later_commands(tmp_path: Path) -> None:
    out = run_dut_runner(tmp_path, [
        Command("greedy", "cat <&3 >/dev/null && echo READ-THE-INDEX; read -r line <&3 && echo SKIPPED", root=True),
        Command("second", "echo second ran", root=True),
        Command("third", "exit 1", root=True),
    ])  # fmt: skip
    assert "READ-THE-INDEX" not in out and "SKIPPED" not in out
    assert "    second ran\nok 2 second\n" in out and "not ok 3 third # exit status 1\n" in out
