"""Read a pipeline and its jobs from the store into report views."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from bot.core.findings import Findings, StaticTest, build_findings, static_findings
from bot.core.mail_text import printable
from bot.core.render import FailedTest, JobView, first_error_lines
from bot.host.stores import Runtime
from bot.pipelines.history import triage_of
from bot.store.models import Job, Pipeline


@dataclass(frozen=True)
class PipelineView:
    id: int
    state: str
    result: str | None
    tree: str
    base_ref: str
    base_sha: str | None
    head_sha: str | None
    jobs: tuple[JobView, ...]
    message: str | None = None  # the pipeline's own word: "no test ran: ...", an error
    notes: tuple[str, ...] = ()  # what did not run on purpose
    findings: tuple[JobFindings, ...] = ()  # of its kernel builds and static job, in job order


@dataclass(frozen=True)
class JobFindings:
    """A done job's findings as a terminal shows them (`labgate try`)."""

    job: str  # "build x86_64", "static static"
    headline: str  # "1 new warning (base 12 → 13)", with its notes ("binary identical to base")
    listing: str  # one finding a line, verbatim

    def lines(self) -> list[str]:
        """For a terminal: a change's file names and compiler text carry no control character there."""
        said = [f"{self.job}: {self.headline}", *("  " + line for line in self.listing.split("\n") if line)]
        return [printable(line) for line in said]


def changed_lines_of(job: Job) -> dict[str, Any]:
    """The checkout's {file: [[first, last]]} of the job's pipeline: the lines the change wrote."""
    checkout = job.pipeline.jobs[0] if job.pipeline.jobs else None
    changed = checkout.outputs.get("changed_lines") if checkout is not None else None
    return changed if isinstance(changed, dict) else {}


def job_findings(job: Job) -> Findings | None:
    """What a kernel build (its new warnings against the base, its errors) or a static job (its checks'
    findings) found; None for other jobs, a command build without a warning ledger, and a static job that
    reported none (it did not finish)."""
    if job.kind == "build":
        return build_findings(job.outputs, base_build=job.spec.get("role") == "base")
    if job.kind == "static" and "annotations" in job.outputs:  # a stage that timed out says so in its title
        tests = [StaticTest(test.path, test.status) for test in job.tests]
        return static_findings(job.outputs, tests, changed_lines_of(job))
    return None


def _findings_of(jobs: list[Job]) -> tuple[JobFindings, ...]:
    said = []
    for job in jobs:
        found = job_findings(job) if job.state == "done" and job.result is not None else None
        if found is not None:
            said.append(JobFindings(f"{job.kind} {job.name}", "; ".join([found.headline, *found.notes]), found.text()))
    return tuple(said)


def read_log(runtime: Runtime, digest: str | None, limit: int = 4 * 1024 * 1024) -> str:
    if not digest or not runtime.artifacts.has(digest):
        return ""
    with runtime.artifacts.path_of(digest).open("rb") as handle:
        return handle.read(limit).decode(errors="replace")


def job_view(runtime: Runtime, job: Job, *, with_logs: bool = True) -> JobView:
    duration = None
    if job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    failed = tuple(FailedTest(t.path, t.diagnostics, t.reason) for t in job.tests if t.status in ("fail", "incomplete"))
    excerpt = ""
    if with_logs and job.state == "done" and job.result not in ("pass", "skip") and job.log_digest:
        excerpt = first_error_lines(read_log(runtime, job.log_digest))
    return JobView(
        id=job.id, kind=job.kind, name=job.name, state=job.state, result=job.result,
        error_code=job.error_code, error_message=job.error_message, attempts=job.attempts,
        duration_s=duration, failed_tests=failed,
        test_counts=dict(Counter(t.status for t in job.tests)), log_excerpt=excerpt,
        caveats=tuple(sorted({t.caveat for t in job.tests if t.caveat})),
    )  # fmt: skip


def pipeline_view(runtime: Runtime, pipeline_id: int, *, with_logs: bool = True) -> PipelineView:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            raise KeyError(pipeline_id)
        revision = pipeline.revision
        return PipelineView(
            id=pipeline.id, state=pipeline.state, result=pipeline.result,
            tree=revision.change.tree.name, base_ref=revision.base_ref, base_sha=revision.base_sha,
            head_sha=revision.head_sha,
            # A triage run (a re-run, a run at the base) is the evidence of its job's verdict, not a job to list.
            jobs=tuple(job_view(runtime, j, with_logs=with_logs) for j in pipeline.jobs if triage_of(j) is None),
            message=pipeline.error_message, notes=tuple(pipeline.notes or ()),
            findings=_findings_of(pipeline.jobs) if with_logs else (),  # the final view's, not each poll's
        )  # fmt: skip
