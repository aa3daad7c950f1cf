"""Check runs on GitHub, one per job: queued -> in_progress -> completed, never backwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.core.render import JobView, outcome_word, render_counts, render_job_markdown
from bot.core.triage import compare_results, render_comparison
from bot.forges.github.client import GitHubApp
from bot.links import job_page_url
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


@dataclass(frozen=True)
class CheckWrite:
    """What one job's check run should say, read from the store before any HTTP call."""

    job_id: int
    pipeline_id: int
    name: str
    state: CheckState
    details_url: str
    check_id: int | None  # None: not created on GitHub yet (as far as the store knows)
    claimed: bool  # a forge_check row exists: an earlier sync may have sent the create


@dataclass(frozen=True)
class Target:
    installation: int
    repo: str
    head_sha: str


def sync_checks(runtime: Runtime, github: GitHubApp, pipeline_id: int) -> int:
    """Bring every job's check run up to date; returns how many requests were made.

    No transaction spans an HTTP call: the desired states are read first, then each check run is
    written and its new id and rank are committed at once, on their own. A sync that fails half-way
    (GitHub down, the worker killed) leaves every check it did write recorded, and the retry
    continues from there. A create whose answer was lost is found on GitHub before it is re-sent."""
    target, writes = _plan(runtime, pipeline_id)
    if target is None:
        return 0
    return sum(_write(runtime, github, target, write) for write in writes)


def _plan(runtime: Runtime, pipeline_id: int) -> tuple[Target | None, list[CheckWrite]]:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None or not pipeline.revision.change.forge_repo:
            return None, []
        change = pipeline.revision.change
        head_sha = pipeline.revision.head_sha
        repo, installation = change.forge_repo, change.installation_id
        if installation is None or not head_sha or not repo:
            return None, []
        earlier = _earlier_failures(session, pipeline)
        compared = _post_merge_comparison(session, pipeline)
        writes = []
        for job in pipeline.jobs:
            if job.reused_from_id is not None:
                continue  # its check from the earlier run still says it passed
            view = job_view(runtime, job)
            state = desired_state(job, view, earlier.get((job.kind, job.name), ""))
            if compared and state.status == "completed" and job.kind == "test":
                state = replace(state, summary=(compared + "\n\n" + state.summary)[:65000])
            check = session.scalar(select(ForgeCheck).where(ForgeCheck.job_id == job.id))
            if check is not None and state.rank <= check.sent_rank:
                continue  # an older state never overwrites a newer one
            writes.append(CheckWrite(
                job_id=job.id, pipeline_id=pipeline.id, name=check.name if check else check_name(view), state=state,
                details_url=job_page_url(runtime, job),  # signed when the tree is private
                check_id=check.check_id if check else None, claimed=check is not None,
            ))  # fmt: skip
        return Target(installation, repo, head_sha), writes


def _write(runtime: Runtime, github: GitHubApp, target: Target, write: CheckWrite) -> int:
    """One job's check run brought to `write.state`; how many requests that took."""
    body = _body(write.state, write.details_url)
    annotations = list(write.state.annotations)
    body["output"]["annotations"] = annotations[:MAX_ANNOTATIONS_PER_REQUEST]
    requests = 1
    check_id = write.check_id
    if check_id is None:
        fresh = _claim(runtime, target, write)
        if not fresh:
            requests += 1
            check_id = github.find_check(target.installation, target.repo, target.head_sha, write.name,
                                         str(write.job_id))  # fmt: skip
    if check_id is None:
        check_id = github.create_check(target.installation, target.repo,
                                       {"name": write.name, "head_sha": target.head_sha,
                                        "external_id": str(write.job_id), **body})  # fmt: skip
        _store(runtime, write.job_id, check_id=check_id)
    else:
        github.update_check(target.installation, target.repo, check_id, body)
    for start in range(MAX_ANNOTATIONS_PER_REQUEST, len(annotations), MAX_ANNOTATIONS_PER_REQUEST):
        batch = annotations[start : start + MAX_ANNOTATIONS_PER_REQUEST]
        github.update_check(target.installation, target.repo, check_id,
                            {"output": {**body["output"], "annotations": batch}})  # fmt: skip
        requests += 1
    _store(runtime, write.job_id, check_id=check_id, rank=write.state.rank)
    return requests


def _claim(runtime: Runtime, target: Target, write: CheckWrite) -> bool:
    """The job's forge_check row, made (and committed) before its check run is created; False when
    it was there already: an earlier attempt may have reached GitHub, so look before creating."""
    if write.claimed:
        return False
    try:
        with runtime.store.session() as session:
            session.add(ForgeCheck(job_id=write.job_id, pipeline_id=write.pipeline_id, forge="github", repo=target.repo,
                                   head_sha=target.head_sha, name=write.name, sent_rank=0))  # fmt: skip
    except IntegrityError:
        return False  # another sync of this pipeline claimed it meanwhile
    return True


def _store(runtime: Runtime, job_id: int, *, check_id: int, rank: int | None = None) -> None:
    """Record what GitHub now shows, in its own short transaction; the rank only ever rises."""
    with runtime.store.session() as session:
        check = session.scalar(select(ForgeCheck).where(ForgeCheck.job_id == job_id).with_for_update())
        if check is None:
            return
        check.check_id = check_id
        if rank is not None and rank > check.sent_rank:
            check.sent_rank = rank


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
