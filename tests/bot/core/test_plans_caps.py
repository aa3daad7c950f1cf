"""Caps a plan cannot lift: timeouts cut to the lab's, boot and silence within the job's own, the DUT
network only where the class allows it and the tree grants it to the tier, and a note with both values."""

from __future__ import annotations

import itertools

import pytest

from bot.core.caps import TestCaps, cap_test, network_refusal
from bot.core.inventory import ClassEntry, Inventory
from bot.core.plans import parse_plan
from bot.core.progress import JobDraft, draft_jobs
from workers.spec import TestSpec

PLAN = """\
version: 1
builds:
  - {name: x86_64, command: make, artifacts: [t], timeout: 7200}
tests:
  - name: net
    build: x86_64
    device: {arch: x86_64}
    timeout: 5000
    network: true
    commands: [{name: a, run: "true"}]
"""
CAPS = TestCaps(max_job_s=900, max_boot_s=300, max_silence_s=1200, max_console_bytes=1 << 20)


def drafts_on(entry: ClassEntry, *, tier: str = "hardware", network_tiers: tuple[str, ...] = ("hardware",),
              plan: str = PLAN) -> list[JobDraft]:  # fmt: skip
    return draft_jobs(parse_plan(plan, "p"), head_sha="a" * 40, changed_files=[], inventory=Inventory([entry]),
                      tier=tier, max_build_s=1800, network_tiers=network_tiers)  # fmt: skip


def test_a_plan_asking_for_more_time_is_cut_to_the_caps_and_the_notes_say_both_values() -> None:
    build, test = drafts_on(ClassEntry("board", {"arch": "x86_64"}, 512, network=True, caps=CAPS))
    assert build.spec["timeout_s"] == 1800
    assert build.notes == ("build x86_64: timeout 7200 s asked, capped at 1800 s (the lab's max_build_s)",)
    assert test.spec["timeout_s"] == 900
    assert test.notes == ("test net on board: timeout 5000 s asked, capped at 900 s (the lab's max_job_s)",)
    # The lab's own caps travel in the spec; silence is never longer than the whole job.
    assert (test.spec["boot_timeout_s"], test.spec["silence_timeout_s"], test.spec["max_console_bytes"]) == (
        300, 900, 1 << 20)  # fmt: skip
    assert test.spec["network"] is True


def test_a_plan_within_the_caps_gets_what_it_asked_and_no_note() -> None:
    plan = PLAN.replace("timeout: 7200", "timeout: 60").replace("timeout: 5000", "timeout: 100")
    build, test = drafts_on(ClassEntry("q", {"arch": "x86_64"}, 512, network=True, caps=CAPS), plan=plan)
    assert build.spec["timeout_s"] == 60 and test.spec["timeout_s"] == 100
    assert test.spec["boot_timeout_s"] == 100 and test.spec["silence_timeout_s"] == 100  # within the job's own
    assert build.notes == () and test.notes == ()


def test_the_drafted_values_are_what_a_test_spec_carries() -> None:
    _, test = drafts_on(ClassEntry("board", {"arch": "x86_64"}, 512, network=True, caps=CAPS))
    spec = TestSpec.model_validate({**test.spec, "device_class": "board", "qemu": {}, "artifacts": {}})
    assert (spec.timeout_s, spec.boot_timeout_s, spec.silence_timeout_s, spec.max_console_bytes, spec.network) == (
        900, 300, 900, 1 << 20, True)  # fmt: skip


@pytest.mark.parametrize(("class_allows", "granted", "tier"),
                         list(itertools.product([True, False], [(), ("qemu",), ("hardware",), ("qemu", "hardware")],
                                                ["qemu", "hardware"])))  # fmt: skip
def test_network_is_on_only_where_the_class_allows_it_and_the_tree_grants_it_to_the_tier(
    class_allows: bool, granted: tuple[str, ...], tier: str
) -> None:
    entry = ClassEntry("q", {"arch": "x86_64"}, 512, lab="qemu", network=class_allows, caps=CAPS)
    _, test = drafts_on(entry, tier=tier, network_tiers=granted)
    expected = class_allows and tier in granted
    assert test.spec["network"] is expected
    network_notes = [note for note in test.notes if "network" in note]
    if expected:
        assert network_notes == []
    elif not class_allows:
        assert network_notes == ["test net on q: network asked, off: device class q allows no network"]
    else:
        granted_text = ", ".join(sorted(granted)) or "no tier"
        assert network_notes == [f"test net on q: network asked, off: the tree grants network to {granted_text}, "
                                 f"this change runs at tier {tier}"]  # fmt: skip


def test_a_test_that_does_not_ask_gets_no_network_even_where_granted() -> None:
    _, test = drafts_on(ClassEntry("q", {"arch": "x86_64"}, 512, network=True, caps=CAPS),
                        plan=PLAN.replace("    network: true\n", ""))  # fmt: skip
    assert test.spec["network"] is False and not any("network" in note for note in test.notes)


def test_network_refusal_says_why() -> None:
    assert network_refusal(class_name="b", class_allows=True, tier="hardware", granted_tiers=["hardware"]) is None
    assert network_refusal(class_name="b", class_allows=False, tier="hardware", granted_tiers=["hardware"]) == (
        "device class b allows no network")  # fmt: skip


def test_boot_cap_is_never_longer_than_the_job() -> None:
    test = parse_plan(PLAN.replace("timeout: 5000", "timeout: 30"), "p").tests[0]
    capped = cap_test(test, class_name="q", caps=CAPS, class_network=False, tier="hardware", network_tiers=())
    assert (capped.timeout_s, capped.boot_timeout_s, capped.silence_timeout_s) == (30, 30, 30)
