"""Results on GitLab: one commit status per job on the head (bot/reporting's sync loop decides what and
when), one note per merge request with the latest pipeline's summary, edited in place, and for a staging
push one commit comment once its pipeline is done.

Statuses go to the tree's (target) project, where labgate's user has a role, under the merge request's
ref (refs/merge-requests/IID/head): a fork's head is on no branch of the target project, and the fork
itself is the contributor's, where labgate may write nothing (README: "GitLab").

Everything labgate writes in a note is made inert first (`inert`): a test's name or a log line is the
change's text, and in a note GitLab would run a line starting with `/` as a quick action (/merge,
/approve) under labgate's user, and an @mention would notify whoever it names."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.desk import SOURCE, merge_request_ref
from bot.host.stores import Runtime
from bot.reporting.job_reports import post_merge_comparison
from bot.reporting.sinks import JobReport, PipelineSummary
from bot.reporting.summary import pipeline_summary, summary_markdown
from bot.reporting.sync import ReportTarget, report_target, sync_job_reports
from bot.store.models import Pipeline, Revision
from bot.store.once import forget_once, once_done, record_once, update_once

PUSH_SOURCE = f"{SOURCE}-push"
MAX_FIELD = 255  # GitLab's limit on a status' description and target_url
_DONE = {"pass": "success", "fail": "failed", "timed-out": "failed", "cancelled": "canceled",
         "neutral": "canceled", "warning": "canceled"}  # fmt: skip
_QUICK_ACTION = re.compile(r"^(\s*)/", re.MULTILINE)
_ZWSP = "\u200b"


def inert(markdown: str) -> str:
    """The text with no line GitLab reads as a quick action and no @mention that notifies anyone; it
    reads the same (a zero-width space before the `/` and after the `@`)."""
    return _QUICK_ACTION.sub(lambda m: f"{m.group(1)}{_ZWSP}/", markdown).replace("@", "@" + _ZWSP)


def status_state(report: JobReport) -> str:
    """GitLab's state for a report. GitLab has no neutral: a job our infrastructure failed, or that did
    not apply, is `canceled` (not a pass, not the change's failure), and its description says why."""
    if report.stage == "queued":
        return "pending"
    if report.stage == "running":
        return "running"
    return _DONE.get(report.verdict, "failed")


def status_description(report: JobReport) -> str:
    prefix = "not tested: " if report.stage == "done" and report.verdict in ("neutral", "warning") else ""
    text = prefix + report.title
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 1] + "…"


class CommitStatusSink:
    """One commit status per job, named as on GitHub (bot/reporting/sinks.py's JobStatusSink). GitLab
    updates a status by posting its name again; the id is only what GitLab answered."""

    forge = SOURCE

    def __init__(self, client: GitLabClient, project_id: int, head_sha: str, ref: str | None) -> None:
        self.client, self.project_id, self.head_sha, self.ref = client, project_id, head_sha, ref

    def create(self, report: JobReport) -> int:
        return self._post(report)

    def update(self, status_id: int, report: JobReport) -> None:
        self._post(report)

    def find(self, report: JobReport) -> int | None:
        found = [s for s in self.client.statuses(self.project_id, self.head_sha, name=report.label)
                 if self.ref is None or s.get("ref") == self.ref]  # fmt: skip
        return int(found[0]["id"]) if found else None

    def _post(self, report: JobReport) -> int:
        # A signed page link (a private tree's) may be longer than GitLab keeps: the note carries it then.
        url = report.details_url if len(report.details_url) <= MAX_FIELD else None
        return self.client.set_status(self.project_id, self.head_sha, state=status_state(report), name=report.label,
                                      target_url=url, description=status_description(report),
                                      ref=self.ref)  # fmt: skip


def status_sink(client: GitLabClient, target: ReportTarget) -> CommitStatusSink | None:
    if target.source not in (SOURCE, PUSH_SOURCE) or target.installation is None or not target.head_sha:
        return None
    ref = merge_request_ref(target.number) if target.source == SOURCE and target.number is not None else None
    return CommitStatusSink(client, target.installation, target.head_sha, ref)


class MergeRequestNoteSink:
    """The merge request's one labgate note (bot/reporting/sinks.py's PipelineSummarySink), edited in
    place as pipelines move; its id is kept in the store (bot/store/once.py), and an edit that would
    change nothing is not sent."""

    forge = SOURCE
    edits_in_place = True

    def __init__(self, runtime: Runtime, client: GitLabClient, project_id: int, iid: int) -> None:
        self.runtime, self.client, self.project_id, self.iid = runtime, client, project_id, iid
        self.key = f"gitlab:note:{project_id}!{iid}"

    def publish(self, summary: PipelineSummary) -> None:
        body = inert(summary_markdown(summary))
        digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        with self.runtime.store.session() as session:
            recorded = once_done(session, self.key)
        if recorded is None:
            try:
                with self.runtime.store.session() as session:
                    record_once(session, self.key)  # claimed before the create: one note per merge request
            except IntegrityError:
                return  # another report of this merge request is making the note; the next one edits it
            recorded = ""
        note_id, _, sent = recorded.partition(" ")
        if sent == digest:
            return
        if note_id:
            self.client.edit_note(self.project_id, self.iid, int(note_id), body)
        else:
            # A claim without an id: the first create, or one whose answer was lost (then a second note).
            note_id = str(self.client.create_note(self.project_id, self.iid, body))
        with self.runtime.store.session() as session:
            update_once(session, self.key, f"{note_id} {digest}")


def is_latest_pipeline(runtime: Runtime, pipeline_id: int) -> bool:
    """Whether no later pipeline of the same change exists (a superseded one must not overwrite the note)."""
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return False
        latest = session.scalar(select(func.max(Pipeline.id)).join(Revision)
                                .where(Revision.change_id == pipeline.revision.change_id))  # fmt: skip
        return latest == pipeline_id


def report_to_gitlab(runtime: Runtime, client: GitLabClient, pipeline_id: int) -> list[str]:
    """Bring GitLab's view of a pipeline up to date: statuses, then the note or (a push, once done) the
    commit comment. Idempotent: repeats send nothing new."""
    target = report_target(runtime, pipeline_id)
    if target is None or target.source not in (SOURCE, PUSH_SOURCE) or target.installation is None:
        return ["not a GitLab pipeline"]
    requests = sync_job_reports(runtime, pipeline_id, lambda found: status_sink(client, found))
    done = [f"{requests} status requests"]
    tree = runtime.config.tree(target.tree)
    reproduce = f"labgate try {tree.url if tree else target.repo} --ref {target.head_sha}"
    if target.source == SOURCE and target.number is not None:
        if not is_latest_pipeline(runtime, pipeline_id):
            return [*done, "superseded: the note shows a later pipeline"]
        summary = pipeline_summary(runtime, pipeline_id, reproduce=reproduce)
        if summary is not None:
            MergeRequestNoteSink(runtime, client, target.installation, target.number).publish(summary)
            done.append("note up to date")
        return done
    return [*done, _comment_push(runtime, client, target, reproduce)]


def _comment_push(runtime: Runtime, client: GitLabClient, target: ReportTarget, reproduce: str) -> str:
    """A staging push's summary as one comment on its head once done, new failures first."""
    assert target.installation is not None
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, target.pipeline_id)
        if pipeline is None or pipeline.state != "done" or pipeline.result == "cancelled":
            return "not done yet, or cancelled: no comment"
        compared = post_merge_comparison(session, pipeline)
    key = f"gitlab:push-comment:{target.pipeline_id}"
    summary = pipeline_summary(runtime, target.pipeline_id, reproduce=reproduce)
    if summary is None:
        return "no summary"
    try:
        with runtime.store.session() as session:
            record_once(session, key)  # claimed before the comment, in its own transaction: sent once
    except IntegrityError:
        return "commented (once)"
    body = summary_markdown(summary, lead=compared)
    try:
        client.commit_comment(target.installation, target.head_sha, inert(body))
    except BaseException:
        with runtime.store.session() as session:
            forget_once(session, key)  # not sent: the retry sends it
        raise
    return "commented"
