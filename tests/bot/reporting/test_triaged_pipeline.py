"""Reports of a pipeline triaged through the real result path (bot/pipelines/triage_runs.py, played by
kernel_lab's workers): while re-runs confirm a failure its job says so; once verdicts are written, the job
fails only for a new failure; triage runs never get a status of their own; the summary status goes
queued/running/done by the jobs' rules, titled by the verdict line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.reporting.sinks import SUMMARY_LABEL, JobReport
from bot.reporting.summary import pipeline_summary
from bot.reporting.sync import sync_job_reports, sync_summary_status
from tests.bot.pipelines.kernel_lab import KernelLab, open_kernel_lab
from tests.bot.pipelines.test_triage_runs import (
    TEST,
    by_side,
    drive,
    failing,
    finish,
    passing,
    queued_test,
    triage_runs,
)


class FakeStatusSink:
    """A JobStatusSink that records every status it was asked to show, by label."""

    forge = "fake"

    def __init__(self) -> None:
        self.sent: list[JobReport] = []

    def create(self, report: JobReport) -> int:
        self.sent.append(report)
        return len(self.sent)

    def update(self, status_id: int, report: JobReport) -> None:
        self.sent.append(report)

    def find(self, report: JobReport) -> int | None:
        return None

    def said(self, label: str) -> list[tuple[str, str, str]]:
        return [(r.stage, r.verdict, r.title) for r in self.sent if r.label == label]


@pytest.fixture
def lab(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[KernelLab]:
    yield from open_kernel_lab(tmp_path, database_url, redis_db_url)


def sync(lab: KernelLab, pipeline_id: int, sink: FakeStatusSink) -> None:
    sync_job_reports(lab.runtime, pipeline_id, lambda target: sink)
    sync_summary_status(lab.runtime, pipeline_id, lambda target: sink)


def test_a_new_failure_is_confirmed_then_fails_its_job_and_leads_the_summary(lab: KernelLab) -> None:
    sink = FakeStatusSink()
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    sync(lab, pipeline_id, sink)
    assert sink.said(f"labgate / {TEST}")[-1] == ("running", "pending", "re-running to confirm 1 failure")
    assert sink.said(SUMMARY_LABEL) == [("running", "pending", "running: re-running to confirm 1 failure")]
    drive(lab, by_side(failing, passing))
    sync(lab, pipeline_id, sink)
    assert sink.said(f"labgate / {TEST}")[-1] == ("done", "fail", "fail: hello (1 new failure)")
    assert sink.said(SUMMARY_LABEL)[-1] == ("done", "fail", "1 new failure")
    runs = {f"labgate / {run.name}" for run in triage_runs(lab, pipeline_id)}
    assert len(runs) == 7 and not runs & {report.label for report in sink.sent}  # evidence, not jobs
    summary = pipeline_summary(lab.runtime, pipeline_id)
    assert summary is not None and summary.verdict_line == "1 new failure"
    [new] = summary.verdicts
    assert (new.test, new.evidence) == ("hello", "failed 4/4 with the change, 0/4 on base")
    assert new.reproduce.startswith(f"labgate reproduce {test.id} --server ")
    assert "# hello: expected 1, got 2" in new.error_lines
    assert len(summary.jobs) == len(lab.jobs(pipeline_id)) - 7


def test_a_pre_existing_failure_passes_its_job_and_says_what_was_found(lab: KernelLab) -> None:
    sink = FakeStatusSink()
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    drive(lab, failing)
    sync(lab, pipeline_id, sink)
    assert sink.said(f"labgate / {TEST}") == [("done", "pass", "pass (1 pre-existing failure)")]
    assert sink.said(SUMMARY_LABEL) == [("done", "pass", "1 pre-existing failure")]
