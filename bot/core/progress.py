"""How a pipeline advances: jobs drafted from a plan, what runs next, the overall result."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.core.caps import cap_build_timeout, cap_test
from bot.core.inventory import Inventory, Requirements
from bot.core.plans import Plan, PlanError, Test, render_build_script, select_tests

# Worst first: the pipeline takes the worst of its jobs' outcomes.
SEVERITY = ("error", "fail", "incomplete", "pass", "skip")
# The skip of a test only boards can run, in a change whose tier keeps it on QEMU.
NEEDS_HARDWARE = "needs /ok-to-test hardware"


@dataclass(frozen=True)
class JobDraft:
    """A job to create after the checkout: kind, name, queue, and what it needs."""

    kind: str
    name: str
    device_class: str | None
    needs: str | None  # name of the build job it waits for
    spec: dict[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None  # created already finished: nothing can run it
    result: str = "skip"  # what such a job ends as: `incomplete` when no device class could run it
    notes: tuple[str, ...] = ()  # where the lab's caps cut what the plan asked (for the pipeline's notes)


def requirements_of(test: Test) -> Requirements:
    return Requirements(tags=test.device, memory_mb=test.memory_mb)


def check_plan_devices(plan: Plan, inventory: Inventory, source: str) -> None:
    """PlanError naming every test that no device class of the whole lab can run (whatever the change's
    tier and files): the plan asks for what the lab does not have, and nothing about the change fixes that."""
    problems = [f"{source}: tests.{index}.device: test {test.name}: {inventory.why_none(requirements_of(test))}"
                for index, test in enumerate(plan.tests) if not inventory.match(requirements_of(test))]  # fmt: skip
    if problems:
        raise PlanError("\n".join(problems))


def draft_jobs(
    plan: Plan,
    *,
    head_sha: str,
    changed_files: Sequence[str],
    inventory: Inventory,
    tier: str,
    max_build_s: int,
    network_tiers: Collection[str] = (),
) -> list[JobDraft]:
    """Build and test jobs for one revision. Each test goes to the best class its tier may use (see
    Inventory.match); the lab's caps win over the plan's timeouts and network, and say so in `notes`."""
    drafts = []
    for build in plan.builds:
        timeout_s, notes = cap_build_timeout(build, max_build_s)
        spec = {"name": build.name, "head_sha": head_sha, "script": render_build_script(build),
                "artifacts": list(build.artifacts), "timeout_s": timeout_s}  # fmt: skip
        drafts.append(JobDraft(kind="build", name=build.name, device_class=None, needs=None, spec=spec, notes=notes))
    usable = classes_for_tier(inventory, tier)
    for test in select_tests(plan, changed_files):
        drafts.append(_draft_test(test, inventory, usable, tier, network_tiers))
    return drafts


def _draft_test(
    test: Test, inventory: Inventory, usable: frozenset[str], tier: str, network_tiers: Collection[str]
) -> JobDraft:
    wanted = requirements_of(test)
    matches = inventory.match(wanted)
    allowed = [name for name in matches if name in usable]
    spec: dict[str, Any] = {"name": test.name, "kernel": test.kernel,
                            "commands": [c.model_dump() for c in test.commands], "kunit": test.kunit}  # fmt: skip
    if not matches:
        # check_plan_devices refuses such a plan first; kept so a lab changed since cannot crash drafting.
        # Nothing the lab has can run it: that is not a pass of the test, nor a skip it chose.
        return JobDraft(kind="test", name=f"{wanted.describe()} {test.name}", device_class=None, needs=test.build,
                        spec=spec, skip_reason=f"no test ran: {inventory.why_none(wanted)}",
                        result="incomplete")  # fmt: skip
    if not allowed:
        # Named after the class it would run on, so it lines up with the same test of a trusted change.
        return JobDraft(kind="test", name=f"{matches[0]} {test.name}", device_class=None, needs=test.build,
                        spec=spec, skip_reason=NEEDS_HARDWARE)  # fmt: skip
    entry = inventory[allowed[0]]
    capped = cap_test(test, class_name=entry.name, caps=entry.caps, class_network=entry.network, tier=tier,
                      network_tiers=network_tiers)  # fmt: skip
    spec |= {"timeout_s": capped.timeout_s, "boot_timeout_s": capped.boot_timeout_s,
             "silence_timeout_s": capped.silence_timeout_s, "max_console_bytes": capped.max_console_bytes,
             "network": capped.network}  # fmt: skip
    return JobDraft(kind="test", name=f"{entry.name} {test.name}", device_class=entry.name, needs=test.build,
                    spec=spec, notes=capped.notes)  # fmt: skip


def selection_notes(plan: Plan, changed_files: Sequence[str]) -> list[str]:
    """What the report says about tests that will not run on purpose (said, and not a failure)."""
    if not plan.tests:
        return ["the plan has no tests: builds only"]
    selected = {test.name for test in select_tests(plan, changed_files)}
    return [f"test {test.name} not selected: the change touches none of {', '.join(test.paths)}"
            for test in plan.tests if test.name not in selected]  # fmt: skip


def no_test_ran(tests: Sequence[tuple[str | None, str | None]]) -> str | None:
    """Why a pipeline tested nothing, from its test jobs' (result, message); None if some test ran.
    Such a pipeline is not a pass, whatever its builds did."""
    if not tests or any(result not in ("skip", None) for result, _ in tests):
        return None
    reasons = sorted({message or "skipped" for _, message in tests})
    return "no test ran: " + "; ".join(reason.removeprefix("no test ran: ") for reason in reasons)


def classes_for_tier(inventory: Inventory, tier: str) -> frozenset[str]:
    """Names of the device classes a pipeline of this tier may use: tier `qemu` keeps an approved but
    untrusted change off real boards; `hardware` may use every class."""
    return frozenset(entry.name for entry in inventory if tier == "hardware" or entry.lab == "qemu")


def job_outcome(result: str | None, error_code: str | None) -> str:
    """One word per finished job: our error and bad input both count as `error`."""
    if result is None or error_code in ("user-error", "infra-error"):
        return "error"
    return result


def pipeline_result(outcomes: Sequence[str]) -> str:
    """The worst outcome of the jobs; a pipeline with nothing to run passes."""
    if not outcomes:
        return "pass"
    return min(outcomes, key=SEVERITY.index)


def exit_code_for(result: str | None) -> int:
    """`labgate try`: 0 all passed, 1 test or build failures, 2 our error or bad input."""
    return {"pass": 0, "skip": 0, "fail": 1}.get(result or "error", 2)
