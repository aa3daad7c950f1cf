"""How a pipeline advances: jobs drafted from a plan, what runs next, the overall result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.core.plans import Plan, match_device_class, render_build_script, select_tests

# Worst first: the pipeline takes the worst of its jobs' outcomes.
SEVERITY = ("error", "fail", "incomplete", "pass", "skip")


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


@dataclass(frozen=True)
class Caps:
    max_build_s: int
    max_job_s: int


def draft_jobs(
    plan: Plan,
    *,
    head_sha: str,
    changed_files: Sequence[str],
    device_classes: Sequence[tuple[str, dict[str, str]]],
    caps: Caps,
) -> list[JobDraft]:
    """Build and test jobs for one revision; lab caps win over the plan's timeouts."""
    drafts = [
        JobDraft(
            kind="build",
            name=build.name,
            device_class=None,
            needs=None,
            spec={
                "name": build.name,
                "head_sha": head_sha,
                "script": render_build_script(build),
                "artifacts": list(build.artifacts),
                "timeout_s": min(build.timeout, caps.max_build_s),
            },
        )
        for build in plan.builds
    ]
    for test in select_tests(plan, changed_files):
        device_class = match_device_class(test.device, device_classes)
        tags = " ".join(f"{k}={v}" for k, v in sorted(test.device.items()))
        drafts.append(
            JobDraft(
                kind="test",
                name=f"{device_class or tags} {test.name}",
                device_class=device_class,
                needs=test.build,
                spec={
                    "name": test.name,
                    "kernel": test.kernel,
                    "commands": [c.model_dump() for c in test.commands],
                    "timeout_s": min(test.timeout, caps.max_job_s),
                    "kunit": test.kunit,
                },
                skip_reason=None if device_class else f"no test ran: no device class carries {tags}",
                # Nothing the lab has can run it: that is not a pass of the test, nor a skip it chose.
                result="skip" if device_class else "incomplete",
            )
        )
    return drafts


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


def classes_for_tier(classes: Sequence[tuple[str, dict[str, str], str]], tier: str) -> list[tuple[str, dict[str, str]]]:
    """Device classes (name, tags, lab) a pipeline of this tier may use: tier `qemu` keeps an approved
    but untrusted change off real boards; `hardware` may use every class."""
    return [(name, tags) for name, tags, lab in classes if tier == "hardware" or lab == "qemu"]


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
