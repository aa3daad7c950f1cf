"""Caps a plan cannot lift: the lab's limits on a job, what the plan asked, what the job gets, and a note
saying both values whenever they differ."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from bot.core.plans import Build, Test
from workers.spec import DEFAULT_MAX_BOOT_S, DEFAULT_MAX_CONSOLE_BYTES, DEFAULT_MAX_JOB_S, DEFAULT_MAX_SILENCE_S


@dataclass(frozen=True)
class TestCaps:
    """The lab's caps on one test job on one device class (config `caps:`, then the class's own)."""

    __test__ = False  # not a pytest class
    max_job_s: int = DEFAULT_MAX_JOB_S
    max_boot_s: int = DEFAULT_MAX_BOOT_S
    max_silence_s: int = DEFAULT_MAX_SILENCE_S
    max_console_bytes: int = DEFAULT_MAX_CONSOLE_BYTES


@dataclass(frozen=True)
class CappedTest:
    """What one test job gets: the TestSpec fields of the same names, and the notes for the report."""

    __test__ = False
    timeout_s: int
    boot_timeout_s: int
    silence_timeout_s: int
    max_console_bytes: int
    network: bool
    notes: tuple[str, ...] = ()


def network_refusal(*, class_name: str, class_allows: bool, tier: str, granted_tiers: Collection[str]) -> str | None:
    """Why a test that asks for a network gets none; None when it gets one. Both must say yes: the
    device class (its targets can be given a network at all) and the tree (a named grant to tiers)."""
    if not class_allows:
        return f"device class {class_name} allows no network"
    if tier not in granted_tiers:
        granted = ", ".join(sorted(granted_tiers)) or "no tier"
        return f"the tree grants network to {granted}, this change runs at tier {tier}"
    return None


def cap_test(
    test: Test, *, class_name: str, caps: TestCaps, class_network: bool, tier: str, network_tiers: Collection[str]
) -> CappedTest:
    """The lab's caps applied to a test: a longer timeout is cut to the cap, a network not granted is
    off; the boot and silence caps never exceed the job's own timeout."""
    where = f"test {test.name} on {class_name}"
    notes = []
    timeout_s = min(test.timeout, caps.max_job_s)
    if timeout_s < test.timeout:
        notes.append(f"{where}: timeout {test.timeout} s asked, capped at {timeout_s} s (the lab's max_job_s)")
    network = False
    if test.network:
        refusal = network_refusal(class_name=class_name, class_allows=class_network, tier=tier,
                                  granted_tiers=network_tiers)  # fmt: skip
        network = refusal is None
        if refusal:
            notes.append(f"{where}: network asked, off: {refusal}")
    return CappedTest(
        timeout_s=timeout_s, boot_timeout_s=min(caps.max_boot_s, timeout_s),
        silence_timeout_s=min(caps.max_silence_s, timeout_s), max_console_bytes=caps.max_console_bytes,
        network=network, notes=tuple(notes),
    )  # fmt: skip


def cap_build_timeout(build: Build, max_build_s: int) -> tuple[int, tuple[str, ...]]:
    """A build's timeout under the lab's cap, and the note saying both values when the cap cut it."""
    if build.timeout <= max_build_s:
        return build.timeout, ()
    return max_build_s, (f"build {build.name}: timeout {build.timeout} s asked, capped at {max_build_s} s "
                         "(the lab's max_build_s)",)  # fmt: skip
