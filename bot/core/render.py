"""Plain-text reports of a pipeline: what is broken first, then the table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_ERROR_LINE = re.compile(r"(error|Error|ERROR|FAIL|fatal|\*\*\*|No rule|undefined reference|not ok)")


@dataclass(frozen=True)
class FailedTest:
    path: str
    diagnostics: str
    reason: str = ""


@dataclass(frozen=True)
class JobView:
    """What a report needs to know of one job, already read from the store."""

    id: int
    kind: str
    name: str
    state: str
    result: str | None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    duration_s: float | None = None
    failed_tests: tuple[FailedTest, ...] = ()
    test_counts: dict[str, int] = field(default_factory=dict)
    log_excerpt: str = ""
    caveats: tuple[str, ...] = ()  # e.g. "ran as root: not forge-proof"


def first_error_lines(log: str, limit: int = 12) -> str:
    """The first lines of a log that look like an error, else its last lines."""
    lines = log.splitlines()
    hits = [i for i, line in enumerate(lines) if _ERROR_LINE.search(line)]
    if not hits:
        return "\n".join(lines[-limit:])
    start = max(0, hits[0] - 2)
    return "\n".join(lines[start : start + limit])


def outcome_word(job: JobView) -> str:
    if job.state != "done":
        return job.state
    if job.error_code == "cancelled":
        return "cancelled"
    if job.error_code in ("user-error", "infra-error") or job.result is None:
        return "error"
    if job.error_code:
        return f"{job.result} ({job.error_code})"
    return job.result


def render_problems(jobs: Sequence[JobView], indent: str = "  ") -> str:
    """Failures and errors, in the order the jobs ran, each with its first lines."""
    out: list[str] = []
    for job in jobs:
        word = outcome_word(job)
        if word in ("pass", "skip", "queued", "running", "pending"):
            continue
        out.append(f"{word.upper()}: {job.kind} {job.name}")
        if job.error_message:
            out.extend(indent + line for line in job.error_message.splitlines()[:20])
        for test in job.failed_tests:
            out.append(f"{indent}not ok {test.path}" + (f" ({test.reason})" if test.reason else ""))
            out.extend(indent * 2 + line for line in test.diagnostics.splitlines()[:8])
        if job.log_excerpt and not job.failed_tests:
            out.extend(indent + "| " + line for line in job.log_excerpt.splitlines())
    for job in jobs:
        out += [f"NOTE: {job.kind} {job.name}: {caveat}" for caveat in job.caveats]
    return "\n".join(out)


def render_counts(counts: dict[str, int]) -> str:
    order = ("pass", "fail", "skip", "incomplete")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def _fence(text: str) -> str:
    longest = max((len(run) for run in text.split("\n") if set(run) == {"`"}), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def render_job_markdown(job: JobView, *, tests: Sequence[tuple[str, str]] = (), earlier_failure: str = "",
                        reproduce: str = "") -> str:  # fmt: skip
    """A job's report: what is broken first, with its first lines, then the table of tests."""
    out: list[str] = []
    if earlier_failure:
        out += ["**Earlier attempt:**", "", _fence(earlier_failure), ""]
    if job.error_message:
        out += [_fence(job.error_message[:4000]), ""]
    for test in job.failed_tests[:20]:
        out.append(f"**not ok `{test.path}`**" + (f" ({test.reason})" if test.reason else ""))
        if test.diagnostics:
            out += ["", _fence("\n".join(test.diagnostics.splitlines()[:12]))]
        out.append("")
    if job.log_excerpt and not job.failed_tests:
        out += ["First error lines of the log:", "", _fence(job.log_excerpt), ""]
    if reproduce:
        out += ["Reproduce locally:", "", _fence(reproduce), ""]
    if tests:
        out += ["| test | result |", "|---|---|"]
        out += [f"| `{path}` | {status} |" for path, status in tests[:200]]
        if len(tests) > 200:
            out.append(f"| … | {len(tests) - 200} more |")
    return "\n".join(out).strip() or "No details."
