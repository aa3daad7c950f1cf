"""lab.caps: which cap ends a boot, on a clock the test sets (the read loops' own tests use real sockets)."""

from __future__ import annotations

from lab.caps import BootCaps, PortsReading, cap_message

CAPS = BootCaps(job_s=100, boot_s=30, silence_s=10, console_bytes=50, runner_bytes=40)


def test_the_boot_cap_runs_until_the_runners_first_byte_and_then_stops_counting() -> None:
    reading = PortsReading(CAPS, on_at=1000.0)
    for t in range(1001, 1030, 5):  # the console talks, the runner has not started
        assert reading.take("console", b"x", float(t)) is None
    assert reading.wait_s(1029.0) == 1.0
    assert reading.due(1030.0) == "boot-timeout"
    started = PortsReading(BootCaps(job_s=100, boot_s=30, silence_s=10), on_at=1000.0)
    started.take("runner", b"KTAP version 1\n", 1020.0)
    for t in range(1025, 1100, 5):
        assert started.take("runner", b"    .\n", float(t)) is None and started.due(float(t)) is None
    assert started.due(1100.0) == "timeout"  # the job cap, whatever else is going on


def test_silence_counts_from_the_last_byte_of_either_port() -> None:
    reading = PortsReading(CAPS, on_at=0.0)
    reading.take("console", b"boot\n", 5.0)
    assert reading.due(14.9) is None and reading.wait_s(14.0) == 1.0
    assert reading.due(15.0) == "silence"
    assert reading.take("runner", b"late", 16.0) == "silence"  # an ending is final
    assert reading.result("qemu-exit") == (b"boot\n", b"", "silence")


def test_byte_caps_cut_each_port_and_the_end_marker_ends_the_boot_even_split() -> None:
    reading = PortsReading(CAPS, on_at=0.0)
    assert reading.take("console", b"a" * 30, 1.0) is None
    assert reading.take("console", b"b" * 30, 2.0) == "console-limit"
    assert reading.result("console-limit")[0] == b"a" * 30 + b"b" * 20
    runner = PortsReading(CAPS, on_at=0.0)
    assert runner.take("runner", b"KTAP\n# labgate:", 1.0) is None
    assert runner.take("runner", b" end\nafter", 2.0) == "end-marker"
    assert runner.result("end-marker")[1] == b"KTAP\n# labgate: end\n"
    flood = PortsReading(CAPS, on_at=0.0)
    assert flood.take("runner", b"r" * 41, 1.0) == "runner-limit" and len(flood.result("runner-limit")[1]) == 40


def test_a_kernel_panic_ends_the_boot_once_its_report_had_time_to_arrive() -> None:
    reading = PortsReading(BootCaps(job_s=100, boot_s=30, silence_s=10), on_at=0.0)
    reading.take("console", b"[  1.0] Kernel panic - not", 1.0)
    assert reading.take("console", b" syncing: VFS: Unable to mount root fs\n", 1.5) is None  # split header
    assert reading.wait_s(2.0) == 2.5  # the grace after the header, before the silence cap
    assert reading.due(4.4) is None and reading.due(4.5) == "kernel-panic"
    assert cap_message("kernel-panic", CAPS) == "the kernel panicked: the target was stopped 3 s after the panic"
    assert PortsReading(CAPS, on_at=0.0).take("console", b"no panic here", 1.0) is None


def test_no_boot_or_silence_cap_leaves_only_the_jobs() -> None:
    reading = PortsReading(BootCaps(job_s=5), on_at=0.0)
    assert reading.due(4.9) is None and reading.wait_s(1.0) == 4.0
    assert reading.due(5.0) == "timeout"


def test_each_cap_says_which_it_is_and_its_value() -> None:
    assert cap_message("boot-timeout", CAPS, 30.04) == (
        "the boot cap fired: the runner did not start within 30 s of power-on (stopped 30.0 s after power-on)")
    assert cap_message("silence", CAPS) == (
        "the silence cap fired: no byte on the console nor the runner's port for 10 s")
    assert cap_message("timeout", CAPS) == (
        "the job cap fired: the runner's end marker did not come within 100 s of power-on")
    assert "50 bytes" in cap_message("console-limit", CAPS) and "40 bytes" in cap_message("runner-limit", CAPS)
