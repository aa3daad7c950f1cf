"""Bring a forge's per-job statuses up to date with the store: one status per job, never backwards.

No transaction spans a forge call: what each status should say is read first, then each status is
written and its id and rank committed at once, on their own. A sync that fails half-way (the forge
down, the worker killed) leaves every status it did write recorded, and the retry goes on from there.
A create whose answer was lost is looked up (JobStatusSink.find) before it is sent again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from bot.host.stores import Runtime
from bot.reporting.job_reports import earlier_failures, job_report, post_merge_comparison
from bot.reporting.page_links import job_page_url
from bot.reporting.pipeline_views import job_view
from bot.reporting.sinks import RANK, SUMMARY_KIND, SUMMARY_LABEL, JobReport, JobStatusSink, PipelineSummary
from bot.reporting.summary import pipeline_summary, summary_markdown, summary_report, summary_stage
from bot.reporting.verdicts import reported_jobs, verdicts_of
from bot.store.models import ForgeCheck, Pipeline
from bot.store.once import record_once


@dataclass(frozen=True)
class ReportTarget:
    """The change a pipeline reports to, as the store knows it (a sink factory picks its forge's sink)."""

    pipeline_id: int
    source: str  # Change.source: "github", "patchwork", ...
    tree: str
    repo: str
    number: int | None
    installation: int | None
    head_sha: str


@dataclass(frozen=True)
class _SummaryRow:
    """Where a pipeline's summary status is kept on one forge: its forge_check row without a job."""

    pipeline_id: int
    forge: str


_RowKey = int | _SummaryRow  # a job's id, or a pipeline's summary


@dataclass(frozen=True)
class _Write:
    report: JobReport
    status_id: int | None  # None: not created on the forge yet, as far as the store knows
    claimed: bool  # a forge_check row exists: an earlier sync may have sent the create


def _key(report: JobReport, forge: str) -> _RowKey:
    return _SummaryRow(report.pipeline_id, forge) if report.kind == SUMMARY_KIND else report.job_id


def _row_of(key: _RowKey) -> Select[ForgeCheck]:
    if isinstance(key, int):
        return select(ForgeCheck).where(ForgeCheck.job_id == key)
    return select(ForgeCheck).where(ForgeCheck.pipeline_id == key.pipeline_id, ForgeCheck.job_id.is_(None),
                                    ForgeCheck.forge == key.forge, ForgeCheck.name == SUMMARY_LABEL)  # fmt: skip


SinkFactory = Callable[[ReportTarget], JobStatusSink | None]


def report_target(runtime: Runtime, pipeline_id: int) -> ReportTarget | None:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return None
        change = pipeline.revision.change
        return ReportTarget(pipeline.id, change.source, change.tree.name, change.forge_repo or "", change.number,
                            change.installation_id, pipeline.revision.head_sha or "")  # fmt: skip


def sync_job_reports(runtime: Runtime, pipeline_id: int, open_sink: SinkFactory) -> int:
    """Every job's status brought up to date through the sink `open_sink` gives for the pipeline's
    change (None: this change reports nowhere); how many forge requests that took."""
    target = report_target(runtime, pipeline_id)
    sink = open_sink(target) if target is not None else None
    if target is None or sink is None:
        return 0
    return sum(_write(runtime, sink, target, write) for write in _plan(runtime, pipeline_id))


def _plan(runtime: Runtime, pipeline_id: int) -> list[_Write]:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return []
        earlier = earlier_failures(session, pipeline)
        compared = post_merge_comparison(session, pipeline)
        verdicts = verdicts_of(session, pipeline, runtime)
        writes = []
        for job in reported_jobs(pipeline.jobs):  # a triage run is evidence of the job it re-ran, not a job
            if job.reused_from_id is not None and pipeline.rerun_of_id is not None:
                continue  # a re-run kept it: its status from the earlier run still says it passed
            # A base build shared from another pipeline is reported on this head like any job: this head has
            # no status for it yet (or a "queued" one, posted while it followed the other pipeline's build).
            report = job_report(job, job_view(runtime, job), job_page_url(runtime, job),
                                earlier_failure=earlier.get((job.kind, job.name), ""), compared=compared,
                                verdicts=verdicts.get(job.id, ()))  # fmt: skip
            row = session.scalar(select(ForgeCheck).where(ForgeCheck.job_id == job.id))
            if row is not None and report.rank <= row.sent_rank:
                continue  # an older state never overwrites a newer one
            writes.append(_Write(report, row.check_id if row else None, row is not None))
        return writes


def _write(runtime: Runtime, sink: JobStatusSink, target: ReportTarget, write: _Write) -> int:
    """One job's status brought to its report; how many forge requests that took."""
    report, requests, key = write.report, 1, _key(write.report, sink.forge)
    if write.claimed and _sent_at_least(runtime, key, report.rank):
        # Another sync of this pipeline, planned later, sent a newer state while this one was on its way (a
        # cancel while a job's "pending" was being planned): sending ours now would move the status backwards.
        return 0
    status_id = write.status_id
    if status_id is None and not _claim(runtime, sink, target, write):
        requests += 1
        status_id = sink.find(report)
    if status_id is None:
        status_id = sink.create(report)
        _store(runtime, key, status_id=status_id)
    else:
        sink.update(status_id, report)
    _store(runtime, key, status_id=status_id, rank=report.rank)
    return requests


def _claim(runtime: Runtime, sink: JobStatusSink, target: ReportTarget, write: _Write) -> bool:
    """The job's forge_check row, made (and committed) before its status is created; False when it was
    there already: an earlier attempt may have reached the forge, so look before creating. A summary's row
    has no job to make it unique: a once-key, in the same transaction, does."""
    if write.claimed:
        return False
    report = write.report
    summary = report.kind == SUMMARY_KIND
    try:
        with runtime.store.session() as session:
            if summary:
                record_once(session, f"summary-status:{sink.forge}:{report.pipeline_id}")
            session.add(ForgeCheck(job_id=None if summary else report.job_id, pipeline_id=report.pipeline_id,
                                   forge=sink.forge, repo=target.repo, head_sha=target.head_sha, name=report.label,
                                   sent_rank=0))  # fmt: skip
    except IntegrityError:
        return False  # another sync of this pipeline claimed it meanwhile
    return True


def _sent_at_least(runtime: Runtime, key: _RowKey, rank: int) -> bool:
    with runtime.store.session() as session:
        row = session.scalar(_row_of(key))
    return row is not None and row.sent_rank >= rank


def _store(runtime: Runtime, key: _RowKey, *, status_id: int, rank: int | None = None) -> None:
    """Record what the forge now shows, in its own short transaction; the rank only ever rises."""
    with runtime.store.session() as session:
        row = session.scalar(_row_of(key).with_for_update())
        if row is None:
            return
        row.check_id = status_id
        if rank is not None and rank > row.sent_rank:
            row.sent_rank = rank


def sync_summary_status(runtime: Runtime, pipeline_id: int, open_sink: SinkFactory, *,
                        render: Callable[[PipelineSummary], str] = summary_markdown,
                        adapt: Callable[[PipelineSummary], PipelineSummary] | None = None) -> int:  # fmt: skip
    """The pipeline's `labgate / summary` status next to its jobs' (GitHub's check run, a Patchwork check),
    by the jobs' rules: made once, its id kept, sent when its stage (the pipeline's: queued, running, done)
    rises and never backwards; `adapt` says the summary in the forge's words, `render` makes its text. How
    many forge requests that took."""
    target = report_target(runtime, pipeline_id)
    sink = open_sink(target) if target is not None else None
    if target is None or sink is None:
        return 0
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        stage = summary_stage(pipeline.state) if pipeline is not None else None
        row = session.scalar(_row_of(_SummaryRow(pipeline_id, sink.forge)))
        sent = (row.check_id, row.sent_rank) if row is not None else None
    if stage is None or (sent is not None and RANK[stage] <= sent[1]):
        return 0  # nothing newer to say: the summary is not even read
    summary = pipeline_summary(runtime, pipeline_id)
    if summary is None:
        return 0
    summary = adapt(summary) if adapt is not None else summary
    report = summary_report(summary, stage, render(summary))
    return _write(runtime, sink, target, _Write(report, sent[0] if sent else None, sent is not None))


def pipeline_source(runtime: Runtime, pipeline_id: int) -> str | None:
    """The Change.source of a pipeline's change (which forge it reports to), None if there is no such pipeline."""
    target = report_target(runtime, pipeline_id)
    return target.source if target is not None else None
