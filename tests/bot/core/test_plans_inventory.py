"""Matching tests to device classes: subset of k=v tags plus memory, through the inverted index; the
deterministic pick; plan-time errors for tests no class can run; the tier's skip."""

from __future__ import annotations

import random

import pytest

from bot.core.inventory import ClassEntry, Inventory, Requirements
from bot.core.plans import PlanError, parse_plan
from bot.core.progress import NEEDS_HARDWARE, check_plan_devices, draft_jobs, no_test_ran

QEMU = ClassEntry("qemu-x86_64", {"arch": "x86_64", "platform": "qemu"}, 512, capacity=2)
BIG_QEMU = ClassEntry("qemu-x86_64-big", {"arch": "x86_64", "platform": "qemu"}, 4096)
BOARD = ClassEntry("board-x86", {"arch": "x86_64", "platform": "board", "soc": "n100"}, 2048, lab="labgrid")
ARM_BOARD = ClassEntry("rpi4", {"arch": "arm64", "platform": "board", "soc": "bcm2711"}, 4096, lab="labgrid")
LAB = Inventory([BOARD, ARM_BOARD, BIG_QEMU, QEMU])

PLAN = """\
version: 1
builds:
  - {name: x86_64, command: make, artifacts: [t]}
tests:
  - name: unit
    build: x86_64
    device: {arch: x86_64}
    commands: [{name: a, run: "true"}]
  - name: big
    build: x86_64
    device: {arch: x86_64, platform: qemu}
    memory_mb: 2048
    commands: [{name: a, run: "true"}]
  - name: pi
    build: x86_64
    device: {soc: bcm2711}
    commands: [{name: a, run: "true"}]
"""


def test_match_is_by_subset_of_tags_and_memory_at_least() -> None:
    assert LAB.match(Requirements({"arch": "arm64"})) == ["rpi4"]
    assert LAB.match(Requirements({"arch": "x86_64", "soc": "n100"})) == ["board-x86"]
    assert LAB.match(Requirements({"arch": "x86_64", "platform": "qemu"}, memory_mb=1024)) == ["qemu-x86_64-big"]
    assert LAB.match(Requirements({"arch": "x86_64", "platform": "qemu"}, memory_mb=4096)) == ["qemu-x86_64-big"]
    assert LAB.match(Requirements({"arch": "x86_64", "platform": "qemu"}, memory_mb=4097)) == []
    assert LAB.match(Requirements({"arch": "riscv64"})) == []
    # A value is part of the tag: arch=x86_64 is not arch=x86.
    assert LAB.match(Requirements({"arch": "x86"})) == []
    assert LAB.match(Requirements({})) == ["qemu-x86_64", "qemu-x86_64-big", "board-x86", "rpi4"]


def test_the_pick_is_the_plainest_fit_then_least_memory_then_name() -> None:
    # arch=x86_64 alone: the QEMU classes have one extra tag, the board two; the smaller QEMU first.
    assert LAB.match(Requirements({"arch": "x86_64"})) == ["qemu-x86_64", "qemu-x86_64-big", "board-x86"]
    twins = Inventory([ClassEntry("b", {"arch": "x86_64"}, 512), ClassEntry("a", {"arch": "x86_64"}, 512)])
    assert twins.match(Requirements({"arch": "x86_64"})) == ["a", "b"]
    # The order of the classes in the config does not change the answer.
    assert Inventory(reversed(list(LAB))).match(Requirements({"arch": "x86_64"})) == LAB.match(
        Requirements({"arch": "x86_64"})
    )


def test_a_class_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        Inventory([QEMU, QEMU])


def brute_force(entries: list[ClassEntry], wanted: Requirements) -> list[str]:
    fits = [e for e in entries if all(e.tags.get(k) == v for k, v in wanted.tags.items())
            and (wanted.memory_mb is None or e.memory_mb >= wanted.memory_mb)]  # fmt: skip
    return [e.name for e in sorted(fits, key=lambda e: (len(e.tags) - len(wanted.tags), e.memory_mb, e.name))]


def test_the_index_answers_as_a_scan_of_every_class_on_random_inventories() -> None:
    rng = random.Random(20261207)
    keys = ["arch", "platform", "soc", "board", "feature", "net", "kvm"]
    values = ["a", "b", "c", "d"]
    for _ in range(200):
        entries = [ClassEntry(f"class-{i}", {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 5))},
                              rng.choice([256, 512, 1024, 2048, 4096]))
                   for i in range(rng.randint(1, 30))]  # fmt: skip
        inventory = Inventory(entries)
        for _ in range(30):
            tags = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 3))}
            wanted = Requirements(tags, rng.choice([None, 300, 1024, 4096, 5000]))
            assert inventory.match(wanted) == brute_force(entries, wanted), (entries, wanted)


def test_a_test_no_class_of_the_lab_can_run_is_a_plan_error_naming_the_test_and_tags() -> None:
    plan = parse_plan(PLAN.replace("device: {soc: bcm2711}", "device: {soc: bcm2712, arch: arm64}"), "p.yaml")
    with pytest.raises(PlanError) as info:
        check_plan_devices(plan, LAB, ".labgate/plan.yaml")
    expected = ".labgate/plan.yaml: tests.2.device: test pi: no device class carries arch=arm64 soc=bcm2712"
    assert str(info.value) == expected


def test_too_little_memory_everywhere_is_said_with_the_most_there_is() -> None:
    plan = parse_plan(PLAN.replace("memory_mb: 2048", "memory_mb: 8192"), "p.yaml")
    with pytest.raises(PlanError) as info:
        check_plan_devices(plan, LAB, "p.yaml")
    assert str(info.value) == ("p.yaml: tests.1.device: test big: no device class carries arch=x86_64 platform=qemu "
                               "with memory_mb >= 8192 (those carrying the tags have at most 4096 MB)")  # fmt: skip


def test_every_test_is_checked_even_one_the_change_does_not_select() -> None:
    # The plan is wrong whatever files a change touches: said every time, not only when drivers/ changes.
    plan = parse_plan(PLAN.replace("device: {soc: bcm2711}", "device: {soc: none}\n    paths: [drivers/]"), "p")
    with pytest.raises(PlanError, match=r"^p: tests.2.device: test pi: no device class carries soc=none$"):
        check_plan_devices(plan, LAB, "p")
    check_plan_devices(parse_plan(PLAN, "p"), LAB, "p")  # all three can run somewhere


def test_a_test_only_boards_run_is_skipped_for_the_qemu_tier_with_the_hardware_hint() -> None:
    plan = parse_plan(PLAN, "p")
    drafts = {d.name: d for d in draft_jobs(plan, head_sha="a" * 40, changed_files=[], inventory=LAB, tier="qemu",
                                            max_build_s=600)}  # fmt: skip
    skipped = drafts["rpi4 pi"]  # named after the class a hardware-tier change would use
    assert skipped.device_class is None and skipped.skip_reason == NEEDS_HARDWARE == "needs /ok-to-test hardware"
    assert skipped.result == "skip"
    # QEMU classes still serve the tier: the plainest fit, and the one with the memory asked.
    assert drafts["qemu-x86_64 unit"].device_class == "qemu-x86_64"
    assert drafts["qemu-x86_64-big big"].device_class == "qemu-x86_64-big"
    assert no_test_ran([(skipped.result, skipped.skip_reason)]) == "no test ran: needs /ok-to-test hardware"
    hardware = {d.name: d for d in draft_jobs(plan, head_sha="a" * 40, changed_files=[], inventory=LAB,
                                              tier="hardware", max_build_s=600)}  # fmt: skip
    assert hardware["rpi4 pi"].device_class == "rpi4" and hardware["rpi4 pi"].skip_reason is None


def test_a_qemu_class_that_also_fits_keeps_the_test_running_at_the_qemu_tier() -> None:
    # Board first by the pick (fewer extra tags), but the tier may not use it: the QEMU class that fits runs it.
    lab = Inventory([ClassEntry("board", {"arch": "x86_64"}, 512, lab="labgrid"), QEMU])
    plan = parse_plan(PLAN.split("  - name: big")[0], "p")
    unit = draft_jobs(plan, head_sha="a" * 40, changed_files=[], inventory=lab, tier="qemu", max_build_s=600)[1]
    assert unit.device_class == "qemu-x86_64" and unit.skip_reason is None
    unit = draft_jobs(plan, head_sha="a" * 40, changed_files=[], inventory=lab, tier="hardware", max_build_s=600)[1]
    assert unit.device_class == "board"
