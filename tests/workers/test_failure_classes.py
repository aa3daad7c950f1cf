"""workers.testjob.judge: which boots are the change's failures and which are ours, on real consoles.

The consoles are the ones real kernels printed here (tests/lab/data/consoles/); the boots that
produce each ending live are in tests/workers/test_injected_boots.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.caps import BootCaps, Ended
from lab.console import first_crash
from lab.framing import read_runner_document
from lab.ktap import parse_ktap
from lab.runner import BootOutcome
from workers.spec import (
    INCOMPLETE_BOOT_UNPROVEN,
    INCOMPLETE_FRAMING,
    INCOMPLETE_LAB_KERNEL,
    INCOMPLETE_NO_CONSOLE,
    INCOMPLETE_QEMU_CRASHED,
    QemuSpec,
    TestCommand,
    TestSpec,
)
from workers.testjob import judge

CONSOLES = Path(__file__).resolve().parents[1] / "lab" / "data" / "consoles"
PANIC = (CONSOLES / "lkdtm-panic.log").read_text()
WARNING = (CONSOLES / "lkdtm-warning.log").read_text()
CLEAN = (CONSOLES / "lkdtm-clean.log").read_text()
BOOT_ONLY = CLEAN[: CLEAN.index("Run /init")]  # the same kernel's console up to the start of /init
CHANGE_KERNEL = "arch/x86/boot/bzImage"
EVIDENCE = "job 41 booted kernel 6.1.192 to the runner on this class"
CAPS = BootCaps(job_s=60, boot_s=30, silence_s=3, console_bytes=4096, runner_bytes=8192)
FULL_RUN = "KTAP version 1\n1..1\nok 1 a\n# labgate: end\n"
STARTED = "KTAP version 1\n1..1\n    working\n"


def spec(kernel: str = CHANGE_KERNEL, evidence: str = "") -> TestSpec:
    return TestSpec(name="t", device_class="qemu-x86_64", qemu=QemuSpec(), kernel=kernel,
                    commands=(TestCommand(name="a", run="true"),), artifacts={}, timeout_s=60,
                    boot_evidence=evidence)  # fmt: skip


def judged(console: str, runner: str, ended: Ended, *, test: TestSpec | None = None,
           qemu_status: int | None = None) -> tuple[str, str | None, str]:  # fmt: skip
    test = test or spec()
    outcome = BootOutcome(console=console, runner=runner, ended=ended, boot_s=12.3, qemu_status=qemu_status,
                          setup_s=0.1)  # fmt: skip
    doc = read_runner_document(runner, [c.name for c in test.commands])
    result, code, message = judge(outcome, parse_ktap(runner), doc, test, CAPS, first_crash(console))
    return result, code, message or ""


def test_a_clean_run_passes_and_a_crash_during_the_tests_fails_it_with_its_title() -> None:
    assert judged(CLEAN, FULL_RUN, "end-marker") == ("pass", None, "")
    result, code, message = judged(WARNING, FULL_RUN, "end-marker")
    assert (result, code) == ("fail", None) and message == "kernel crash while the tests ran: WARNING in lkdtm_WARNING"


def test_a_crash_title_wins_over_the_cap_that_fired_after_it() -> None:
    for ended in ("console-limit", "silence", "timeout", "runner-limit"):
        result, code, message = judged(PANIC, STARTED, ended)
        assert (result, code) == ("fail", None), ended
        assert message.startswith("kernel crash while the tests ran: kernel panic: dumptest; then the "), message
    _, _, message = judged(PANIC, STARTED, "console-limit")
    assert "the console cap fired: the kernel console passed 4096 bytes" in message


@pytest.mark.parametrize(("ended", "says"), [
    ("silence", "the silence cap fired: no byte on the console nor the runner's port for 3 s (stopped 12.3 s"),
    ("timeout", "the job cap fired: the runner's end marker did not come within 60 s of power-on (stopped 12.3 s"),
    ("console-limit", "the console cap fired: the kernel console passed 4096 bytes (truncated there)"),
    ("runner-limit", "the runner's output cap fired: the commands' output passed 8192 bytes"),
    ("qemu-exit", "the guest powered off or reset before the runner's end marker"),
])  # fmt: skip
def test_a_cap_after_the_runner_started_is_the_changes_failure_naming_the_cap(ended: Ended, says: str) -> None:
    for kernel in (CHANGE_KERNEL, "debian"):
        result, code, message = judged(CLEAN, STARTED, ended, test=spec(kernel), qemu_status=0)
        assert (result, code) == ("fail", None) and message.startswith(f"the tests did not finish: {says}"), message


def test_qemu_dying_with_an_error_is_ours_before_or_after_the_runner_started() -> None:
    for runner in ("", STARTED):
        result, code, message = judged(CLEAN[:500], runner, "qemu-exit", qemu_status=-9, test=spec(evidence=EVIDENCE))
        assert (result, code) == ("incomplete", INCOMPLETE_QEMU_CRASHED)
        assert message.startswith("QEMU exited with status -9 (not the guest's power-off)")


def test_the_changes_kernel_that_never_reaches_the_runner_fails_only_on_a_class_seen_booting() -> None:
    result, code, message = judged(PANIC[: PANIC.index("Run /init")] + PANIC[PANIC.index("Kernel panic"):], "",
                                   "qemu-exit", qemu_status=0, test=spec(evidence=EVIDENCE))  # fmt: skip
    assert (result, code) == ("fail", None)
    assert message.startswith("boot failed: kernel panic: dumptest (the guest powered off or reset")
    assert f"this device class booted to the runner before ({EVIDENCE})" in message
    result, code, message = judged(BOOT_ONLY, "", "boot-timeout", test=spec(evidence=EVIDENCE))
    assert (result, code) == ("fail", None)
    assert message.startswith("boot failed: the boot cap fired: the runner did not start within 30 s of power-on")
    result, code, message = judged(BOOT_ONLY, "", "boot-timeout", test=spec(evidence=""))
    assert (result, code) == ("incomplete", INCOMPLETE_BOOT_UNPROVEN)
    assert message.startswith("the change's kernel never reached the runner: the boot cap fired")
    # Not a byte on QEMU's console (a machine without a firmware banner): QEMU's UART cannot die while QEMU
    # lives, so a silent change's kernel is a boot that failed (tests/security/test_issue10_attacks.py).
    assert judged("", "", "silence", test=spec(evidence=""))[1] == INCOMPLETE_BOOT_UNPROVEN
    assert judged("", "", "silence", test=spec(evidence=EVIDENCE))[:2] == ("fail", None)
    # A panic that halts the kernel before the runner: labgate stopped it, the panic is the reason.
    result, code, message = judged(PANIC[: PANIC.index("Run /init")] + PANIC[PANIC.index("Kernel panic"):], "",
                                   "kernel-panic", test=spec(evidence=EVIDENCE))  # fmt: skip
    assert (result, code) == ("fail", None) and message.startswith(
        "boot failed: kernel panic: dumptest (the kernel panicked: the target was stopped 3 s after the panic")


def test_the_labs_kernel_that_never_reaches_the_runner_is_ours() -> None:
    lab = spec("debian", evidence=EVIDENCE)
    result, code, message = judged(BOOT_ONLY, "", "silence", test=lab)
    assert (result, code) == ("incomplete", INCOMPLETE_LAB_KERNEL)
    assert message.startswith("the lab's kernel never reached the runner: the silence cap fired")
    silent = "# labgate: the silence cap fired: no byte on the console nor the runner's port for 3 s\n"
    result, code, message = judged(silent, "", "silence", test=lab)
    assert (result, code) == ("incomplete", INCOMPLETE_NO_CONSOLE)
    assert message.startswith("the target printed nothing on its console: the silence cap fired")


def test_broken_runner_framing_is_ours_and_refuses_the_results() -> None:
    """Under the lab's kernel, with no root command, only the runner writes its port."""
    forged = "KTAP version 1\n1..1\nok 1 a\nok 2 extra\n# labgate: end\n"
    result, code, message = judged(CLEAN, forged, "end-marker", test=spec("debian"))
    assert (result, code) == ("incomplete", INCOMPLETE_FRAMING) and message.startswith("results refused: ")
