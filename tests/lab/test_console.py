"""Tests for lab.console: crash titles and reports on real consoles, fed whole and in chunks of any size.

The consoles are real (tests/lab/data/consoles/README.md says where each comes from): our own
tinyconfig kernel crashed through LKDTM, syzbot's reports as mailed to the kernel lists and as
kept in syzkaller's own tests (with the title syzbot gave them), and the kernel's documentation.
"""

from __future__ import annotations

import random
import time
import tracemalloc
from pathlib import Path

import pytest

from lab.console import MAX_LINE, MAX_REPORT_LINES, ConsoleWatcher, Crash, first_crash
from tests.lab import lkdtm_kernel
from tests.requirements import missing, need

DATA = Path(__file__).resolve().parent / "data"
CONSOLES = DATA / "consoles"

# Our kernel (lab/kconfig/lkdtm.config), crashed on purpose: (title, kind, first line has, last line has).
LKDTM = {
    # panic=-1 reboots before the "---[ end Kernel panic" marker: the report ends after the trace.
    "lkdtm-panic": ("kernel panic: dumptest", "panic", "Kernel panic - not syncing: dumptest",
                    "Kernel Offset: disabled"),
    "lkdtm-oops": ("BUG: unable to handle kernel NULL pointer dereference in lkdtm_EXCEPTION", "oops",
                   "BUG: kernel NULL pointer dereference, address: 0000000000000000", "---[ end trace"),
    "lkdtm-bug": ("kernel BUG in lkdtm_BUG", "bug", "kernel BUG at drivers/misc/lkdtm/bugs.c:", "---[ end trace"),
    "lkdtm-warning": ("WARNING in lkdtm_WARNING", "warning", "WARNING: CPU: 0 PID: ", "---[ end trace"),
    # lkdtm_HUNG_TASK tail-calls schedule() and lkdtm_do_action is inlined: the trace's first
    # frame that is not waiting machinery is direct_entry, which syzbot's rule names.
    "lkdtm-hung-task": ("INFO: task hung in direct_entry", "hung-task", "blocked for more than 2 seconds.",
                        "</TASK>"),
    "lkdtm-soft-lockup": ("BUG: soft lockup in full_proxy_write", "soft-lockup",
                          "watchdog: BUG: soft lockup - CPU#0 stuck for", "</TASK>"),
}  # fmt: skip
# Public reports: syzbot's title is in the mail's subject; the documentation's are syzbot's rules applied.
PUBLIC = {
    "syzbot-ubsan-shift-out-of-bounds.log": ("UBSAN: shift-out-of-bounds in attr_set_size", "ubsan",
                                             "UBSAN: shift-out-of-bounds in fs/ntfs3/attrib.c:450:9", "====="),
    "syzbot-rcu-stall.log": ("INFO: rcu detected stall in tctx_task_work", "rcu-stall",
                             "rcu: INFO: rcu_preempt self-detected stall on CPU", "</TASK>"),
    "syzbot-soft-lockup.log": ("BUG: soft lockup in call_usermodehelper_exec_async", "soft-lockup",
                               "watchdog: BUG: soft lockup - CPU#1 stuck for 22s!", " ret_from_fork+0x10/0x18"),
    # syzbot skips frames named like allocators (k?v?[mzc]alloc): the test's own kmalloc_oob_right and
    # kmalloc_tests_init go, as syzbot's current rules would drop them too.
    "doc-kasan.log": ("KASAN: slab-out-of-bounds Write in do_one_initcall", "kasan",
                      "BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right+0xa8/0xbc [test_kasan]", "====="),
    "doc-ubsan.log": ("UBSAN: undefined-behaviour in _mix_pool_bytes", "ubsan",
                      "UBSAN: Undefined behaviour in ../include/linux/bitops.h:110:33", "====="),
}  # fmt: skip
# syzkaller's own report tests: each file starts with "TITLE: ..." (none when there is no crash).
SYZKALLER = sorted(CONSOLES.glob("syzkaller-report-*"))
# Real consoles with a crash in them among the KTAP data: a UML kernel that could not mount root.
KTAP_PANICS = ("kunit_kernel_panic_interrupt.log", "kunit_interrupted_tap_output.log", "kunit_multiple_prefixes.log")


def syzkaller_case(path: Path) -> tuple[str | None, str]:
    """(syzbot's title or None, the console) of one syzkaller report test file."""
    text = path.read_text()
    if not text.startswith("TITLE: "):
        return None, text
    head, _, console = text.partition("\n\n")
    return head.split("\n")[0].removeprefix("TITLE: "), console


def fed_in_pieces(text: str, sizes: list[int]) -> Crash | None:
    watcher = ConsoleWatcher()
    position = 0
    for size in sizes:
        watcher.feed(text[position : position + size])
        position += size
    watcher.feed(text[position:])
    return watcher.crash()


def check_report(crash: Crash | None, title: str, kind: str, first: str, last: str) -> None:
    assert crash is not None
    assert (crash.title, crash.kind) == (title, kind)
    lines = crash.excerpt.split("\n")
    assert first in lines[0], lines[0]
    assert last in lines[-1], lines[-1]
    assert "\r" not in crash.excerpt


# --- titles and reports --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LKDTM))
def test_our_kernels_crashes_get_syzbot_titles_and_whole_reports(name: str) -> None:
    console = (CONSOLES / f"{name}.log").read_text()
    crash = first_crash(console)
    check_report(crash, *LKDTM[name])
    assert crash is not None and "Call Trace:" in crash.excerpt


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_reports_get_syzbots_titles(name: str) -> None:
    check_report(first_crash((CONSOLES / name).read_text()), *PUBLIC[name])


@pytest.mark.parametrize("path", SYZKALLER, ids=lambda p: p.name)
def test_syzkaller_report_tests_get_the_title_syzbot_expects(path: Path) -> None:
    title, console = syzkaller_case(path)
    crash = first_crash(console)
    assert (crash.title if crash else None) == title


def test_the_report_ends_at_its_end_marker_not_at_the_panic_after_it() -> None:
    _, console = syzkaller_case(CONSOLES / "syzkaller-report-580")
    crash = first_crash(console)
    assert crash is not None and crash.excerpt.endswith("---[ end trace 27e18266d4e765d9 ]---")
    assert "Fatal exception" not in crash.excerpt and "cut here" not in crash.excerpt


def test_a_kasan_report_runs_to_its_closing_rule_across_its_three_stacks() -> None:
    crash = first_crash((CONSOLES / "doc-kasan.log").read_text())
    assert crash is not None
    assert "Allocated by task 2760:" in crash.excerpt and "Freed by task 815:" in crash.excerpt
    assert "Memory state around the buggy address:" in crash.excerpt


def test_interleaved_lines_of_other_tasks_stay_out_of_the_report() -> None:
    # syzbot's WARNING (task T3598) with another task's boot chatter (T1, a real ppc64 boot) between its lines.
    _, warning = syzkaller_case(CONSOLES / "syzkaller-report-640")
    chatter = (DATA / "ktap" / "kunit_boot_ppc64_next-20210817.log").read_text().splitlines()
    mixed = "\n".join(line for pair in zip(warning.splitlines(), chatter, strict=False) for line in pair) + "\n"
    assert first_crash(mixed) == first_crash(warning)


@pytest.mark.parametrize("name", KTAP_PANICS)
def test_real_kunit_consoles_that_panicked(name: str) -> None:
    crash = first_crash((DATA / "ktap" / name).read_text())
    assert crash is not None
    title = "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"
    assert (crash.title, crash.kind) == (title, "panic")


def test_the_first_crash_wins() -> None:
    oops = (CONSOLES / "lkdtm-oops.log").read_text()
    warning = (CONSOLES / "lkdtm-warning.log").read_text()
    assert first_crash(warning + oops) == first_crash(warning)
    assert first_crash(oops + warning) == first_crash(oops)


def test_a_console_ending_inside_a_report_gives_the_report_so_far() -> None:
    console = (CONSOLES / "lkdtm-bug.log").read_text()
    cut = console[: console.index("Call Trace:")]
    crash = first_crash(cut)
    assert crash is not None and crash.kind == "bug" and crash.title == "kernel BUG in lkdtm_BUG"
    one_line = first_crash("[    1.000000] Kernel panic - not syncing: VFS: Unable to mount root fs")  # no newline
    assert one_line == Crash("kernel panic: VFS: Unable to mount root fs", "panic",
                             "[    1.000000] Kernel panic - not syncing: VFS: Unable to mount root fs")  # fmt: skip


# --- no false alarms ---------------------------------------------------------------------------


def clean_consoles() -> list[Path]:
    ktap = [p for p in sorted((DATA / "ktap").iterdir()) if p.suffix in (".log", ".ktap") and p.name not in KTAP_PANICS]
    return [CONSOLES / "lkdtm-clean.log", *ktap]


@pytest.mark.parametrize("path", clean_consoles(), ids=lambda p: p.name)
def test_clean_boots_and_test_output_have_no_crash(path: Path) -> None:
    assert first_crash(path.read_text()) is None


def test_ktap_that_names_bug_warning_or_panic_in_its_tests_is_no_crash() -> None:
    ktap = "\n".join([
        "KTAP version 1", "1..5",
        "    # Subtest: lkdtm", "    ok 1 BUG", "    ok 2 WARNING", "    not ok 3 PANIC # SKIP needs a reboot",
        "ok 1 lkdtm", "ok 2 test_BUG_ON_is_silent", "# test_kernel_BUG: BUG: expected, not seen",
        "ok 3 kernel_BUG_at_line", "not ok 4 WARNING_in_foo", "# INFO: starting the next suite",
        "ok 5 Kernel_panic_selftest", "# totals: pass:4 fail:1 xfail:0 xpass:0 skip:0 error:0",
    ])  # fmt: skip
    assert first_crash(ktap) is None


def test_a_program_printing_info_or_warning_on_the_console_is_no_crash() -> None:
    console = ("[    2.1] INFO: starting labgate-run\n"
               "[    2.2] WARNING: /etc/ssh/moduli does not exist, using fixed modulus\n"
               "[    2.3] WARNING: workqueue cpumask: online intersect > possible intersect\n")  # fmt: skip
    assert first_crash(console) is None


# --- chunks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*sorted(LKDTM), *sorted(PUBLIC)])
def test_every_split_point_of_a_report_gives_the_same_answer(name: str) -> None:
    path = CONSOLES / (name if name.endswith(".log") else f"{name}.log")
    console = path.read_text()
    whole = first_crash(console)
    assert whole is not None
    # The report and a little before it: every split in it, and the rest of the console after it.
    start = max(0, console.index(whole.excerpt.split("\n")[0]) - 200)
    end = console.index(whole.excerpt.split("\n")[-1]) + len(whole.excerpt.split("\n")[-1]) + 200
    for split in range(start, min(end, len(console)) + 1):
        assert fed_in_pieces(console, [split]) == whole, split


@pytest.mark.parametrize("name", sorted(LKDTM))
def test_any_chunking_gives_the_same_answer(name: str) -> None:
    console = (CONSOLES / f"{name}.log").read_text()
    whole = first_crash(console)
    rng = random.Random(name)
    assert fed_in_pieces(console, [1] * len(console)) == whole
    for _ in range(20):
        sizes = [rng.choice((1, 2, 3, 7, 64, 100, 1000, 4096)) for _ in range(len(console) // 50)]
        assert fed_in_pieces(console, sizes) == whole


def test_crlf_consoles_and_timestamps_do_not_change_the_answer() -> None:
    console = (CONSOLES / "lkdtm-warning.log").read_text()
    crlf = first_crash(console.replace("\n", "\r\n"))
    plain = first_crash(console)
    assert crlf == plain


def test_text_beyond_ascii_before_a_report_does_not_change_the_answer() -> None:
    # An ASCII chunk is searched as bytes, any other as text: both find the same report.
    report = (CONSOLES / "lkdtm-warning.log").read_text()
    chatter = "[    0.5] café: ünïcode \ufffd garbage — and a BUG-free line\n" * 200
    assert first_crash(chatter + report) == first_crash(report)
    assert fed_in_pieces(chatter + report, [len(chatter) - 7, 4096, 100]) == first_crash(report)


@pytest.mark.parametrize("beyond_ascii", [False, True])
def test_a_header_across_the_edge_of_one_search_window_is_found(beyond_ascii: bool) -> None:
    # Headers are searched 16 KiB at a time: put one astride every place near that edge.
    report = (CONSOLES / "lkdtm-oops.log").read_text()
    header = report.index("BUG: kernel NULL pointer dereference")
    line_start = report.rindex("\n", 0, header) + 1
    for edge in range(16384 - 24, 16384 + 4):
        filler = ("é" if beyond_ascii else "x") * (edge - (header - line_start) - 1) + "\n"
        console = filler + report[line_start:]
        assert first_crash(console) == first_crash(report[line_start:]), edge


# --- hostile consoles ---------------------------------------------------------------------


def test_a_1mb_line_neither_grows_memory_nor_hides_the_crash_after_it() -> None:
    report = (CONSOLES / "lkdtm-oops.log").read_text()
    watcher = ConsoleWatcher()
    tracemalloc.start()
    started = time.perf_counter()
    for _ in range(16):  # 16 MB on one line, in 64 KiB chunks
        for _ in range(16):
            watcher.feed("BUG" * 21845 + "x")
    watcher.feed("\n")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    watcher.feed(report)
    elapsed = time.perf_counter() - started
    assert peak < 2 * 1024 * 1024, peak  # the chunks themselves, not the line
    assert elapsed < 10
    assert watcher.crash() == first_crash(report)


def test_a_header_at_the_start_of_a_huge_line_is_still_seen_and_cut() -> None:
    crash = first_crash("[    1.0] BUG: unable to handle page fault for address: " + "f" * 2_000_000 + "\n")
    assert crash is not None and crash.kind == "oops"
    assert len(crash.excerpt) == MAX_LINE


def test_binary_garbage_is_read_at_speed_and_never_mistaken_for_a_crash() -> None:
    rng = random.Random(7)
    garbage = bytes(rng.getrandbits(8) for _ in range(1 << 20)).decode("utf-8", errors="replace")
    watcher = ConsoleWatcher()
    started = time.perf_counter()
    for _ in range(8):
        watcher.feed(garbage)
    assert time.perf_counter() - started < 5
    assert watcher.crash() is None


def test_a_flood_of_needles_stays_linear() -> None:
    # Lines that all look like candidates but are no header: each is read once.
    flood = "[    1.0] xBUG WARNING: nothing INFO: nothing Kernel panicky [#1]\n" * 100_000
    started = time.perf_counter()
    assert first_crash(flood) is None
    assert time.perf_counter() - started < 10


def test_an_endless_report_is_cut() -> None:
    report = "[    1.0] INFO: task sh:75 blocked for more than 2 seconds.\n" + "[    1.1] some chatter\n" * 10_000
    crash = first_crash(report)
    assert crash is not None and crash.excerpt.count("\n") + 1 == MAX_REPORT_LINES


# --- live: build the kernel, crash it, read the console ------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.needs("qemu", "the LKDTM kernel boots on it")
@pytest.mark.needs("busybox", "the initramfs is busybox")
def test_live_lkdtm_crashes_get_the_same_titles(tmp_path: Path) -> None:
    """Builds lab/kconfig/lkdtm.config once (cached), boots it per crash type, checks the watcher live."""
    need("qemu", "the LKDTM kernel boots on it")
    if not lkdtm_kernel.LINUX_SOURCE.is_file():
        missing(f"{lkdtm_kernel.LINUX_SOURCE} is missing: scripts/setup.sh installs linux-source-6.1")
    kernel = lkdtm_kernel.build_kernel()
    for provocation in lkdtm_kernel.PROVOCATIONS:
        outcome = lkdtm_kernel.provoke(kernel, provocation, tmp_path / provocation.name)
        crash = first_crash(outcome.console)
        if provocation.name == "lkdtm-clean":
            assert crash is None, outcome.console[-2000:]
            continue
        title, kind, first, last = LKDTM[provocation.name]
        assert crash is not None, outcome.console[-3000:]
        assert (crash.title, crash.kind) == (title, kind), crash.excerpt
        assert first in crash.excerpt.split("\n")[0]
