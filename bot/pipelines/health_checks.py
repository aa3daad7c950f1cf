"""Health-check pipelines: the lab's own kernel and one trivial command on one place (or on any place of a
class), at the top priority, past back-pressure and offline windows (bot/core/schedule.py).

They belong to no forge change. Each runs under a change of the lab's own tree (LAB_TREE, source
LAB_SOURCE), which no forge or mail sink reports to: a health check is seen in `labgate lab status`, on
its job page, and in the pipelines it unblocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.core.health import HEALTH_CHECK_KIND, LAB_SOURCE, LAB_TREE, health_check_spec
from bot.host.stores import Runtime
from bot.pipelines import scheduler
from bot.store.models import Change, Job, Pipeline, Revision, Tree
from workers.app import lab_queue

NOT_DONE = ("pending", "waiting", "queued", "running")
_Row = TypeVar("_Row", Tree, Change)


def queue_health_check(runtime: Runtime, session: Session, device_class: str, place: str | None, why: str) -> Job:
    """A new health-check pipeline with its one test job handed to the class's queue; the job.
    The caller's transaction fills the window (scheduler.after_result, or fill_windows)."""
    change = _lab_change(session, device_class, place)
    version = (session.scalar(select(func.count()).select_from(Revision).where(Revision.change_id == change.id))
               or 0) + 1  # fmt: skip
    revision = Revision(change=change, version=version, base_ref="lab")
    pipeline = Pipeline(revision=revision, state="running", kind=HEALTH_CHECK_KIND, tier="hardware", notes=[why])
    spec = health_check_spec(device_class, place)
    job = Job(pipeline=pipeline, kind="test", name=spec["name"], queue=lab_queue(device_class), spec=spec)
    session.add(job)
    session.flush()
    scheduler.hand_over(runtime, session, [job])
    return job


def is_health_check(job: Job) -> bool:
    """A job labgate made to check a place or a class: only its own result may bring a place back."""
    return job.kind == "test" and job.pipeline.kind == HEALTH_CHECK_KIND


def class_check_in_flight(session: Session, device_class: str) -> Job | None:
    """The class's health check (of no one place) not yet done, locked: retries wait for it."""
    candidates = session.scalars(
        select(Job).join(Pipeline, Job.pipeline_id == Pipeline.id)
        .where(Job.queue == lab_queue(device_class), Job.kind == "test", Job.state.in_(NOT_DONE),
               Pipeline.kind == HEALTH_CHECK_KIND)
        .order_by(Job.id).with_for_update(of=Job)
    ).all()  # fmt: skip
    return next((job for job in candidates if job.spec.get("health_check_place") is None), None)


def _lab_change(session: Session, device_class: str, place: str | None) -> Change:
    tree = _made_once(session, lambda: session.scalar(select(Tree).where(Tree.name == LAB_TREE)),
                      lambda: Tree(name=LAB_TREE, url=""))  # fmt: skip
    external_id = f"health/{device_class}/{place or '*'}"
    what = f"place {place} of {device_class}" if place else f"device class {device_class}"
    return _made_once(
        session,
        lambda: session.scalar(select(Change).where(Change.tree_id == tree.id, Change.source == LAB_SOURCE,
                                                    Change.external_id == external_id)),
        lambda: Change(tree_id=tree.id, source=LAB_SOURCE, external_id=external_id, title=f"health checks of {what}",
                       submitter="labgate", author_trusted=True),
    )  # fmt: skip


def _made_once(session: Session, find: Callable[[], _Row | None], make: Callable[[], _Row]) -> _Row:
    """The row `find` finds, made by `make` on first use (two makers at once: the second finds the first's)."""
    row = find()
    if row is not None:
        return row
    try:
        with session.begin_nested():
            session.add(make())
    except IntegrityError:
        pass
    row = find()
    assert row is not None
    return row
