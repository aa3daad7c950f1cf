"""Two syncs of one pipeline in flight at once: the one planned first (a job still queued) must not send its
older state after the later one (the job cancelled) sent the newer: on GitLab that would open a new pending
status after the finished one, which nothing would ever finish."""

from __future__ import annotations

from bot.reporting.sinks import JobReport
from bot.reporting.sync import ReportTarget, _store, _Write, _write
from bot.store.models import ForgeCheck
from tests.bot.pipelines.kernel_lab import KernelLab


class RecordingSink:
    forge = "gitlab"

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def create(self, report: JobReport) -> int:
        self.sent.append((0, report.stage))
        return 7

    def update(self, status_id: int, report: JobReport) -> None:
        self.sent.append((status_id, report.stage))

    def find(self, report: JobReport) -> int | None:
        return None


def _report(job_id: int, pipeline_id: int, stage: str) -> JobReport:
    verdict = "cancelled" if stage == "done" else "pending"
    return JobReport(job_id=job_id, pipeline_id=pipeline_id, kind="build", name="x86_64",
                     label="labgate / build x86_64", stage=stage, verdict=verdict,  # type: ignore[arg-type]
                     title=stage, summary="", details_url="http://x/")  # fmt: skip


def test_a_sync_planned_before_a_newer_state_was_sent_does_not_send_its_older_one(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out()
    job = kernel_lab.jobs(pipeline_id)["x86_64"]
    target = ReportTarget(pipeline_id, "gitlab", "linux", "group/linux", 1, None, "c" * 40)
    with kernel_lab.runtime.store.session() as session:
        session.add(ForgeCheck(job_id=job.id, pipeline_id=pipeline_id, forge="gitlab", repo="group/linux",
                               head_sha="c" * 40, name="labgate / build x86_64", sent_rank=0, check_id=7))  # fmt: skip
    sink = RecordingSink()
    stale = _Write(_report(job.id, pipeline_id, "queued"), status_id=7, claimed=True)  # planned first
    newer = _Write(_report(job.id, pipeline_id, "done"), status_id=7, claimed=True)
    assert _write(kernel_lab.runtime, sink, target, newer) == 1  # sent first: the job was cancelled
    assert _write(kernel_lab.runtime, sink, target, stale) == 0  # then the stale one arrives: not sent
    assert sink.sent == [(7, "done")]
    _store(kernel_lab.runtime, job.id, status_id=7, rank=1)  # a rank never falls
    with kernel_lab.runtime.store.session() as session:
        assert session.query(ForgeCheck).filter_by(job_id=job.id).one().sent_rank == 3
