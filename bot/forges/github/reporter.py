"""Check runs on GitHub, one per job: queued -> in_progress -> completed, never backwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bot.core.render import JobView, outcome_word, render_counts, render_job_markdown
from bot.core.triage import compare_results, render_comparison
from bot.forges.github.client import GitHubApp
from bot.runtime import Runtime
from bot.store.models import ForgeCheck, Job, Pipeline, Revision
from bot.views import job_view

log = logging.getLogger(__name__)
RANK = {"queued": 1, "in_progress": 2, "completed": 3}
MAX_ANNOTATIONS_PER_REQUEST = 50
APPROVAL_CHECK = "labgate"


@dataclass(frozen=True)
class CheckState:
    status: str
    conclusion: str | None
    title: str
    summary: str
    annotations: tuple[dict[str, Any], ...] = ()

    @property
    def rank(self) -> int:
        return RANK[self.status]


def check_name(job: JobView) -> str:
    if job.kind == "checkout":
        return "labgate / checkout"
    if job.kind == "build":
        return f"labgate / build {job.name}"
    return f"labgate / {job.name}"


def conclusion_for(job: JobView) -> str:
    """GitHub's conclusion; our infrastructure's failures never blame the change."""
    if job.error_code == "cancelled":
        return "cancelled"
    if job.error_code == "timeout":
        return "timed_out"
    if job.error_code in ("infra-error", "worker-lost"):
        return "neutral"
    return {"pass": "success", "skip": "neutral", "fail": "failure", "incomplete": "failure"}.get(
        job.result or "", "failure"
    )


def annotations_for(job: Job) -> tuple[dict[str, Any], ...]:
    """Compiler warnings and errors on lines the change wrote (GitHub shows them inline)."""
    diagnostics = job.outputs.get("diagnostics") or []
    checkout = job.pipeline.jobs[0] if job.pipeline.jobs else None
    changed = (checkout.outputs.get("changed_lines") or {}) if checkout is not None else {}
    found = []
    for item in diagnostics:
        ranges = changed.get(item.get("file"), [])
        if not any(first <= item["line"] <= last for first, last in ranges):
            continue
        found.append(
            {
                "path": item["file"],
                "start_line": item["line"],
                "end_line": item["line"],
                "annotation_level": "failure" if item["level"] == "error" else "warning",
                "message": str(item["text"])[:4000],
                "title": f"compiler {item['level']}",
            }
        )
    return tuple(found)


def desired_state(job: Job, view: JobView, earlier_failure: str = "") -> CheckState:
    if view.state in ("pending", "queued"):
        return CheckState("queued", None, "queued", "Waiting for a worker.")
    if view.state == "running":
        return CheckState("in_progress", None, "running", f"Attempt {max(1, view.attempts)} is running.")
    word = outcome_word(view)
    counts = render_counts(view.test_counts)
    first = view.failed_tests[0].path if view.failed_tests else None
    title = f"{word}: {first}" if first else word + (f" ({counts})" if counts else "")
    tests = tuple((t.path, t.status + (f" # {t.directive}" if t.directive else "")) for t in job.tests)
    summary = render_job_markdown(view, tests=tests, earlier_failure=earlier_failure)
    return CheckState("completed", conclusion_for(view), title[:250], summary[:65000], annotations_for(job))


def _body(state: CheckState, details_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": state.status, "output": {"title": state.title, "summary": state.summary}}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if state.status == "in_progress":
        body["started_at"] = now
    if state.conclusion:
        body["conclusion"] = state.conclusion
        body["completed_at"] = now
    if details_url:
        body["details_url"] = details_url
    return body


def sync_checks(runtime: Runtime, github: GitHubApp, pipeline_id: int) -> int:
    """Bring every job's check run up to date; returns how many requests were made."""
    requests = 0
    public = (runtime.config.web.public_url or f"http://{runtime.config.web.host}:{runtime.config.web.port}").rstrip(
        "/"
    )
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None or not pipeline.revision.change.forge_repo:
            return 0
        change = pipeline.revision.change
        head_sha = pipeline.revision.head_sha
        repo, installation = change.forge_repo, change.installation_id
        if installation is None or not head_sha or not repo:
            return 0
        earlier = _earlier_failures(session, pipeline)
        compared = _post_merge_comparison(session, pipeline)
        for job in pipeline.jobs:
            if job.reused_from_id is not None:
                continue  # its check from the earlier run still says it passed
            view = job_view(runtime, job)
            state = desired_state(job, view, earlier.get((job.kind, job.name), ""))
            if compared and state.status == "completed" and job.kind == "test":
                state = replace(state, summary=(compared + "\n\n" + state.summary)[:65000])
            check = session.scalar(select(ForgeCheck).where(ForgeCheck.job_id == job.id))
            if check is None:
                check = ForgeCheck(
                    job_id=job.id,
                    pipeline_id=pipeline.id,
                    forge="github",
                    repo=repo,
                    head_sha=head_sha,
                    name=check_name(view),
                    sent_rank=0,
                )
                session.add(check)
            if state.rank <= check.sent_rank:
                continue  # an older state never overwrites a newer one
            body = _body(state, f"{public}/jobs/{job.id}")
            annotations = list(state.annotations)
            body["output"]["annotations"] = annotations[:MAX_ANNOTATIONS_PER_REQUEST]
            if check.check_id is None:
                check.check_id = github.create_check(
                    installation, repo, {"name": check.name, "head_sha": head_sha, "external_id": str(job.id), **body}
                )
            else:
                github.update_check(installation, repo, check.check_id, body)
            requests += 1
            for start in range(MAX_ANNOTATIONS_PER_REQUEST, len(annotations), MAX_ANNOTATIONS_PER_REQUEST):
                batch = annotations[start : start + MAX_ANNOTATIONS_PER_REQUEST]
                github.update_check(
                    installation, repo, check.check_id, {"output": {**body["output"], "annotations": batch}}
                )
                requests += 1
            check.sent_rank = state.rank
            session.flush()
    return requests


def _test_statuses(pipeline: Pipeline) -> dict[str, str]:
    return {f"{job.name}/{t.path}": t.status for job in pipeline.jobs if job.kind == "test" for t in job.tests}


def _post_merge_comparison(session: Any, pipeline: Pipeline) -> str:
    """For a push to a staging branch: this head's results against the previous head's."""
    if pipeline.kind != "post-merge" or pipeline.state != "done":
        return ""
    previous = session.scalar(
        select(Pipeline)
        .join(Revision)
        .where(
            Revision.change_id == pipeline.revision.change_id,
            Pipeline.id < pipeline.id,
            Pipeline.state == "done",
            Pipeline.result != "cancelled",
        )
        .order_by(Pipeline.id.desc())
    )
    if previous is None:
        return "First run on this branch: nothing to compare with."
    label = f"`{(previous.revision.head_sha or '')[:12]}` (pipeline {previous.id})"
    return render_comparison(compare_results(_test_statuses(pipeline), _test_statuses(previous)), label)


def _earlier_failures(session: Any, pipeline: Pipeline) -> dict[tuple[str, str], str]:
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
