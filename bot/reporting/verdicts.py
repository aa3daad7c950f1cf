"""A pipeline's test verdicts (TestVerdict rows) read into the forge-neutral views its reports render.

Triage runs (a re-run of a change's test job, a run at its base: Job.spec["triage"]) are evidence of the
change's own test job, counted in its verdicts' evidence; they are never reported as jobs of their own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.render import MAX_ERROR_LINES, VERDICTS, TestVerdictView, first_error_lines
from bot.host.stores import Runtime
from bot.pipelines.history import triage_of
from bot.reporting.page_links import link_token, page_url, public_base_url, tree_is_private
from bot.reporting.pipeline_views import read_log
from bot.store.models import Job, KnownIssue, Pipeline, TestResult, TestVerdict

TRIAGE_RUNNING = "running"  # Job.spec["triage_state"] while a test job's re-runs and base runs go on


def is_triage_run(job: Job) -> bool:
    """A re-run or base run made by triage: evidence, not a job of the change's report."""
    return triage_of(job) is not None


def reported_jobs(jobs: Iterable[Job]) -> list[Job]:
    """The jobs a pipeline's reports list: all but its triage runs."""
    return [job for job in jobs if not is_triage_run(job)]


def is_being_confirmed(job: Job) -> bool:
    """Whether the job's failures are being re-run (its verdicts are not written yet)."""
    return job.kind == "test" and isinstance(job.spec, dict) and job.spec.get("triage_state") == TRIAGE_RUNNING


def being_confirmed_words(jobs: Iterable[Job]) -> str:
    """"re-running to confirm 2 failures" for the jobs being confirmed ("" when none is): each failed test,
    or the job itself when it failed before any test; a job that passed is re-run for its metrics."""
    confirming = [job for job in jobs if is_being_confirmed(job)]
    count = sum(sum(1 for test in job.tests if test.status == "fail") or (job.result != "pass") for job in confirming)
    if count:
        return f"re-running to confirm {count} failure{'s' if count != 1 else ''}"
    return "re-running to compare metrics with the base" if confirming else ""


def reproduce_command(runtime: Runtime, job: Job) -> str:
    """How a developer runs this job again on their machine (`labgate reproduce`, bot/cli/reproduce.py); a
    private tree's with the token its pages' links carry already."""
    command = f"labgate reproduce {job.id} --server {public_base_url(runtime.config)}"
    tree = job.pipeline.revision.change.tree.name
    if tree_is_private(runtime.config, tree):
        command += f" --link-token {link_token(runtime.config, runtime.data_dir, job.pipeline_id)}"
    return command


Views = dict[int, tuple[TestVerdictView, ...]]


def verdicts_of(session: Session, pipeline: Pipeline, runtime: Runtime | None = None) -> Views:
    """Each reported test job's verdicts, by job id, in the order triage wrote them. With `runtime`, each
    carries its log's link, the command that reproduces its job and, for a crash, the log's lines from the
    crash on; without, only what the store holds. A verdict this code does not know is counted as a failure
    no triage judged (`failed`): a mistake of ours must not pass a change."""
    jobs = {job.id: job for job in reported_jobs(pipeline.jobs) if job.kind == "test"}
    rows = session.scalars(select(TestVerdict).where(TestVerdict.pipeline_id == pipeline.id)
                           .order_by(TestVerdict.id)).all()  # fmt: skip
    found: dict[int, list[TestVerdictView]] = {}
    sources: dict[int, FailureSources] = {}
    for row in rows:
        job = jobs.get(row.job_id)
        if job is None:
            continue  # not a reported test job of this pipeline
        test = test_in_job(job, row.test_path)
        if job.id not in sources:
            sources[job.id] = FailureSources(job, runtime)
        source = sources[job.id]
        view = TestVerdictView(
            job_id=job.id, job=job.name, test=test, device_class=row.device_class,
            verdict=row.verdict if row.verdict in VERDICTS else "failed", evidence=row.evidence,
            crash_title=row.crash_title, known_issue=row.known_issue,
            known_issue_link=_issue_link(session, runtime, row.known_issue), cut_short=row.cut_short,
            error_lines=source.error_lines(test, row.crash_title),
        )  # fmt: skip
        if runtime is not None:
            view = replace(view, log_url=_log_url(runtime, job), reproduce=reproduce_command(runtime, job))
        found.setdefault(job.id, []).append(view)
    return {job_id: tuple(views) for job_id, views in found.items()}


def _issue_link(session: Session, runtime: Runtime | None, issue_id: str | None) -> str:
    """Where a known issue is tracked: its config entry's link, else its stored one's."""
    if not issue_id:
        return ""
    configured = runtime.config.known_issues if runtime is not None else []
    link = next((entry.link for entry in configured if entry.id == issue_id), None)
    if link is None:
        link = session.scalar(select(KnownIssue.link).where(KnownIssue.issue_id == issue_id))
    return link or ""


def _log_url(runtime: Runtime, job: Job) -> str:
    tree = job.pipeline.revision.change.tree.name
    return page_url(runtime.config, runtime.data_dir, f"/jobs/{job.id}/log", tree, job.pipeline_id)


def test_in_job(job: Job, test_path: str) -> str:
    """The test's path in its job from a verdict's "<test job>/<path>": the job named as the plan names its
    test ("unit", bot/pipelines/history.py) or as the job is ("qemu-x86_64 unit")."""
    for name in (job.spec.get("name") if isinstance(job.spec, dict) else None, job.name):
        if isinstance(name, str) and name and test_path.startswith(f"{name}/"):
            return test_path[len(name) + 1 :]
    return test_path


class FailureSources:
    """Where a job's failures are quoted from, each read once however many verdicts it has: its tests by
    path, and (with a runtime, when a failure needs it) its log's lines."""

    def __init__(self, job: Job, runtime: Runtime | None) -> None:
        self.job, self.runtime = job, runtime
        self.tests: dict[str, TestResult] = {}
        for result in job.tests:
            self.tests.setdefault(result.path, result)
        self._log: list[str] | None = None
        self._crash_at: dict[str, int | None] = {}

    def log_lines(self) -> list[str]:
        if self._log is None:
            text = read_log(self.runtime, self.job.log_digest) if self.runtime is not None else ""
            self._log = text.split("\n") if text else []
        return self._log

    def test_lines(self, test: str) -> list[str]:
        result = self.tests.get(test)
        if result is None:
            return []
        head = f"not ok {result.path}" + (f" ({result.reason})" if result.reason else "")
        return [head, *(line for line in result.diagnostics.split("\n") if line.strip())]

    def error_lines(self, test: str, crash_title: str) -> str:
        """A failure's first error lines (at most MAX_ERROR_LINES): the log's from its crash title on when
        the log has it, else the test's own diagnostics, else the job's error message or its log's errors."""
        if crash_title:
            if crash_title not in self._crash_at:
                lines = self.log_lines()
                self._crash_at[crash_title] = next((n for n, line in enumerate(lines) if crash_title in line), None)
            at = self._crash_at[crash_title]
            if at is not None:
                return "\n".join(self.log_lines()[at : at + MAX_ERROR_LINES])
        own = self.test_lines(test) or (self.job.error_message or "").split("\n")
        said = "\n".join(own[:MAX_ERROR_LINES]).strip()
        log = self.log_lines()
        return said or (first_error_lines("\n".join(log), MAX_ERROR_LINES) if log else "")


def counts_of(job: Job, verdicts: Sequence[TestVerdictView]) -> Counter[str]:
    """What the job's tests came to, keyed as render.verdict_line reads it: each verdict, and each test
    without one by its status (a failure no triage judged is `failed`)."""
    counts: Counter[str] = Counter(view.verdict for view in verdicts)
    judged = {view.test for view in verdicts}
    statuses = {"pass": "pass", "fail": "failed", "incomplete": "incomplete"}
    counts.update(statuses[test.status] for test in job.tests if test.path not in judged and test.status in statuses)
    return counts
