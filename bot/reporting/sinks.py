"""What a forge implements to show labgate's results: a per-job status sink and a per-pipeline summary sink.

The sync loop (bot/reporting/sync.py) decides what to send and when, never backwards, each write its
own short transaction; a sink only says it in its forge's words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bot.core.render import TestVerdictView

Stage = Literal["queued", "running", "done"]
RANK: dict[str, int] = {"queued": 1, "running": 2, "done": 3}
# How a result should look on a forge, whoever shows it: our infrastructure's failures never blame
# the change (neutral), a cancelled or timed-out job says so.
Verdict = Literal["pending", "pass", "fail", "neutral", "cancelled", "timed-out", "warning"]
# A pipeline's summary, shown as a status of its own next to the jobs' (GitHub's `labgate / summary` check
# run, a Patchwork check): a JobReport of this kind, with job_id 0.
SUMMARY_KIND = "summary"
SUMMARY_LABEL = "labgate / summary"


@dataclass(frozen=True)
class JobReport:
    """One job's report, in labgate's words."""

    job_id: int
    pipeline_id: int
    kind: str  # checkout, build, test
    name: str  # "checkout", "x86_64", "qemu-x86_64 unit"
    label: str  # what a person reads: "labgate / build x86_64"
    stage: Stage
    verdict: Verdict
    title: str  # one line: "fail: math.mul", "pass (12 pass)", "running"
    summary: str  # markdown: failures first, then the table
    details_url: str  # the job's page (signed when the tree is private)
    # What a forge shows inline (bot/core/findings.py): a kernel build's new warnings on lines the change wrote
    # and its errors, a static job's findings on changed lines, a command build's compiler lines on changed
    # lines. {"path", "line", "level" (error|warning), "message", and "title" when it is not "compiler <level>"}.
    diagnostics: tuple[dict[str, Any], ...] = ()
    # A kernel build's or static job's findings as plain text, verbatim, one a line (their count line is in
    # the title): for reports that show no annotations (a mail, a merge request note). Empty when there are
    # none to list. A failed job's error_lines are its findings when it has any.
    findings: str = ""
    # The first error lines, plain and verbatim (bot/core/mail_text.py error_lines_of), for reports
    # that show no markdown: a mail quotes them under each new failure.
    error_lines: str = ""

    @property
    def rank(self) -> int:
        return RANK[self.stage]

    @property
    def key(self) -> str:
        """What names it among a head's statuses on a forge that keeps one (a check run's external id):
        the job's id, or `pipeline-<id>` for a pipeline's summary."""
        return f"pipeline-{self.pipeline_id}" if self.kind == SUMMARY_KIND else str(self.job_id)


class JobStatusSink(Protocol):
    """One status per job on a forge (a GitHub check run, a GitLab commit status, Patchwork checks)."""

    forge: str  # "github", "patchwork", ...

    def create(self, report: JobReport) -> int:
        """Make the job's status; its id on the forge (a sink whose statuses have none returns 0)."""
        ...

    def update(self, status_id: int, report: JobReport) -> None:
        """Bring it to `report` (a forge without edits, like Patchwork, posts a new status)."""
        ...

    def find(self, report: JobReport) -> int | None:
        """The status an earlier create made, when its answer was lost; None if there is none (or the
        forge cannot tell, and a second create is harmless there)."""
        ...


@dataclass(frozen=True)
class PipelineSummary:
    """A pipeline's whole report: what is new and broken first, then every job."""

    pipeline_id: int
    done: bool
    verdict: Verdict
    headline: str  # "labgate: fail: 1 new failure (qemu-x86_64 unit: math.mul)"
    text: str  # plain text (mail), prose wrapped by the renderer that made it
    markdown: str  # for forges that render it
    url: str  # the pipeline page (signed when the tree is private)
    jobs: tuple[JobReport, ...] = ()
    our_error: bool = False  # our infrastructure failed: nobody is mailed about it
    notes: tuple[str, ...] = field(default_factory=tuple)
    reproduce: str = ""  # commands that reproduce the pipeline locally, one a line (`labgate try ...`)
    # The first line of every final report (bot/core/render.py verdict_line): "1 new failure, 140 passed";
    # while it runs, "running: ..."; a pipeline that tested nothing, "not tested: <why>".
    verdict_line: str = ""
    verdicts: tuple[TestVerdictView, ...] = ()  # of its test jobs, in job order: new ones, and the rest


class PipelineSummarySink(Protocol):
    """One summary per pipeline: edited in place (a GitHub summary check, a GitLab MR note) or sent once
    when the pipeline is done (a mail)."""

    forge: str
    edits_in_place: bool

    def publish(self, summary: PipelineSummary) -> None:
        """Show `summary` (edit in place), or send it (once-only sinks are called once, when done)."""
        ...
