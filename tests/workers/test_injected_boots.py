"""Real boots with an injected failure, each through the test worker (run_test_job), each classified.

Every test boots QEMU confined as the lab worker does (a slot uid, bwrap, cgroup). "The change's
kernel" is Debian's vmlinuz handed over as a build artifact, so that the judge treats it as the
change's code; "debian" is the lab's own. The rules are workers.testjob.judge's; the same rules on
recorded consoles are in tests/workers/test_failure_classes.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.caps import BootCaps
from lab.console import first_crash
from lab.framing import read_runner_document
from lab.initramfs import Command, build_initramfs
from lab.kernel import fetch_debian_kernel
from lab.ktap import parse_ktap
from lab.runner import BootRequest, run_boot
from tests.lab.conftest import processes_mentioning
from tests.requirements import missing
from workers.artifacts import ArtifactStore
from workers.spec import (
    INCOMPLETE_BOOT_UNPROVEN,
    INCOMPLETE_LAB_KERNEL,
    INCOMPLETE_NO_CONSOLE,
    INCOMPLETE_QEMU_CRASHED,
    PLACE_FAULT_CODES,
    ArtifactRef,
    JobResult,
    JobSpec,
    QemuSpec,
    TestCommand,
    TestSpec,
)
from workers.testjob import judge, run_test_job

pytestmark = [
    pytest.mark.needs("qemu", "each test boots a kernel"),
    pytest.mark.needs("root", "the test worker confines QEMU as a slot uid"),
    pytest.mark.needs("sandbox-users", "the QEMU slots' uids"),
    pytest.mark.needs("busybox", "the DUT's userland"),
]

CHANGE_KERNEL = "arch/x86/boot/bzImage"
EVIDENCE = "job 7 booted this class's kernel to the runner"
TEST_CACHE = Path(os.environ.get("LABGATE_TEST_CACHE", "~/.cache/labgate-test")).expanduser()


@pytest.fixture(scope="module")
def lab_kernel() -> Path:
    """Debian's kernel, where the worker itself takes it from for `kernel: debian`."""
    cache = Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()
    return fetch_debian_kernel(cache / "kernel")


@pytest.fixture()
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def run_job(tmp_path: Path, store: ArtifactStore, commands: list[TestCommand], *, kernel: Path | None = None,
            qemu: QemuSpec | None = None, files: dict[str, Path] | None = None,
            **caps: object) -> JobResult:  # fmt: skip
    """One test job through the worker; `kernel` (a file) boots as the change's kernel, else the lab's."""
    artifacts = {name: ArtifactRef(digest=store.put_file(path)) for name, path in (files or {}).items()}
    if kernel is not None:
        artifacts[CHANGE_KERNEL] = ArtifactRef(digest=store.put_file(kernel))
    fields: dict[str, object] = {"timeout_s": 300, **caps}
    test = TestSpec(name="injected", device_class="qemu-x86_64", qemu=qemu or QemuSpec(),
                    kernel=CHANGE_KERNEL if kernel is not None else "debian", commands=tuple(commands),
                    artifacts=artifacts, **fields)  # type: ignore[arg-type]  # fmt: skip
    spec = JobSpec(job_id=abs(hash(tmp_path)) % 10**6, pipeline_id=1, kind="test", tree_name="t",
                   tree_url="https://forge.invalid/t.git", max_log_bytes=1 << 20, test=test)  # fmt: skip
    return run_test_job(spec, 1, tmp_path / "worker", store)


def summary(result: JobResult) -> tuple[object, ...]:
    print(f"result={result.result} error_code={result.error_code} ended={result.outputs.get('ended')} "
          f"boot_s={result.outputs.get('boot_s')}\nmessage={result.error_message}")  # fmt: skip
    return result.result, result.error_code, result.outputs["ended"], result.outputs["reached_runner"]


# --- the change's code crashed or hung the target: `fail` ----------------------------------


def test_a_panic_while_the_tests_run_fails_with_its_title_and_the_dut_has_no_network(
    tmp_path: Path, store: ArtifactStore
) -> None:
    result = run_job(tmp_path, store, [
        TestCommand(name="interfaces", run="ls /sys/class/net"),
        # panic timeout 0: the kernel halts after its panic, as a board's may, instead of resetting.
        TestCommand(name="panic", run="echo 0 > /proc/sys/kernel/panic; echo c > /proc/sysrq-trigger", root=True),
    ], silence_timeout_s=60)  # fmt: skip

    # labgate stops the halted target 3 s after the panic's header, long before the 60 s silence cap.
    assert summary(result) == ("fail", None, "kernel-panic", True)
    assert result.error_message is not None and result.error_message.startswith(
        "kernel crash while the tests ran: kernel panic: sysrq triggered crash; then the kernel panicked: the "
        "target was stopped 3 s after the panic (stopped ")  # fmt: skip
    crash = result.outputs["crash"]
    assert isinstance(crash, dict) and crash["kind"] == "panic"
    assert crash["title"] == "kernel panic: sysrq triggered crash" and "sysrq" in crash["excerpt"]
    # No network granted: QEMU has no NIC at all (-nic none), so the DUT has only its loopback.
    assert result.tests[0].path == "interfaces" and result.tests[0].diagnostics == "lo"


@pytest.mark.slow
def test_a_hung_dut_is_stopped_at_the_silence_cap_and_the_result_names_it(
    tmp_path: Path, store: ArtifactStore, lab_kernel: Path
) -> None:
    # The plan's command wants 600 s; the lab's silence cap is 30 s, well under the job's 300 s and the
    # boot cap's 120 s. It counts from power-on too, and Debian's kernel decompresses silently: 2-3 s
    # under TCG on an idle host, but 15-20 s and more at a load of 7-10 (15 s and 20 s caps fired
    # there before the runner started; 30 s held).
    started = time.monotonic()
    result = run_job(tmp_path, store, [TestCommand(name="hang", run="echo going; sleep 600")], kernel=lab_kernel,
                     boot_evidence=EVIDENCE, boot_timeout_s=120, silence_timeout_s=30)  # fmt: skip

    assert summary(result) == ("fail", None, "silence", True)
    assert result.error_message is not None and result.error_message.startswith(
        "the tests did not finish: the silence cap fired: no byte on the console nor the runner's port for 30 s"
        " (stopped ")  # fmt: skip
    assert time.monotonic() - started < 120
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.slow
def test_a_console_flood_is_truncated_at_the_console_cap_and_fails(tmp_path: Path, store: ArtifactStore) -> None:
    cap = 64 * 1024  # Debian's boot prints ~25 KB; the command writes 200 KB more
    result = run_job(tmp_path, store, [
        TestCommand(name="flood", run="head -c 200000 /dev/zero | tr '\\0' x > /dev/console; sleep 60", root=True),
    ], max_console_bytes=cap, silence_timeout_s=60)  # fmt: skip

    assert summary(result) == ("fail", None, "console-limit", True)
    assert result.error_message is not None and result.error_message.startswith(
        f"the tests did not finish: the console cap fired: the kernel console passed {cap} bytes (truncated there)")
    assert len(result.error_message) < 6000  # the console's tail, its one line of 100 KB cut


# --- boots that never reach the runner ------------------------------------------------------


def silent_kernel(path: Path) -> Path:
    """A "kernel" that prints nothing: a 140-byte PVH ELF whose entry is `cli; hlt`.

    On QEMU's microvm (qboot, no firmware banner) the console then stays empty, as a dead
    board's or a kernel that dies before its console would.
    """
    load, code = 0x100000, bytes([0xFA, 0xF4, 0xEB, 0xFD])  # cli; hlt; jmp back to hlt
    note_off = 52 + 2 * 32
    code_off = note_off + 16 + 4
    entry = load + code_off
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)  # XEN_ELFNOTE_PHYS32_ENTRY
    size = code_off + len(code)
    header = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, 52, 0, 0, 52, 32,
                                                              2, 40, 0, 0)  # fmt: skip
    load_ph = struct.pack("<8I", 1, 0, load, load, size, size, 7, 0x1000)
    note_ph = struct.pack("<8I", 4, note_off, load + note_off, load + note_off, len(note), len(note), 4, 4)
    path.write_bytes(header + load_ph + note_ph + note + code)
    return path


def test_a_silent_changes_kernel_on_qemu_is_the_changes_failure(tmp_path: Path, store: ArtifactStore) -> None:
    """Not one byte on QEMU's console (microvm has no firmware banner): QEMU's UART cannot die while QEMU
    lives, so on a class seen booting the change's silent kernel is a boot that failed, not our fault (a
    board's silent UART stays no-console-output, counted against the place)."""
    kernel = silent_kernel(tmp_path / "halt.elf")
    microvm = QemuSpec(machine="microvm", memory="64M")
    silent = run_job(tmp_path / "b", store, [TestCommand(name="a", run="true")], kernel=kernel, qemu=microvm,
                     silence_timeout_s=2, boot_evidence=EVIDENCE)  # fmt: skip
    assert summary(silent) == ("fail", None, "silence", False)
    assert silent.error_message is not None and silent.error_message.startswith(
        "boot failed: the silence cap fired: no byte on the console nor the runner's port for 2 s")
    assert INCOMPLETE_NO_CONSOLE in PLACE_FAULT_CODES


def test_the_boot_cap_holds_and_the_labs_kernel_missing_it_is_ours(tmp_path: Path, store: ArtifactStore) -> None:
    # The plan would wait 600 s; the lab's boot cap (2 s) is shorter than any TCG boot to the runner.
    started = time.monotonic()
    result = run_job(tmp_path, store, [TestCommand(name="hang", run="sleep 600")], boot_timeout_s=2)
    assert summary(result) == ("incomplete", INCOMPLETE_LAB_KERNEL, "boot-timeout", False)
    assert result.error_message is not None and result.error_message.startswith(
        "the lab's kernel never reached the runner: the boot cap fired: the runner did not start within 2 s of"
        " power-on (stopped 2.")  # fmt: skip
    assert time.monotonic() - started < 30 and processes_mentioning(str(tmp_path)) == []


@pytest.mark.slow
def test_a_kernel_that_panics_before_the_runner_failed_boot_only_on_a_class_seen_booting(
    tmp_path: Path, lab_kernel: Path
) -> None:
    """The boot arguments are the lab's, not the spec's: this boot goes through lab.runner with an init the
    kernel cannot find (a broken boot, as a patch can make it), and the worker's judge classifies it."""
    image = build_initramfs(tmp_path / "initramfs.cpio.gz", {}, commands=[Command("a", "true")])
    outcome = run_boot(BootRequest(lab_kernel, image, tmp_path, timeout_s=120, silence_timeout_s=60,
                                   boot_args="console=ttyS0 panic=-1 rdinit=/no-such-init"))  # fmt: skip
    crash = first_crash(outcome.console)
    assert outcome.ended in ("qemu-exit", "kernel-panic") and not outcome.reached_runner and crash is not None
    runner = read_runner_document(outcome.runner, ["a"])

    def classify(kernel: str, evidence: str) -> tuple[str, str | None, str | None]:
        test = TestSpec(name="t", device_class="qemu-x86_64", qemu=QemuSpec(), kernel=kernel,
                        commands=(TestCommand(name="a", run="true"),), artifacts={}, timeout_s=120,
                        boot_evidence=evidence)  # fmt: skip
        return judge(outcome, parse_ktap(outcome.runner), runner, test, BootCaps(job_s=120), crash)

    result, code, message = classify(CHANGE_KERNEL, EVIDENCE)
    print(result, code, message)
    assert (result, code) == ("fail", None) and message is not None
    assert message.startswith(f"boot failed: {crash.title} (")
    assert crash.title.startswith("kernel panic: ")
    result, code, message = classify(CHANGE_KERNEL, "")
    assert (result, code) == ("incomplete", INCOMPLETE_BOOT_UNPROVEN) and crash.title in (message or "")
    result, code, message = classify("debian", EVIDENCE)
    assert (result, code) == ("incomplete", INCOMPLETE_LAB_KERNEL) and crash.title in (message or "")


# --- our side failed: `incomplete` -------------------------------------------------------------


def test_qemu_killed_from_outside_is_qemu_crashed(tmp_path: Path, store: ArtifactStore) -> None:
    outcome: list[JobResult] = []
    job = threading.Thread(target=lambda: outcome.append(
        run_job(tmp_path, store, [TestCommand(name="hang", run="sleep 600")], silence_timeout_s=120)))
    job.start()
    try:
        deadline = time.monotonic() + 60
        qemu: list[tuple[int, str]] = []
        while not qemu and time.monotonic() < deadline:
            qemu = [(pid, cmd) for pid, cmd in processes_mentioning(str(tmp_path)) if cmd.split(" ", 1)[0].endswith(
                "qemu-system-x86_64") and "-initrd" in cmd]  # fmt: skip
            time.sleep(0.1)
        assert qemu, "QEMU never started"
        # No network granted: QEMU's own argv has no NIC at all (labgrid's QEMUDriver would add one).
        assert " -nic none " in qemu[0][1] and "-netdev" not in qemu[0][1] and qemu[0][1].count("-nic") == 1
        time.sleep(1.0)
        os.kill(qemu[0][0], signal.SIGKILL)
    finally:
        job.join(120)
    assert summary(outcome[0])[:2] == ("incomplete", INCOMPLETE_QEMU_CRASHED)
    assert outcome[0].error_message is not None and outcome[0].error_message.startswith("QEMU exited with status ")
    assert "(not the guest's power-off)" in outcome[0].error_message


# --- DUT networking: granted, it lives in QEMU's sandbox ----------------------------------------


@pytest.fixture(scope="module")
def e1000_module(lab_kernel: Path) -> Path:
    """e1000.ko from the same Debian package as the lab's kernel (its NIC drivers are modules)."""
    release = lab_kernel.name.removeprefix("vmlinuz-")
    cached = TEST_CACHE / "modules" / release / "e1000.ko"
    if cached.is_file():
        return cached
    work = cached.parent / ".download"
    work.mkdir(parents=True, exist_ok=True)
    inside = f"./lib/modules/{release}/kernel/drivers/net/ethernet/intel/e1000/e1000.ko"
    try:
        subprocess.run(["apt-get", "download", f"linux-image-{release}"], cwd=work, check=True, capture_output=True,
                       timeout=600)  # fmt: skip
        deb = next(work.glob("linux-image-*.deb"))
        unpacked = subprocess.run(f"dpkg-deb --fsys-tarfile {deb.name} | tar -x {inside}", shell=True, cwd=work,
                                  capture_output=True, timeout=300)  # fmt: skip
        if unpacked.returncode != 0:
            missing(f"no e1000.ko in linux-image-{release}: {unpacked.stderr.decode(errors='replace')[:300]}")
        (work / inside).replace(cached)
    except (subprocess.CalledProcessError, StopIteration, OSError) as exc:
        missing(f"cannot fetch linux-image-{release} for its e1000 module: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cached


@pytest.fixture()
def host_listener() -> Iterator[tuple[int, list[str]]]:
    """A service on the host's 127.0.0.1 (as PostgreSQL and Redis are), recording who connected."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            seen.append(f"{peer[0]}:{peer[1]}")
            with conn:
                conn.sendall(b"HOST-SECRET\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1], seen
    finally:
        stop.set()
        thread.join()
        server.close()


def network_probe(port: int) -> str:
    return ("insmod ./e1000.ko && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0; ls /sys/class/net; "
            "ping -c 1 -W 5 10.0.2.2 >/dev/null && echo gateway-answers; "
            f"nc -w 5 10.0.2.2 {port} </dev/null; echo nc-exit=$?")  # fmt: skip


def test_a_granted_network_cannot_reach_the_hosts_loopback_services(
    tmp_path: Path, store: ArtifactStore, e1000_module: Path, host_listener: tuple[int, list[str]]
) -> None:
    port, seen = host_listener
    result = run_job(tmp_path, store, [TestCommand(name="attack", run=network_probe(port), root=True)],
                     files={"e1000.ko": e1000_module}, network=True, silence_timeout_s=60)  # fmt: skip

    assert summary(result) == ("pass", None, "end-marker", True)
    out = result.tests[0].diagnostics.split("\n")
    # The NIC is there and its user-mode network answers (its gateway is QEMU's own) ...
    assert out[:3] == ["eth0", "lo", "gateway-answers"], out
    # ... but 10.0.2.2 forwards to the loopback of QEMU's network namespace, not the host's.
    assert "HOST-SECRET" not in out and "nc-exit=1" in out, out
    assert seen == []


@pytest.mark.slow
def test_the_same_probe_without_the_sandbox_reaches_the_host(
    tmp_path: Path, lab_kernel: Path, e1000_module: Path, host_listener: tuple[int, list[str]]
) -> None:
    """The control of the test above: QEMU on the host's own network namespace (no worker confinement)
    lets the DUT read the host's service, so the probe does detect a reachable host."""
    port, seen = host_listener
    image = build_initramfs(tmp_path / "initramfs.cpio.gz", {"/labgate/artifacts/e1000.ko": e1000_module},
                            commands=[Command("attack", network_probe(port), root=True)])  # fmt: skip
    outcome = run_boot(BootRequest(lab_kernel, image, tmp_path, timeout_s=120, network=True))
    assert outcome.ended == "end-marker" and "    HOST-SECRET\n" in outcome.runner, outcome.runner
    assert len(seen) == 1
