"""What each job's report should say, read from the store: forge-neutral (bot/reporting/sinks.py's JobReport)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from bot.core.mail_text import error_lines_of
from bot.core.render import (
    FAILING,
    NEW,
    JobView,
    TestVerdictView,
    inline_code,
    outcome_word,
    render_counts,
    render_job_markdown,
    verdict_line,
    verdicts_markdown,
)
from bot.core.triage import compare_results, render_comparison
from bot.pipelines.retries import attempts_of
from bot.pipelines.scheduler import waiting_report_title
from bot.reporting.pipeline_views import changed_lines_of, job_findings
from bot.reporting.sinks import SUMMARY_LABEL, JobReport, Verdict
from bot.reporting.verdicts import being_confirmed_words, counts_of, is_being_confirmed, reported_jobs, verdicts_of
from bot.store.models import Job, JobAttempt, Pipeline, Revision

MAX_TITLE = 250
MAX_SUMMARY = 65000
NO_DETAILS = "No details."  # render_job_markdown's word for a job with nothing to show


def job_label(kind: str, name: str) -> str:
    """What a person reads as the job's name on any forge; never the pipeline summary's label (a job named
    `summary` would otherwise supersede its Patchwork check)."""
    if kind == "checkout":
        return "labgate / checkout"
    if kind == "build":
        return f"labgate / build {name}"
    label = f"labgate / {name}"
    return f"labgate / {kind} {name}" if label == SUMMARY_LABEL else label


def verdict_for(view: JobView) -> Verdict:
    """How a finished job should look; our infrastructure's failures never blame the change."""
    if view.state in ("pending", "waiting", "queued", "running"):
        return "pending"
    if view.error_code == "cancelled":
        return "cancelled"
    if view.error_code == "timeout":
        return "timed-out"
    if view.error_code in ("infra-error", "worker-lost"):
        return "neutral"
    verdicts: dict[str, Verdict] = {"pass": "pass", "skip": "neutral", "fail": "fail", "incomplete": "fail"}
    return verdicts.get(view.result or "", "fail")


def changed_line_diagnostics(job: Job) -> tuple[dict[str, Any], ...]:
    """A command build's compiler warnings and errors on lines the change wrote (a forge may show them
    inline). A kernel build has a warning ledger instead, compared with its base's (job_findings)."""
    diagnostics = job.outputs.get("diagnostics") or []
    changed = changed_lines_of(job)
    found = []
    for item in diagnostics:
        ranges = changed.get(item.get("file"), [])
        if any(first <= item["line"] <= last for first, last in ranges):
            found.append({"path": item["file"], "line": item["line"], "level": item["level"],
                          "message": str(item["text"])[:4000]})  # fmt: skip
    return tuple(found)


def attempt_line(attempt: JobAttempt) -> str:
    """One earlier attempt of a retried job: where it ran and why it failed."""
    where = f" on {attempt.place}" if attempt.place else ""
    why = (attempt.error_message or "").strip().splitlines()
    # The message is a worker's word and may quote the change (a crash title it printed): one code span.
    return f"attempt {attempt.number}: {attempt.result} ({attempt.error_code}{where})" + (
        f": {inline_code(why[0][:300])}" if why else "")  # fmt: skip


def earlier_attempts(job: Job) -> str:
    """The failed attempts of a job the lab retried, as a paragraph of its report; empty if none."""
    session = object_session(job)
    attempts = attempts_of(session, job.id) if session is not None and job.kind == "test" else []
    if not attempts:
        return ""
    lines = "\n".join(f"- {attempt_line(attempt)}" for attempt in attempts)
    return f"Retried after incomplete attempts (the lab's side failed, not the change):\n{lines}"


def triaged_verdict(view: JobView, verdicts: Sequence[TestVerdictView], counts: dict[str, int]) -> Verdict:
    """A triaged test job's verdict: `fail` only for a new failure or regression (or a failure triage did not
    judge); a failure triage explained (flaky, pre-existing, a known issue) passes, a board fault is neutral.
    A job cancelled, timed out or failed by us keeps its verdict; a failure no verdict explains stays one."""
    raw = verdict_for(view)
    if any(counts.get(key) for key in FAILING):
        return "fail"
    explained = any(v.verdict not in ("pass", "fixed") for v in verdicts)
    if raw != "fail" or view.error_code or not explained:
        return raw
    return "neutral" if view.result == "incomplete" else "pass"


def _triaged_title(verdict: Verdict, view: JobView, verdicts: Sequence[TestVerdictView], line: str) -> str:
    if verdict == "fail":
        first = next((v.test for v in verdicts if v.verdict in NEW), None)
        first = first or next((t.path for t in view.failed_tests if t.path not in {v.test for v in verdicts}), None)
        return f"fail: {first} ({line})" if first else f"fail ({line})"
    return f"{'incomplete' if verdict == 'neutral' else verdict} ({line})"


def being_confirmed(base: JobReport, job: Job, view: JobView) -> JobReport:
    """A test job whose failures are being re-run with the change and on the base: not a failure yet."""
    title = being_confirmed_words([job])
    said = (f"The first run {'failed' if view.result == 'fail' else 'did not pass'}: labgate re-runs its failures "
            "with the change and on the base before it says whether the change broke them.")  # fmt: skip
    tests = tuple((t.path, t.status + (f" # {t.directive}" if t.directive else "")) for t in job.tests)
    summary = said + "\n\n" + render_job_markdown(view, tests=tests)
    return replace(base, stage="running", title=title[:MAX_TITLE], summary=summary[:MAX_SUMMARY])


def job_report(job: Job, view: JobView, details_url: str, *, earlier_failure: str = "", compared: str = "",
               verdicts: Sequence[TestVerdictView] | None = None) -> JobReport:  # fmt: skip
    """The report of one job now: queued, running, being confirmed, or done with its outcome, failures first.
    `verdicts`: the job's test verdicts (bot/reporting/verdicts.py), read from the job's session if None."""
    label = job_label(job.kind, job.name)
    base = JobReport(job_id=job.id, pipeline_id=job.pipeline_id, kind=job.kind, name=job.name, label=label,
                     stage="queued", verdict="pending", title="queued", summary="Waiting for a worker.",
                     details_url=details_url)  # fmt: skip
    if view.state == "waiting":
        # In the store for its device class's window: how far back it is, and why if it is held.
        title = waiting_report_title(job)
        return replace(base, title=title[:MAX_TITLE], summary=title[0].upper() + title[1:] + ".")
    if view.state == "pending" and job.kind == "test" and job.error_message and job.attempts > 1:
        # A retry held back until a health check of its class has run (bot/pipelines/retries.py).
        return replace(base, title=job.error_message[:MAX_TITLE], summary=job.error_message + ".")
    if view.state in ("pending", "queued"):
        return base
    retried = earlier_attempts(job)
    if view.state == "running":
        running = f"Attempt {max(1, view.attempts)} is running."
        waiting = job.outputs.get("waiting_for_place") if job.kind == "test" else None
        if isinstance(waiting, str) and waiting:
            # The worker's word on who holds the places (labgrid user names, offline reasons): one code span.
            return replace(base, stage="running", title="waiting for a place"[:MAX_TITLE],
                           summary=f"Attempt {max(1, view.attempts)} waits for a place: {inline_code(waiting)}."
                           + (f"\n\n{retried}" if retried else ""))  # fmt: skip
        return replace(base, stage="running", title="running", summary=running + (f"\n\n{retried}" if retried else ""))
    if view.state == "done" and is_being_confirmed(job):
        return being_confirmed(base, job, view)
    if verdicts is None:
        session = object_session(job)
        verdicts = verdicts_of(session, job.pipeline).get(job.id, ()) if session and job.kind == "test" else ()
    if verdicts and job.kind == "test":
        return _triaged_report(base, job, view, verdicts, retried, earlier_failure=earlier_failure)
    word = outcome_word(view)
    counts = render_counts(view.test_counts)
    first = view.failed_tests[0].path if view.failed_tests else None
    title = f"{word}: {first}" if first else word + (f" ({counts})" if counts else "")
    tests = tuple((t.path, t.status + (f" # {t.directive}" if t.directive else "")) for t in job.tests)
    summary = render_job_markdown(view, tests=tests, earlier_failure=earlier_failure)
    if compared and job.kind == "test":
        summary = compared + "\n\n" + summary
    if retried:
        summary = summary + "\n\n" + retried
    findings = job_findings(job) if view.result is not None else None
    diagnostics = changed_line_diagnostics(job) if findings is None else findings.diagnostics
    if findings is not None:
        # The count line is what a reader of a one-line status (GitLab, Patchwork) needs: it leads the title.
        title = "; ".join([f"{word}: {findings.headline}", *findings.notes])
        summary = findings.markdown() + ("" if summary == NO_DETAILS else "\n\n" + summary)
    listed = findings.text() if findings is not None and findings.lines else ""
    # A failed job's findings with errors (a compiler's, checkpatch's) say what failed more exactly than its
    # log's first lines; without errors (a link failure after new warnings) the log says it.
    exact = listed if findings is not None and findings.errors else ""
    error_lines = (exact or error_lines_of(view)) if verdict_for(view) != "pass" else ""
    return replace(base, stage="done", verdict=verdict_for(view), title=title[:MAX_TITLE],
                   summary=summary[:MAX_SUMMARY], diagnostics=diagnostics, findings=listed,
                   error_lines=error_lines)  # fmt: skip


def _triaged_report(base: JobReport, job: Job, view: JobView, verdicts: Sequence[TestVerdictView], retried: str,
                    *, earlier_failure: str = "") -> JobReport:  # fmt: skip
    """A test job with verdicts: titled by what triage found, its new failures first, then the rest, then
    the run's own results."""
    counts = counts_of(job, verdicts)
    verdict = triaged_verdict(view, verdicts, counts)
    line = verdict_line(counts)
    tests = tuple((t.path, t.status + (f" # {t.directive}" if t.directive else "")) for t in job.tests)
    run = render_job_markdown(view, tests=tests, earlier_failure=earlier_failure)  # a retest's first failure too
    parts = [f"**{line}**", verdicts_markdown(verdicts), "Results of this run:", run]
    summary = "\n\n".join(part for part in [*parts, retried] if part)
    title = _triaged_title(verdict, view, verdicts, line)
    return replace(base, stage="done", verdict=verdict, title=title[:MAX_TITLE], summary=summary[:MAX_SUMMARY],
                   error_lines=error_lines_of(view) if verdict != "pass" else "")  # fmt: skip


def _test_statuses(pipeline: Pipeline) -> dict[str, str]:
    return {f"{job.name}/{t.path}": t.status for job in reported_jobs(pipeline.jobs) if job.kind == "test"
            for t in job.tests}  # fmt: skip


def post_merge_comparison(session: Session, pipeline: Pipeline) -> str:
    """For a push to a staging branch: this head's results against the previous head's."""
    if pipeline.kind != "post-merge" or pipeline.state != "done":
        return ""
    previous = session.scalar(
        select(Pipeline).join(Revision)
        .where(Revision.change_id == pipeline.revision.change_id, Pipeline.id < pipeline.id,
               Pipeline.state == "done", Pipeline.result != "cancelled")
        .order_by(Pipeline.id.desc())
    )  # fmt: skip
    if previous is None:
        return "First run on this branch: nothing to compare with."
    checkout = pipeline.jobs[0] if pipeline.jobs else None
    if checkout is not None and checkout.outputs.get("base_is_ancestor") is False:
        # A forced push: what failed before may be gone with the old commits, not fixed by new ones.
        return (f"The branch was rewritten: `{(pipeline.revision.base_sha or '')[:12]}` is not an ancestor of "
                f"`{(pipeline.revision.head_sha or '')[:12]}`, so its results are not compared with pipeline "
                f"{previous.id}'s.")  # fmt: skip
    label = f"`{(previous.revision.head_sha or '')[:12]}` (pipeline {previous.id})"
    return render_comparison(compare_results(_test_statuses(pipeline), _test_statuses(previous)), label)


def earlier_failures(session: Session, pipeline: Pipeline) -> dict[tuple[str, str], str]:
    """For a re-run: the first failure of each job in the run it repeats, kept visible."""
    if pipeline.rerun_of_id is None:
        return {}
    earlier = session.get(Pipeline, pipeline.rerun_of_id)
    found: dict[tuple[str, str], str] = {}
    while earlier is not None:
        for job in earlier.jobs:
            failed = [t for t in job.tests if t.status == "fail"]
            if failed and (job.kind, job.name) not in found:
                first = failed[0]
                found[(job.kind, job.name)] = f"pipeline {earlier.id}: not ok {first.path}\n{first.diagnostics}".strip()
            elif job.result == "fail" and (job.kind, job.name) not in found:
                found[(job.kind, job.name)] = f"pipeline {earlier.id}: {job.error_message or 'failed'}"
        earlier = session.get(Pipeline, earlier.rerun_of_id) if earlier.rerun_of_id else None
    return found
