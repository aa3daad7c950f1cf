"""How a pipeline advances: jobs drafted from a plan, what runs next, the overall result."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.core.caps import cap_build_timeout, cap_test
from bot.core.inventory import Inventory, Requirements
from bot.core.plans import (
    Build,
    Plan,
    PlanError,
    StaticChecks,
    Test,
    build_artifacts,
    documentation_only,
    documentation_only_note,
    explain_selection,
    kernel_build_of,
    render_build_script,
    select_tests,
)
from workers.spec import StaticSpec

# Worst first: the pipeline takes the worst of its jobs' outcomes.
SEVERITY = ("error", "fail", "incomplete", "pass", "skip")
# The skip of a test only boards can run, in a change whose tier keeps it on QEMU.
NEEDS_HARDWARE = "needs /ok-to-test hardware"
STATIC_JOB = "static"  # the name of a pipeline's one static job
STATIC_TIMEOUT_S = 300  # the static stage's own cap, under the lab's max_build_s
BASE_BUILD_PREFIX = "base "  # a base build job is named after the change's build: "base x86_64"
# How a test skipped because its kernel did not change begins: the evidence of a pass (see no_test_ran).
BINARY_IDENTICAL = "binary identical to base"


def binary_identical_reason(build_name: str) -> str:
    """The message of a test skipped because the change's build equals its base build's, byte for byte."""
    return f"{BINARY_IDENTICAL}: {build_name}'s vmlinux, modules and artifacts equal the base build's"


def is_base_build(kind: str, spec: dict[str, Any]) -> bool:
    """A base build is the base's, not the change's: its failure is not the change's (and a change that
    fixes the base's build passes); it is kept for the comparison and the report."""
    return kind == "build" and spec.get("role") == "base"


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
    base_sha: str | None = None,
    tree_name: str = "",
    trusted: bool = False,
    tree_has_checkpatch: bool = False,
    maintainers_text: str | None = None,
) -> list[JobDraft]:
    """Static, build and test jobs for one revision, the static job first (it is dispatched first, so its
    result is posted before any build's). Each test goes to the best class its tier may use (see
    Inventory.match); the lab's caps win over the plan's timeouts and network, and say so in `notes`.

    With `base_sha` (the checkout's), a kernel build of a change that is not the base itself gets a base
    build ("base <name>", the same recipe at the base) that it waits for: the warm build dir is at the base
    first, and its warnings and binaries are compared with the base's. A documentation-only change gets the
    static job alone."""
    drafts = []
    static = draft_static(plan, base_sha=base_sha, head_sha=head_sha, max_build_s=max_build_s,
                          wanted=tree_has_checkpatch or documentation_only(plan, changed_files))  # fmt: skip
    if static is not None:
        drafts.append(static)
        if documentation_only(plan, changed_files):
            return drafts
    for build in plan.builds:
        drafts.extend(_draft_builds(build, head_sha=head_sha, base_sha=base_sha, tree_name=tree_name,
                                    trusted=trusted, max_build_s=max_build_s))  # fmt: skip
    usable = classes_for_tier(inventory, tier)
    for test in select_tests(plan, changed_files, maintainers_text):
        drafts.append(_draft_test(test, inventory, usable, tier, network_tiers))
    return drafts


def draft_static(plan: Plan, *, base_sha: str | None, head_sha: str, max_build_s: int, wanted: bool) -> JobDraft | None:
    """The static job (workers/spec.py StaticSpec): when the plan asks for it, or, when the plan says nothing,
    when `wanted` (the base has checkpatch.pl, or the change is documentation only, whose diff is still
    checked). None without a base commit to compare with."""
    if base_sha is None or (plan.static is None and not wanted):
        return None
    checks = plan.static or StaticChecks()
    # The checks the static worker's spec carries; one the plan turns on that it does not is said, not sent.
    asked = {key: value for key, value in checks.model_dump().items() if key in StaticSpec.model_fields}
    unknown = [key for key, value in checks.model_dump().items() if key not in StaticSpec.model_fields and value]
    notes = tuple(f"static check {key} asked, not run: the static stage does not run it yet" for key in unknown)
    spec = {"base_sha": base_sha, "head_sha": head_sha, **asked, "timeout_s": min(STATIC_TIMEOUT_S, max_build_s)}
    return JobDraft(kind="static", name=STATIC_JOB, device_class=None, needs=None, spec=spec, notes=notes)


def _draft_builds(build: Build, *, head_sha: str, base_sha: str | None, tree_name: str, trusted: bool,
                  max_build_s: int) -> list[JobDraft]:  # fmt: skip
    """A build's job, and before it the base build it waits for when it is a kernel build of a change."""
    timeout_s, notes = cap_build_timeout(build, max_build_s)
    spec: dict[str, Any] = {"name": build.name, "head_sha": head_sha, "script": render_build_script(build),
                            "artifacts": list(build_artifacts(build)), "timeout_s": timeout_s}  # fmt: skip
    kernel = kernel_build_of(build, tree_name)
    if kernel is None:  # a command build: no warm state, nothing to compare with
        return [JobDraft(kind="build", name=build.name, device_class=None, needs=None, spec=spec, notes=notes)]
    # Only a trusted submitter's build may write warm state that later builds reuse.
    change = {**spec, "kernel": kernel, "trusted": trusted, "role": "change"}
    if base_sha is None or base_sha == head_sha:
        return [JobDraft(kind="build", name=build.name, device_class=None, needs=None, spec=change, notes=notes)]
    base_name = BASE_BUILD_PREFIX + build.name
    # The base's build is the plan's recipe at the base commit: trusted, whoever the submitter.
    base = {**spec, "name": base_name, "head_sha": base_sha, "kernel": kernel, "trusted": True, "role": "base"}
    return [JobDraft(kind="build", name=base_name, device_class=None, needs=None, spec=base),
            JobDraft(kind="build", name=build.name, device_class=None, needs=base_name, spec=change,
                     notes=notes)]  # fmt: skip


def _draft_test(
    test: Test, inventory: Inventory, usable: frozenset[str], tier: str, network_tiers: Collection[str]
) -> JobDraft:
    wanted = requirements_of(test)
    matches = inventory.match(wanted)
    allowed = [name for name in matches if name in usable]
    spec: dict[str, Any] = {"name": test.name, "kernel": test.kernel,
                            "commands": [c.model_dump() for c in test.commands], "kunit": test.kunit,
                            "modules": test.modules}  # fmt: skip
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


def selection_notes(plan: Plan, changed_files: Sequence[str], maintainers_text: str | None = None) -> list[str]:
    """What the report says about tests that will not run on purpose, or run only because their areas could
    not be checked (said, and not a failure)."""
    documentation = documentation_only_note(plan, changed_files)
    if documentation is not None:
        return [documentation]
    if not plan.tests:
        return ["the plan has no tests: builds only"]
    return [s.reason for s in explain_selection(plan, changed_files, maintainers_text) if s.noteworthy]


def no_test_ran(tests: Sequence[tuple[str | None, str | None]]) -> str | None:
    """Why a pipeline tested nothing, from its test jobs' (result, message); None if some test ran.
    Such a pipeline is not a pass, whatever its builds did. A test skipped because its kernel is binary
    identical to the base's is evidence: what it would boot is what the base boots."""
    if not tests or any(result not in ("skip", None) for result, _ in tests):
        return None
    if any(result == "skip" and (message or "").startswith(BINARY_IDENTICAL) for result, message in tests):
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
