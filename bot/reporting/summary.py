"""A pipeline's whole report (bot/reporting/sinks.py's PipelineSummary), read from the store: forge-neutral."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bot.core.mail_text import one_line
from bot.core.render import (
    FAILING,
    MAX_PROBLEMS,
    NEW,
    TestVerdictView,
    fenced,
    inline_text,
    link,
    new_problems,
    problem_title,
    rest_lines,
    verdict_line,
    verdicts_markdown,
)
from bot.host.stores import Runtime
from bot.reporting.job_reports import job_report
from bot.reporting.page_links import job_page_url, pipeline_page_url
from bot.reporting.pipeline_views import job_view
from bot.reporting.sinks import SUMMARY_KIND, SUMMARY_LABEL, JobReport, PipelineSummary, Stage, Verdict
from bot.reporting.verdicts import being_confirmed_words, counts_of, reported_jobs, verdicts_of
from bot.store.models import Job, Pipeline

OUR_ERRORS = ("infra-error", "worker-lost")  # nobody is told their change failed for these
MAX_TITLE = 250
MAX_SUMMARY = 65000
_VERDICT: dict[str, Verdict] = {"pass": "pass", "skip": "neutral", "fail": "fail", "incomplete": "fail",
                                "cancelled": "cancelled", "error": "warning"}  # fmt: skip
_STAGE: dict[str, Stage] = {"queued": "queued", "running": "running", "done": "done"}


def headline_of(pipeline: Pipeline, jobs: tuple[JobReport, ...]) -> str:
    """One line: the verdict, and the first failures by name."""
    failed = [f"{job.label.removeprefix('labgate / ')}: {job.title}" for job in jobs if job.verdict == "fail"]
    if failed:
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        return one_line(f"labgate: fail: {len(failed)} failing ({'; '.join(failed[:3])}{more})")
    if pipeline.result == "error":
        return one_line(f"labgate: not tested: {pipeline.error_message or pipeline.error_code or 'error'}")
    return f"labgate: {pipeline.result or pipeline.state}"


def pipeline_counts(jobs: Sequence[Job], reports: Sequence[JobReport],
                    verdicts: dict[int, tuple[TestVerdictView, ...]]) -> Counter[str]:  # fmt: skip
    """What the pipeline's tests came to (render.verdict_line's keys), and as `broken` each job that failed
    with no failing test to say it: a build, a checkout, a boot that never reached its tests. Base builds are
    the base's, never the change's."""
    counts: Counter[str] = Counter()
    for job, report in zip(jobs, reports, strict=True):
        own = counts_of(job, verdicts.get(job.id, ())) if job.kind == "test" else Counter()
        counts.update(own)
        said = any(own.get(key) for key in FAILING)
        if report.stage == "done" and report.verdict in ("fail", "timed-out") and not said:
            counts["broken"] += job.spec.get("role") != "base"
    return +counts


def summary_line(pipeline: Pipeline, jobs: Sequence[Job], counts: Counter[str]) -> str:
    """The first line of the pipeline's report: its verdict line once done, what it is doing before."""
    line = verdict_line(counts)
    if pipeline.state != "done":
        confirming = being_confirmed_words(jobs)
        if confirming:
            return f"running: {confirming}"
        return f"{pipeline.state}: {line} so far" if counts else pipeline.state
    if pipeline.result == "cancelled":
        said = one_line(f"cancelled: {pipeline.error_message}") if pipeline.error_message else "cancelled"
        return f"{said} ({line})" if counts else said
    if pipeline.result == "error" and not any(counts.get(key) for key in FAILING):
        return one_line(f"not tested: {pipeline.error_message or pipeline.error_code or 'error'}")
    return line


def pipeline_summary(runtime: Runtime, pipeline_id: int, *, reproduce: str = "") -> PipelineSummary | None:
    """The pipeline's summary now; `reproduce` is how its submitter runs it locally, one command a line.
    Triage runs are evidence of the jobs they re-ran, never listed as jobs."""
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return None
        tree = pipeline.revision.change.tree.name
        listed = reported_jobs(pipeline.jobs)
        views = verdicts_of(session, pipeline, runtime)
        jobs = tuple(job_report(job, job_view(runtime, job), job_page_url(runtime, job), verdicts=views.get(job.id, ()))
                     for job in listed)  # fmt: skip
        verdicts = tuple(view for job in listed for view in views.get(job.id, ()))
        first = summary_line(pipeline, listed, pipeline_counts(listed, jobs, views))
        done = pipeline.state == "done"
        verdict: Verdict = _VERDICT.get(pipeline.result or "", "warning") if done else "pending"
        headline = headline_of(pipeline, jobs)
        said = [*(problem_title(problem) for problem in new_problems(verdicts)[:MAX_PROBLEMS]), *rest_lines(verdicts)]
        lines = [first, "", *said, *([""] if said else []), *(f"{job.label}: {job.title}" for job in jobs)]
        return PipelineSummary(
            pipeline_id=pipeline.id, done=done, verdict=verdict, headline=headline, text="\n".join(lines),
            markdown="\n".join(f"- {inline_text(f'{job.label}: {job.title}')}" for job in jobs),
            url=pipeline_page_url(runtime.config, runtime.data_dir, pipeline.id, tree), jobs=jobs,
            our_error=done and pipeline.error_code in OUR_ERRORS, notes=tuple(pipeline.notes or ()),
            reproduce=reproduce, verdict_line=first, verdicts=verdicts,
        )  # fmt: skip


def summary_report(summary: PipelineSummary, stage: Stage, markdown: str) -> JobReport:
    """The summary as a status of its own next to the jobs' (`labgate / summary`): titled by its verdict
    line, `markdown` its text (summary_markdown, as the forge wants it)."""
    return JobReport(job_id=0, pipeline_id=summary.pipeline_id, kind=SUMMARY_KIND, name="summary",
                     label=SUMMARY_LABEL, stage=stage, verdict=summary.verdict if stage == "done" else "pending",
                     title=one_line(summary.verdict_line or summary.headline)[:MAX_TITLE],
                     summary=markdown[:MAX_SUMMARY], details_url=summary.url)  # fmt: skip


def summary_stage(pipeline_state: str) -> Stage:
    return _STAGE.get(pipeline_state, "running")


def _job_item(job: JobReport, quoted: str) -> list[str]:
    """A job as a list item, `quoted` (the change's text) fenced under it."""
    item = [f"- {link(job.label, job.details_url)}: {inline_text(job.title)}"]
    # Indented under its list item, every line alike, so the block stays in the item.
    return item + (["", *(f"  {line}" for line in fenced(quoted).split("\n")), ""] if quoted else [])


def summary_markdown(summary: PipelineSummary, *, lead: str = "") -> str:
    """The summary for a forge that renders markdown in one place (a merge request note, a commit comment,
    GitHub's summary check run): the verdict line first, `lead` (a staging push's comparison: its new
    failures), each new failure (one block a crash) with its evidence, first error lines, log and the command
    that reproduces it, then the rest triage found (flaky, known issues, pre-existing, unconfirmed, fixed),
    other broken jobs with their first error lines, new warnings and static findings, the notes, every job,
    and how to reproduce it. What a change wrote (error lines, test names, crash titles, job names from its
    plan, a compiler's words) is text here, never markdown: it is fenced or escaped by bot/core/render.py;
    `lead` is markdown we made."""
    lines = [inline_text(summary.verdict_line or summary.headline), ""]
    if lead:
        lines += [lead, ""]
    found = verdicts_markdown(summary.verdicts)
    if found:
        lines += [found, ""]
    shown = {view.job_id for view in summary.verdicts if view.verdict in NEW}  # their new failures are above
    broken = [job for job in summary.jobs if job.stage == "done" and job.verdict in ("fail", "timed-out")
              and job.job_id not in shown]  # fmt: skip
    if broken:
        lines.append("**Broken:**")
        for job in broken:
            lines += _job_item(job, job.error_lines)
        lines.append("")
    quoted = {job.job_id for job in broken if job.error_lines == job.findings}
    found_jobs = [job for job in summary.jobs if job.stage == "done" and job.findings and job.job_id not in quoted]
    if found_jobs:
        # New warnings and static findings, which a note cannot show inline as a check run does (a broken
        # job's are its error lines, above).
        lines.append("**New warnings and check findings:**")
        for job in found_jobs:
            lines += _job_item(job, job.findings)
        lines.append("")
    lines += [*(inline_text(note) for note in summary.notes), ""] if summary.notes else []
    lines += ["| job | result |", "|---|---|"]
    lines += [f"| {link(job.label, job.details_url)} | {inline_text(job.title)} |" for job in summary.jobs]
    if summary.reproduce:
        lines += ["", "Reproduce:", "", fenced(summary.reproduce)]
    # The check's outcome in words ("labgate: pass", "labgate: fail: 1 failing (...)"), by the pipeline's link.
    outcome = f"{inline_text(summary.headline)} · " if summary.verdict_line else ""
    lines += ["", outcome + link(f"Pipeline {summary.pipeline_id}", summary.url)]
    return "\n".join(lines) + "\n"
