"""A series' pipeline on Patchwork: each job's status as checks on every patch (bot/reporting's sync
loop drives it), with what Patchwork's readers need said in its words.

A checkout that fails is never the patch's `fail`: it did not apply, or its base-commit is not in the
tree ("could not determine base"), or the plan could not be read. It says `warning` with the reason,
which goes where a check shows it (its one-line description).
"""

from __future__ import annotations

from dataclasses import replace

from bot.core.mail_text import one_line
from bot.forges.patchwork.checks import PatchworkChecksSink
from bot.forges.patchwork.client import PatchworkClient
from bot.forges.patchwork.desk import SOURCE, SeriesRecord, load_series
from bot.host.stores import Runtime
from bot.reporting.sinks import JobReport, PipelineSummary
from bot.reporting.sync import ReportTarget, sync_job_reports, sync_summary_status


def as_series_summary(summary: PipelineSummary) -> PipelineSummary:
    """The summary as a series' mail says it: a checkout that failed (a refused patch, one that does not
    apply) heads it as its checks say it, "not tested: ...", never "fail"; the checkout's error lines
    stay quoted below."""
    said = [as_series_check(job) for job in summary.jobs if job.kind == "checkout"]
    untested = next((job for job in said if job.verdict == "warning"), None)
    if untested is None:
        return summary
    headline = one_line(f"labgate: {untested.title}")
    first = one_line(untested.title)
    text = summary.text.replace(summary.verdict_line, first, 1) if summary.verdict_line else summary.text
    return replace(summary, verdict="warning", headline=headline, text=text.replace(summary.headline, headline, 1),
                   verdict_line=first)  # fmt: skip


def as_series_check(report: JobReport) -> JobReport:
    """The report as a series' check says it: a checkout's failure is `warning` with its first error line,
    and so is a passing build or static job with findings (new warnings, checkpatch warnings): on
    Patchwork, as in netdev's CI, warnings warn; the description says how many."""
    if report.stage == "done" and report.verdict == "pass" and report.findings:
        return replace(report, verdict="warning")
    if report.kind != "checkout" or report.stage != "done" or report.verdict != "fail":
        return report
    reason = next((line.strip() for line in report.error_lines.split("\n") if line.strip()), report.title)
    return replace(report, verdict="warning", title=f"not tested: {reason}")


class SeriesChecksSink:
    """PatchworkChecksSink for one series version, its reports as a series' checks say them."""

    forge = SOURCE

    def __init__(self, client: PatchworkClient, record: SeriesRecord) -> None:
        self.record = record
        self._checks = PatchworkChecksSink(client, record.patch_ids)

    def create(self, report: JobReport) -> int:
        return self._checks.create(as_series_check(report))

    def update(self, status_id: int, report: JobReport) -> None:
        self._checks.update(status_id, as_series_check(report))

    def find(self, report: JobReport) -> int | None:
        return self._checks.find(report)


def series_record_of(runtime: Runtime, server: str, target: ReportTarget) -> SeriesRecord | None:
    """The series a pipeline's change is, when it is a Patchwork one of this server."""
    if target.source != SOURCE or target.number is None:
        return None
    with runtime.store.session() as session:
        return load_series(session, server, target.number)


def sync_series_checks(runtime: Runtime, client: PatchworkClient, pipeline_id: int) -> int:
    """Bring every job's checks up to date on every patch of the series, then the pipeline's summary check
    (`labgate-summary`: its verdict line as the description, the pipeline's page as the link; a check's
    description is one short line there); how many requests that took."""

    def open_sink(target: ReportTarget) -> SeriesChecksSink | None:
        record = series_record_of(runtime, client.url, target)
        return SeriesChecksSink(client, record) if record is not None and record.patch_ids else None

    jobs = sync_job_reports(runtime, pipeline_id, open_sink)
    said = sync_summary_status(runtime, pipeline_id, open_sink, render=lambda summary: "", adapt=as_series_summary)
    return jobs + said
