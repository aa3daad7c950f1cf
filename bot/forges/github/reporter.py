"""Check runs on GitHub, one per job (queued -> in_progress -> completed), the pipeline's `labgate / summary`
check run next to them (its verdict line as title, then what is new and broken), and the approval check:
the GitHub side of bot/reporting (its sync loop decides what to send and when)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.forges.github.client import GitHubApp
from bot.host.stores import Runtime
from bot.reporting.sinks import JobReport
from bot.reporting.sync import ReportTarget, sync_job_reports, sync_summary_status

SOURCE = "github"
MAX_ANNOTATIONS_PER_REQUEST = 50
APPROVAL_CHECK = "labgate"
_STATUS = {"queued": "queued", "running": "in_progress", "done": "completed"}
_CONCLUSION = {"pass": "success", "fail": "failure", "neutral": "neutral", "cancelled": "cancelled",
               "timed-out": "timed_out", "warning": "neutral"}  # fmt: skip


def check_body(report: JobReport) -> dict[str, Any]:
    """The check run's fields for a report, without its annotations."""
    body: dict[str, Any] = {"status": _STATUS[report.stage], "details_url": report.details_url,
                            "output": {"title": report.title, "summary": report.summary}}  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if report.stage == "running":
        body["started_at"] = now
    if report.stage == "done":
        body["conclusion"] = _CONCLUSION.get(report.verdict, "failure")
        body["completed_at"] = now
    return body


def check_annotations(report: JobReport) -> list[dict[str, Any]]:
    """The report's diagnostics (new warnings and static findings on changed lines, errors) as GitHub shows
    them inline."""
    return [{"path": d["path"], "start_line": d["line"], "end_line": d["line"],
             "annotation_level": "failure" if d["level"] == "error" else "warning",
             "message": d["message"], "title": d.get("title") or f"compiler {d['level']}"}
            for d in report.diagnostics]  # fmt: skip


class CheckRunSink:
    """One check run per job on the pull request's head (bot/reporting/sinks.py's JobStatusSink)."""

    forge = SOURCE

    def __init__(self, github: GitHubApp, installation: int, repo: str, head_sha: str) -> None:
        self.github, self.installation, self.repo, self.head_sha = github, installation, repo, head_sha
        self.requests = 0

    def create(self, report: JobReport) -> int:
        body, batches = self._body(report)
        check_id = self.github.create_check(self.installation, self.repo, {
            "name": report.label, "head_sha": self.head_sha, "external_id": report.key, **body})  # fmt: skip
        self._more_annotations(check_id, body, batches)
        return check_id

    def update(self, status_id: int, report: JobReport) -> None:
        body, batches = self._body(report)
        self.github.update_check(self.installation, self.repo, status_id, body)
        self._more_annotations(status_id, body, batches)

    def find(self, report: JobReport) -> int | None:
        return self.github.find_check(self.installation, self.repo, self.head_sha, report.label, report.key)

    def _body(self, report: JobReport) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
        # GitHub takes 50 annotations a request; the rest follow in updates (it appends them).
        found, size = check_annotations(report), MAX_ANNOTATIONS_PER_REQUEST
        batches = [found[i : i + size] for i in range(0, len(found), size)]
        body = check_body(report)
        body["output"]["annotations"] = batches[0] if batches else []
        return body, batches[1:]

    def _more_annotations(self, check_id: int, body: dict[str, Any], batches: list[list[dict[str, Any]]]) -> None:
        for batch in batches:
            self.github.update_check(self.installation, self.repo, check_id,
                                     {"output": {**body["output"], "annotations": batch}})  # fmt: skip


def check_run_sink(github: GitHubApp, target: ReportTarget) -> CheckRunSink | None:
    """The sink for a pipeline's change, if it is a GitHub one labgate can write to."""
    if target.installation is None or not target.repo or not target.head_sha:
        return None
    if target.source not in (SOURCE, f"{SOURCE}-push"):
        return None
    return CheckRunSink(github, target.installation, target.repo, target.head_sha)


def sync_checks(runtime: Runtime, github: GitHubApp, pipeline_id: int) -> int:
    """Bring every job's check run and the pipeline's summary check run up to date; returns how many requests
    were made."""
    jobs = sync_job_reports(runtime, pipeline_id, lambda target: check_run_sink(github, target))
    return jobs + sync_summary_status(runtime, pipeline_id, lambda target: check_run_sink(github, target))


def post_approval_check(
    github: GitHubApp, installation_id: int, repo: str, head_sha: str, *, waiting: bool, text: str
) -> None:
    """The `labgate` check: action_required while an untrusted head waits, success once approved."""
    body: dict[str, Any] = {
        "name": APPROVAL_CHECK,
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": "action_required" if waiting else "success",
        "completed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "output": {"title": "waiting for approval" if waiting else "approved", "summary": text[:65000]},
    }
    github.create_check(installation_id, repo, body)
