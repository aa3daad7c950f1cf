"""Read a pipeline and its jobs from the store into report views."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bot.core.render import FailedTest, JobView, first_error_lines
from bot.host.stores import Runtime
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


def read_log(runtime: Runtime, digest: str | None, limit: int = 4 * 1024 * 1024) -> str:
    if not digest or not runtime.artifacts.has(digest):
        return ""
    with runtime.artifacts.path_of(digest).open("rb") as handle:
        return handle.read(limit).decode(errors="replace")


def job_view(runtime: Runtime, job: Job, *, with_logs: bool = True) -> JobView:
    duration = None
    if job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    failed = tuple(
        FailedTest(t.path, t.diagnostics, t.reason) for t in job.tests if t.status in ("fail", "incomplete")
    )
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
            jobs=tuple(job_view(runtime, j, with_logs=with_logs) for j in pipeline.jobs),
            message=pipeline.error_message, notes=tuple(pipeline.notes or ()),
        )  # fmt: skip
