"""SQLAlchemy models: tree, change, revision, pipeline, job, test result, delivery, triage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Tree(Base):
    __tablename__ = "tree"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(Text)
    changes: Mapped[list[Change]] = relationship(back_populates="tree")


class Change(Base):
    """A PR, an MR, a Patchwork series, a pushed branch, or a `labgate try`."""

    __tablename__ = "change"
    __table_args__ = (UniqueConstraint("tree_id", "source", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tree_id: Mapped[int] = mapped_column(ForeignKey("tree.id"))
    source: Mapped[str] = mapped_column(String(40))  # "try", "github", ...
    external_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text, default="")
    submitter: Mapped[str] = mapped_column(String(200), default="")
    # Forge changes: where to report, and whether the author's own plan may be used.
    forge_repo: Mapped[str | None] = mapped_column(String(200))
    number: Mapped[int | None]
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    author_trusted: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(20), default="open")  # open, closed
    # The newest head a forge event told us of, and when we heard: a bare /ok-to-test written
    # before that moment cannot have been about this head.
    head_sha: Mapped[str | None] = mapped_column(String(64))
    head_seen_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    tree: Mapped[Tree] = relationship(back_populates="changes")
    approvals: Mapped[list[Approval]] = relationship(back_populates="change", order_by="Approval.id")
    revisions: Mapped[list[Revision]] = relationship(back_populates="change")


class Revision(Base):
    """One version of a change: patches on a base, or a ref."""

    __tablename__ = "revision"
    id: Mapped[int] = mapped_column(primary_key=True)
    change_id: Mapped[int] = mapped_column(ForeignKey("change.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    base_ref: Mapped[str] = mapped_column(String(250))
    ref: Mapped[str | None] = mapped_column(String(250))
    patches: Mapped[list[Any]] = mapped_column(default=list)  # [{"name", "digest"}]
    base_sha: Mapped[str | None] = mapped_column(String(64))
    head_sha: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    change: Mapped[Change] = relationship(back_populates="revisions")
    pipelines: Mapped[list[Pipeline]] = relationship(back_populates="revision")


class Pipeline(Base):
    """Everything run for one revision."""

    __tablename__ = "pipeline"
    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revision.id"))
    state: Mapped[str] = mapped_column(String(20), default="queued")  # queued running done
    result: Mapped[str | None] = mapped_column(String(20))  # pass fail skip incomplete error
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(20), default="pre-merge")  # pre-merge, post-merge
    tier: Mapped[str] = mapped_column(String(20), default="hardware")  # qemu: QEMU device classes only
    rerun_of_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline.id"))
    requested_by: Mapped[str] = mapped_column(String(200), default="")  # who asked for a re-run (forge user, operator)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)  # said in reports: tests not selected, ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    revision: Mapped[Revision] = relationship(back_populates="pipelines")
    jobs: Mapped[list[Job]] = relationship(back_populates="pipeline", order_by="Job.id")


class Job(Base):
    """One unit of work on one queue."""

    __tablename__ = "job"
    __table_args__ = (UniqueConstraint("pipeline_id", "kind", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipeline.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # checkout build test
    name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    depends_on_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    result: Mapped[str | None] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(100))  # to revoke it when superseded
    # sha256 of the secret in the job's spec: a result must carry the secret to be recorded.
    result_token_hash: Mapped[str | None] = mapped_column(String(64))
    # A re-run kept this result, or a base build took another pipeline's build of its key (base_builds.py).
    reused_from_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    # A build's identity (bot/pipelines/base_builds.py): equal keys build the same tree, commit and recipe,
    # so a base build of one key runs once and every pipeline that needs it shares it. On a test job, a base
    # run's identity (bot/pipelines/triage_runs.py): shared the same way by every change on that base.
    build_key: Mapped[str | None] = mapped_column(String(64), index=True)
    # A base build (or base run) waiting for another pipeline's job of the same key to finish, to take its result.
    follows_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), index=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log_digest: Mapped[str | None] = mapped_column(String(64))
    command_s: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Test jobs wait in the store (state `waiting`) until their device class's window has room
    # (bot/pipelines/scheduler.py): highest priority first, then the lowest fair sequence, then the oldest.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    fair_key: Mapped[str] = mapped_column(String(420), default="")  # tree and submitter: who shares fairly
    fair_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # start-time fair queueing's virtual start
    quota_key: Mapped[str | None] = mapped_column(String(250))  # a submitter under quotas (approved, CI jobs)
    pipeline: Mapped[Pipeline] = relationship(back_populates="jobs")
    tests: Mapped[list[TestResult]] = relationship(back_populates="job", order_by="TestResult.id")


# The scheduler's pick (the next waiting jobs of one queue) and in-flight count are one index range each.
Index("ix_job_pick", Job.queue, Job.state, Job.priority.desc(), Job.fair_seq, Job.id)
Index("ix_job_fair", Job.queue, Job.fair_key, Job.fair_seq)
Index("ix_job_quota", Job.quota_key, Job.state)


class QueueWindow(Base):
    """One device class's queue as the scheduler keeps it: the row its fillers lock, the class's virtual
    time (the fair sequence last dispatched), whether it is offline and why."""

    __tablename__ = "queue_window"
    queue: Mapped[str] = mapped_column(String(100), primary_key=True)
    capacity: Mapped[int] = mapped_column(Integer, default=1)  # as configured at the last fill
    virtual_time: Mapped[int] = mapped_column(BigInteger, default=0)
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    offline_reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TestResult(Base):
    """One leaf test of a test job's KTAP output."""

    __tablename__ = "test_result"
    __test__ = False  # not a pytest class
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    path: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20))
    directive: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    diagnostics: Mapped[str] = mapped_column(Text, default="")
    caveat: Mapped[str] = mapped_column(Text, default="")  # "ran as root: not forge-proof"
    job: Mapped[Job] = relationship(back_populates="tests")


class Approval(Base):
    """A maintainer's /ok-to-test, bound to exactly one head SHA."""

    __tablename__ = "approval"
    id: Mapped[int] = mapped_column(primary_key=True)
    change_id: Mapped[int] = mapped_column(ForeignKey("change.id"), index=True)
    sha: Mapped[str] = mapped_column(String(64))
    approver: Mapped[str] = mapped_column(String(200))
    hardware: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    change: Mapped[Change] = relationship(back_populates="approvals")


class ForgeCheck(Base):
    """A check run (or status) labgate keeps on a forge for one job, and the last state it sent."""

    __tablename__ = "forge_check"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), unique=True)
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline.id"), index=True)
    forge: Mapped[str] = mapped_column(String(40))
    repo: Mapped[str] = mapped_column(String(200))
    head_sha: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(250))
    check_id: Mapped[int | None] = mapped_column(BigInteger)
    # Monotonic rank of the state sent (queued < in_progress < completed): an older
    # report arriving late never overwrites a newer one.
    sent_rank: Mapped[int] = mapped_column(Integer, default=0)


class Delivery(Base):
    """A forge webhook delivery or a submission, stored before anything is enqueued."""

    __tablename__ = "delivery"
    # A replay under a new delivery id has the same body: unique per source while the digest is kept.
    __table_args__ = (
        UniqueConstraint("source", "delivery_id"),
        UniqueConstraint("source", "body_digest", name="uq_delivery_source_body_digest"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(40))
    delivery_id: Mapped[str] = mapped_column(String(200))
    event: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(20), default="accepted")
    detail: Mapped[str] = mapped_column(Text, default="")
    body_digest: Mapped[str | None] = mapped_column(String(64), default=None)  # sha256 hex of the raw body


class PatchworkCursor(Base):
    """How far the Patchwork poller has read one project's events of one category: the newest event
    date seen, in the server's naive local time (the poller asks from it minus an overlap)."""

    __tablename__ = "patchwork_cursor"
    __table_args__ = (UniqueConstraint("server", "project", "category"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(500))  # the Patchwork URL
    project: Mapped[str] = mapped_column(String(200))  # its link name
    category: Mapped[str] = mapped_column(String(40))
    since: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PatchworkSeenEvent(Base):
    """A Patchwork event handled (or skipped, with why): recorded with the handler's own records, so an
    event is handed over once whatever the overlap repeats."""

    __tablename__ = "patchwork_seen_event"
    __table_args__ = (UniqueConstraint("server", "event_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(500))
    event_id: Mapped[int] = mapped_column(BigInteger)
    project: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(40))
    event_date: Mapped[str] = mapped_column(String(40))  # naive server time, as listed
    outcome: Mapped[str] = mapped_column(Text, default="handled")  # handled, or "skipped: why"
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class CiSubmission(Base):
    """A change a CI job handed over with its OIDC id-token (POST /api/v1/submissions): who it is, what to
    test, and the pipeline the control task made of it. One per (issuer, jti): a token sent again is the
    same submission, whatever the race."""

    __tablename__ = "ci_submission"
    __table_args__ = (UniqueConstraint("issuer", "jti"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500))
    jti: Mapped[str] = mapped_column(String(200))
    identity: Mapped[str] = mapped_column(Text)  # the matching rule's words, for people
    tree: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(20))  # qemu, hardware: what the rule grants
    base_branch: Mapped[str] = mapped_column(String(250))
    # What to test: {"sha"} or {"ref", "sha"} (the token's commit) or {"patches": [{"name", "mbox"}]}, and "title".
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    claims: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the token's claims people recognise
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline.id"))  # None until the control task ran
    error: Mapped[str | None] = mapped_column(Text)  # why no pipeline could be made of it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]  # the token's exp: after it, the jti can no longer come back


class CiSubmissionReader(Base):
    """A read token of one submission, kept as its sha256: one per answer that handed one out (the first
    and each replay of the id-token, whose answer may be the only one that reached the CI job)."""

    __tablename__ = "ci_submission_reader"
    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("ci_submission.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobAttempt(Base):
    """An earlier attempt of a test job that ended `incomplete` and was run again (bot/pipelines/retries.py):
    where it ran and why it failed, kept for the job page and `labgate lab status`."""

    __tablename__ = "job_attempt"
    __table_args__ = (UniqueConstraint("job_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1 for the first attempt
    place: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[str | None] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    log_digest: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PlaceHealth(Base):
    """One place of one device class as labgate's results see it (bot/pipelines/place_health.py): its run
    of consecutive infrastructure failures, whether labgate took it offline and why, and its health checks."""

    __tablename__ = "place_health"
    __table_args__ = (UniqueConstraint("device_class", "place"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_class: Mapped[str] = mapped_column(String(100))
    place: Mapped[str] = mapped_column(String(200))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_fault: Mapped[str] = mapped_column(Text, default="")  # "power-driver-error: ..." (job N)
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    offline_reason: Mapped[str] = mapped_column(Text, default="")
    check_job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))  # the newest health check queued
    last_check_result: Mapped[str | None] = mapped_column(String(20))  # passed, failed
    last_check_at: Mapped[datetime | None]
    recheck_at: Mapped[datetime | None]  # offline after a failed check: the next one is queued then
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ResultHistory(Base):
    """One test's result at one commit of a base branch, on one device class and build config: the baseline a
    change's failures are judged against (bot/core/triage.py). Fed by staging-branch pipelines, by base runs a
    change's failure asked for, and by their re-runs; every run stays, so a first failure is never hidden."""

    __tablename__ = "result_history"
    id: Mapped[int] = mapped_column(primary_key=True)
    tree: Mapped[str] = mapped_column(String(200))
    branch: Mapped[str] = mapped_column(String(250))
    commit: Mapped[str] = mapped_column(String(64))
    test_path: Mapped[str] = mapped_column(String(500))  # "<test job name>/<test path>", as compare_results keys it
    device_class: Mapped[str] = mapped_column(String(100))
    config: Mapped[str] = mapped_column(String(200))  # the build the test ran on (its plan name, e.g. x86_64)
    status: Mapped[str] = mapped_column(String(20))  # pass fail skip incomplete
    source: Mapped[str] = mapped_column(String(20))  # staging, base-run, rerun, bisect
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"sched.wakeup_ns": 1234.0} from `# metric:`
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_result_history_key", ResultHistory.tree, ResultHistory.test_path, ResultHistory.device_class,
      ResultHistory.config, ResultHistory.commit)  # fmt: skip


class TestVerdict(Base):
    """Triage's word on one test of a change's pipeline (bot/core/triage.py), with its evidence: only `new`
    fails the check. Written by the control plane once a test job's re-runs and base runs have ended."""

    __tablename__ = "test_verdict"
    __table_args__ = (UniqueConstraint("job_id", "test_path"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipeline.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)  # the change's own test job
    test_path: Mapped[str] = mapped_column(String(500))  # as ResultHistory.test_path
    device_class: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(20))  # new pre-existing fixed flaky known-issue pass regression
    evidence: Mapped[str] = mapped_column(Text, default="")  # "failed 4/4 with the change, 0/4 on base"
    change_runs: Mapped[int] = mapped_column(Integer, default=0)
    change_fails: Mapped[int] = mapped_column(Integer, default=0)
    base_runs: Mapped[int] = mapped_column(Integer, default=0)
    base_fails: Mapped[int] = mapped_column(Integer, default=0)
    p_value: Mapped[float | None]
    known_issue: Mapped[str | None] = mapped_column(String(100))  # KnownIssue.issue_id that matched
    crash_title: Mapped[str] = mapped_column(Text, default="")
    cut_short: Mapped[str] = mapped_column(Text, default="")  # why re-runs stopped early (a cap), if they did
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KnownIssue(Base):
    """A known issue written by `labgate known-issue add` (config entries are read-only and never stored):
    failures it matches are reported as it and do not fail the check, until it expires."""

    __tablename__ = "known_issue"
    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[str] = mapped_column(String(100), unique=True)
    link: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    scope: Mapped[dict[str, Any]] = mapped_column(default=dict)  # tree, branch, arch, device_class, config
    test_glob: Mapped[str] = mapped_column(String(500), default="")
    log_regex: Mapped[str] = mapped_column(Text, default="")
    crash_title: Mapped[str] = mapped_column(Text, default="")
    expires_on: Mapped[datetime]
    expired_at: Mapped[datetime | None]  # `labgate known-issue expire`: ended early
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Bisection(Base):
    """A staging push's new failure bisected between the previous head (good) and the new head (bad) with
    labgate jobs (bot/pipelines/bisection.py): its steps, and the first bad commit with its confidence."""

    __tablename__ = "bisection"
    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipeline.id"), index=True)  # the push that failed
    tree: Mapped[str] = mapped_column(String(200))
    branch: Mapped[str] = mapped_column(String(250))
    test_path: Mapped[str] = mapped_column(String(500))
    device_class: Mapped[str] = mapped_column(String(100))
    good_sha: Mapped[str] = mapped_column(String(64))
    bad_sha: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="running")  # running done failed
    steps: Mapped[list[Any]] = mapped_column(default=list)  # [{"sha", "runs", "fails", "verdict", "job_ids"}]
    culprit_sha: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")  # why it stopped, when it did not find one
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
