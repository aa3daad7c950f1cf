"""CI submissions (OIDC): a stored submission made into a pipeline, and its status read back (no HTTP).

bot/web/submissions.py proves who sent it and stores it; the control task (bot/submission_tasks.py)
calls make_pipeline; GET /api/v1/submissions/{id} reads submission_status."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.links import operator_token_matches
from bot.host.stores import Runtime
from bot.pipelines.lifecycle import Submission, submit
from bot.reporting.page_links import pipeline_page_url
from bot.reporting.sinks import Verdict
from bot.reporting.summary import pipeline_summary
from bot.store.models import CiSubmission, CiSubmissionReader, Job, Pipeline
from bot.store.once import OnceKeys
from workers.errors import UserError

SUBMISSION_TASK = "bot.ci_submission"
SOURCE = "ci"  # Change.source of every CI submission's change
# Claims a person recognises a submission by (GitHub's, then GitLab's); the rest stays out of the store.
USEFUL_CLAIMS = ("repository", "repository_id", "project_path", "project_id", "ref", "ref_path", "sha", "run_id",
                 "run_attempt", "pipeline_id", "job_id", "event_name", "pipeline_source", "actor", "user_login",
                 "workflow_ref", "job_workflow_ref")  # fmt: skip
MAX_CLAIM_CHARS = 500
MAX_EXTERNAL_ID = 200  # Change.external_id's column
# A submission's verdict in the API's words, from the pipeline summary's: a pipeline where everything was
# skipped passes, as `labgate try` exits 0 for it (bot/core/progress.py exit_code_for).
API_VERDICT: dict[Verdict, str] = {"pass": "pass", "neutral": "pass", "fail": "fail", "cancelled": "cancelled",
                                   "warning": "error", "timed-out": "error"}  # fmt: skip


def useful_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """The claims kept with a submission, as text, each capped."""
    return {name: str(claims[name])[:MAX_CLAIM_CHARS] for name in USEFUL_CLAIMS if claims.get(name) is not None}


def token_ref(claims: Mapping[str, Any]) -> str | None:
    """The full ref the job runs on: GitLab's `ref_path` (its `ref` is the short name), else GitHub's `ref`."""
    ref = claims.get("ref_path") or claims.get("ref")
    return str(ref) if ref else None


def external_id_for(issuer: str, claims: Mapping[str, Any], jti: str) -> str:
    """The change a submission is a revision of: `ci:<issuer host>:<repository or project id>:<run id>`.

    By ids, as the policy matches (a name can be re-registered); one change per CI run (GitHub's run_id,
    GitLab's pipeline_id), so a re-run of the same run is the next revision of the same change, as a new
    push is of a pull request. Without those claims the token alone is the change."""
    host = urlsplit(issuer).netloc or issuer
    repository = claims.get("repository_id") or claims.get("project_id")
    run = claims.get("run_id") or claims.get("pipeline_id")
    text = f"ci:{host}:{repository}:{run}" if repository and run else f"ci:{host}:jti:{jti}"
    if len(text) <= MAX_EXTERNAL_ID:
        return text
    return f"ci:{hashlib.sha256(text.encode()).hexdigest()}"


def default_title(request: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """What a person reads for an untitled submission: the patches, or the repository's commit."""
    if request.get("patches"):
        return ", ".join(patch["name"] for patch in request["patches"])
    where = claims.get("repository") or claims.get("project_path") or "commit"
    sha = str(request.get("sha", ""))[:12]
    return f"{where} {request['ref']} at {sha}" if request.get("ref") else f"{where} {sha}"


def submission_of(runtime: Runtime, row: CiSubmission) -> Submission:
    """The pipeline layer's Submission for a stored CI submission (UserError if its tree went away)."""
    tree = runtime.config.tree(row.tree)
    if tree is None:
        raise UserError(f"tree {row.tree} is no longer configured")
    request = row.request
    sha = request.get("sha") if not request.get("patches") else None
    return Submission(
        tree_name=tree.name, tree_url=tree.url, source=SOURCE,
        external_id=external_id_for(row.issuer, row.claims, row.jti),
        # The branch as a full ref: a tag named like the branch must not stand in for it.
        base_ref=f"refs/heads/{row.base_branch}",
        # A ref is tested at the commit the token was issued for, never at what the ref points to later.
        ref=sha, head_sha=sha,
        patches=tuple((patch["name"], patch["mbox"].encode()) for patch in request.get("patches", ())),
        title=request.get("title") or default_title(request, row.claims), submitter=row.identity[:200],
        # A rule vouched for the job, but the plan still comes from the base: a submitter-chosen head
        # would choose the plan that judges it.
        plan_from="base", author_trusted=True, tier=row.tier,
    )  # fmt: skip


def make_pipeline(runtime: Runtime, submission_id: int) -> str:
    """Make the submission's pipeline, once: a task run again (a retry, a redelivered message, a duplicate
    enqueued by a replayed token) finds the pipeline the first run made (bot/store/once.py)."""
    with runtime.store.session() as session:
        row = session.get(CiSubmission, submission_id)
        if row is None:
            return f"submission {submission_id}: not in the store"
        if row.pipeline_id is not None or row.error is not None:
            return f"submission {submission_id}: already handled"
        submission = submission_of(runtime, row)
    once_key = OnceKeys(SOURCE, f"submission:{submission_id}").key("pipeline")
    pipeline_id = submit(runtime, submission, once_key=once_key)
    with runtime.store.session() as session:
        row = session.get(CiSubmission, submission_id)
        assert row is not None
        row.pipeline_id = pipeline_id
    return f"submission {submission_id}: pipeline {pipeline_id}"


def refuse_submission(runtime: Runtime, submission_id: int, why: str) -> None:
    """Record why no pipeline could be made of the submission; its status says so, done, with an error."""
    with runtime.store.session() as session:
        row = session.get(CiSubmission, submission_id)
        if row is not None and row.pipeline_id is None:
            row.error = why[:10000]


def opens_submission(runtime: Runtime, submission_id: int, token: str) -> bool:
    """Whether `token` is one of the submission's read tokens (looked up by its sha256, one row at most) or an
    operator token (digests compared in constant time). False for a submission that does not exist, so the
    two cannot be told apart."""
    if operator_token_matches(token, tuple(runtime.config.web.operator_token_sha256)):
        return True
    # The database compares digests: how long that takes could tell how much of a digest matched, and a
    # digest's prefix is nothing to guess a 256-bit read token by.
    digest = hashlib.sha256(token.encode()).hexdigest()
    with runtime.store.session() as session:
        found = session.scalar(select(CiSubmissionReader.id).where(CiSubmissionReader.submission_id == submission_id,
                                                                   CiSubmissionReader.token_sha256 == digest)
                               .limit(1))  # fmt: skip
    return found is not None


def _version(session: Session, row: CiSubmission) -> str:
    """What the answer depends on in the store, digested: it changes when the answer does (and not when only
    a signed link's issue time would), so a long poll wakes for news only."""
    state: list[Any] = [row.pipeline_id, row.error]
    if row.pipeline_id is not None:
        pipeline = session.get(Pipeline, row.pipeline_id)
        if pipeline is not None:
            state += [pipeline.state, pipeline.result, pipeline.error_code]
            state += session.execute(select(Job.id, Job.state, Job.result, Job.error_code, Job.attempts)
                                     .where(Job.pipeline_id == pipeline.id).order_by(Job.id)).all()  # fmt: skip
    return hashlib.sha256(orjson.dumps(state, default=list)).hexdigest()[:16]


def submission_version(runtime: Runtime, submission_id: int) -> str | None:
    """The answer's version now (a long poll's cheap look), or None for no such submission."""
    with runtime.store.session() as session:
        row = session.get(CiSubmission, submission_id)
        return _version(session, row) if row is not None else None


def submission_status(runtime: Runtime, submission_id: int) -> dict[str, Any] | None:
    """The submission's status as GET /api/v1/submissions/{id} answers it; None for no such submission.
    Jobs and verdicts are the pipeline summary's (bot/reporting/summary.py), never worked out again."""
    with runtime.store.session() as session:
        row = session.get(CiSubmission, submission_id)
        if row is None:
            return None
        version = _version(session, row)
        answer: dict[str, Any] = {
            "id": row.id, "version": version, "state": "queued", "verdict": None, "tree": row.tree,
            "identity": row.identity, "pipeline_id": row.pipeline_id, "page_url": None, "jobs": [],
            "summary": "labgate: queued (waiting for the control worker to make its pipeline)", "message": None,
        }  # fmt: skip
        if row.error is not None:
            return {**answer, "state": "done", "verdict": "error", "summary": f"labgate: not tested: {row.error}",
                    "message": row.error}  # fmt: skip
        pipeline = session.get(Pipeline, row.pipeline_id) if row.pipeline_id is not None else None
        if pipeline is None:
            return answer
        # The pipeline's own word ("0001-x.patch does not apply on ...", "no test ran: ..."), which the
        # headline leaves out: a CI job's log is often all its author reads.
        pipeline_id, state, message = pipeline.id, pipeline.state, pipeline.error_message
    summary = pipeline_summary(runtime, pipeline_id)
    if summary is None:  # pragma: no cover - pipelines are never deleted
        return answer
    jobs = [{"name": job.name, "kind": job.kind, "state": job.stage, "verdict": job.verdict, "title": job.title,
             "url": job.details_url} for job in summary.jobs]  # fmt: skip
    verdict = API_VERDICT.get(summary.verdict) if summary.done else None
    return {**answer, "state": "done" if summary.done else state, "verdict": verdict, "page_url": summary.url,
            "jobs": jobs, "summary": summary.headline, "message": message}  # fmt: skip


def page_url_of(runtime: Runtime, tree: str, pipeline_id: int | None) -> str | None:
    """The pipeline page of a submission that has one (signed when the tree is private)."""
    if pipeline_id is None:
        return None
    return pipeline_page_url(runtime.config, runtime.data_dir, pipeline_id, tree)
