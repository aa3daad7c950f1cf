"""Base builds shared between pipelines: a build of one (tree, commit, recipe) runs once.

Ten changes on one base need the base's build ten times (their warnings and binaries are compared with it),
but it is the same build: the first pipeline to need it runs it (the leader), the others wait for it
(followers, Job.follows_id) and take its result, and a pipeline that comes later takes a finished pass
as it is (Job.reused_from_id). A leader that does not pass (it failed, our side failed, its pipeline was
cancelled) hands the build to its first follower, which runs it itself; the others follow that one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.host.stores import Runtime
from bot.pipelines import lifecycle
from bot.pipelines.retention import claim_blobs
from bot.store.models import Job, Tree, utcnow

RUNNING = ("queued", "running")


def build_key(tree_name: str, spec: dict[str, object]) -> str:
    """What makes two builds the same build: the tree, the commit, the script, what it collects and the
    kernel recipe (warm key, arch, toolchain). Not its name, role or timeout."""
    identity = [tree_name, spec.get("head_sha"), spec.get("script"), spec.get("artifacts"), spec.get("kernel")]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def start(runtime: Runtime, session: Session, job: Job, outbox: lifecycle.Outbox) -> None:
    """A new base build (pending, its build_key set): take a finished pass of the same key, follow one
    that is queued or running, or else run it (dispatch)."""
    assert job.build_key is not None
    # Two checkouts on one tree drafting at once are serialised here: the second sees the first's leader
    # (PostgreSQL; SQLite writes one transaction at a time anyway).
    session.scalar(select(Tree.id).where(Tree.id == job.pipeline.revision.change.tree_id).with_for_update())
    session.flush()
    # Twice: a leader that finishes while we wait for its row lock is no longer one, and its pass is
    # then the finished build to take.
    for _ in range(2):
        passed = session.scalars(
            select(Job).where(Job.build_key == job.build_key, Job.id != job.id, Job.state == "done",
                              Job.result == "pass", Job.error_code.is_(None))
            .order_by(Job.finished_at.desc(), Job.id.desc()).limit(1)
        ).first()  # fmt: skip
        # A pass whose artifacts the retention policy pruned (or is pruning now) is not taken: built again.
        if passed is not None and claim_blobs(runtime, passed.outputs, passed.log_digest):
            take_result(job, passed)
            return
        # The leader's row lock: its result cannot be recorded between our look and our following it,
        # so the recording of its result sees every follower (after_result).
        leader = session.scalars(
            select(Job).where(Job.build_key == job.build_key, Job.id != job.id, Job.state.in_(RUNNING),
                              Job.follows_id.is_(None))
            .order_by(Job.id).limit(1).with_for_update()
        ).first()  # fmt: skip
        if leader is not None and leader.state in RUNNING:
            job.follows_id = leader.id
            return
    lifecycle.dispatch(runtime, session, job, outbox)


def take_result(job: Job, source: Job) -> None:
    """The job ends as the build it shares ended: same result, outputs and log (the artifacts are the
    uploads of the build that ran: made_by follows reused_from_id)."""
    job.state, job.result, job.error_code, job.error_message = "done", source.result, None, None
    job.outputs, job.log_digest, job.command_s = dict(source.outputs), source.log_digest, source.command_s
    job.reused_from_id = source.reused_from_id or source.id  # the build that ran, not another copy of it
    job.started_at = job.started_at or utcnow()
    job.finished_at = utcnow()


def after_result(runtime: Runtime, session: Session, leader: Job, outbox: lifecycle.Outbox) -> None:
    """A shared build ended (recorded, or cancelled): its followers take its pass and move on, or the
    first of them runs the build itself and the others follow that one."""
    session.flush()  # the leader's row is written (and locked) before its followers are read
    followers = list(session.scalars(
        select(Job).where(Job.follows_id == leader.id, Job.state == "pending").order_by(Job.id).with_for_update()
    ))  # fmt: skip
    if not followers:
        return
    if leader.result == "pass" and leader.error_code is None:
        for follower in followers:
            take_result(follower, leader)
            moved_on(runtime, session, follower, outbox)
        return
    first, rest = followers[0], followers[1:]
    first.follows_id = None
    for follower in rest:
        follower.follows_id = first.id
    lifecycle.dispatch(runtime, session, first, outbox)
    lifecycle.report_after(first.pipeline, outbox)


def moved_on(runtime: Runtime, session: Session, base: Job, outbox: lifecycle.Outbox) -> None:
    """A base job of another pipeline took a result: what waits on it in that pipeline goes now."""
    pipeline = base.pipeline
    lifecycle.after_build(runtime, session, pipeline, base, outbox)
    lifecycle.finish_if_done(session, pipeline)
    lifecycle.report_after(pipeline, outbox)


def after_cancelled(runtime: Runtime, session: Session, jobs: Iterable[Job], outbox: lifecycle.Outbox) -> None:
    """Jobs were cancelled: the followers of any shared build among them run it themselves."""
    for job in jobs:
        if job.build_key is not None and job.follows_id is None:
            after_result(runtime, session, job, outbox)
