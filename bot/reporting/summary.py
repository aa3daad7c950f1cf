"""A pipeline's whole report (bot/reporting/sinks.py's PipelineSummary), read from the store: forge-neutral."""

from __future__ import annotations

from bot.core.mail_text import one_line
from bot.core.render import fenced, inline_text, link
from bot.host.stores import Runtime
from bot.reporting.job_reports import job_report
from bot.reporting.page_links import job_page_url, pipeline_page_url
from bot.reporting.pipeline_views import job_view
from bot.reporting.sinks import JobReport, PipelineSummary, Verdict
from bot.store.models import Pipeline

OUR_ERRORS = ("infra-error", "worker-lost")  # nobody is told their change failed for these
_VERDICT: dict[str, Verdict] = {"pass": "pass", "skip": "neutral", "fail": "fail", "incomplete": "fail",
                                "cancelled": "cancelled", "error": "warning"}  # fmt: skip


def headline_of(pipeline: Pipeline, jobs: tuple[JobReport, ...]) -> str:
    """One line: the verdict, and the first failures by name."""
    failed = [f"{job.label.removeprefix('labgate / ')}: {job.title}" for job in jobs if job.verdict == "fail"]
    if failed:
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        return one_line(f"labgate: fail: {len(failed)} failing ({'; '.join(failed[:3])}{more})")
    if pipeline.result == "error":
        return one_line(f"labgate: not tested: {pipeline.error_message or pipeline.error_code or 'error'}")
    return f"labgate: {pipeline.result or pipeline.state}"


def pipeline_summary(runtime: Runtime, pipeline_id: int, *, reproduce: str = "") -> PipelineSummary | None:
    """The pipeline's summary now; `reproduce` is how its submitter runs it locally, one command a line."""
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return None
        tree = pipeline.revision.change.tree.name
        jobs = tuple(job_report(job, job_view(runtime, job), job_page_url(runtime, job)) for job in pipeline.jobs)
        done = pipeline.state == "done"
        verdict: Verdict = _VERDICT.get(pipeline.result or "", "warning") if done else "pending"
        headline = headline_of(pipeline, jobs)
        lines = [headline, ""] + [f"{job.label}: {job.title}" for job in jobs]
        return PipelineSummary(
            pipeline_id=pipeline.id, done=done, verdict=verdict, headline=headline, text="\n".join(lines),
            markdown="\n".join(f"- {inline_text(line)}" for line in lines[2:]),
            url=pipeline_page_url(runtime.config, runtime.data_dir, pipeline.id, tree), jobs=jobs,
            our_error=done and pipeline.error_code in OUR_ERRORS, notes=tuple(pipeline.notes or ()),
            reproduce=reproduce,
        )  # fmt: skip


def _job_item(job: JobReport, quoted: str) -> list[str]:
    """A job as a list item, `quoted` (the change's text) fenced under it."""
    item = [f"- {link(job.label, job.details_url)}: {inline_text(job.title)}"]
    # Indented under its list item, every line alike, so the block stays in the item.
    return item + (["", *(f"  {line}" for line in fenced(quoted).split("\n")), ""] if quoted else [])


def summary_markdown(summary: PipelineSummary, *, lead: str = "") -> str:
    """The summary for a forge that renders markdown in one place (a merge request note, a commit
    comment): the headline, `lead` (a staging push's comparison: its new failures), what is broken with
    its first error lines, new warnings and static findings, the notes, every job, and how to reproduce
    it. What a change wrote (error lines, test names in titles, job names from its plan, a compiler's
    words) is text here, never markdown: it is fenced or escaped by bot/core/render.py; `lead` is
    markdown we made."""
    lines = [f"**{inline_text(summary.headline)}**", ""]
    if lead:
        lines += [lead, ""]
    broken = [job for job in summary.jobs if job.stage == "done" and job.verdict in ("fail", "timed-out")]
    if broken:
        lines.append("**Broken:**")
        for job in broken:
            lines += _job_item(job, job.error_lines)
        lines.append("")
    quoted = {job.job_id for job in broken if job.error_lines == job.findings}
    found = [job for job in summary.jobs if job.stage == "done" and job.findings and job.job_id not in quoted]
    if found:
        # New warnings and static findings, which a note cannot show inline as a check run does (a broken
        # job's are its error lines, above).
        lines.append("**New warnings and check findings:**")
        for job in found:
            lines += _job_item(job, job.findings)
        lines.append("")
    lines += [*(inline_text(note) for note in summary.notes), ""] if summary.notes else []
    lines += ["| job | result |", "|---|---|"]
    lines += [f"| {link(job.label, job.details_url)} | {inline_text(job.title)} |" for job in summary.jobs]
    if summary.reproduce:
        lines += ["", "Reproduce:", "", fenced(summary.reproduce)]
    lines += ["", link(f"Pipeline {summary.pipeline_id}", summary.url)]
    return "\n".join(lines) + "\n"
