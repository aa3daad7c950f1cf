"""What a test job carries when it is handed to its class's queue, read from the store: the evidence
that its device class boots a kernel to the runner, and the class's places labgate holds offline.

The evidence decides what a boot that never reaches the runner means (workers/spec.py TestSpec.boot_evidence):
with it, the change's kernel broke boot (`fail`); without it, the lab has not shown it can boot
anything (`incomplete` "boot-unproven")."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.health import EVIDENCE_MAX_AGE_S, HEALTH_CHECK_KIND, boot_evidence_text, reached_runner
from bot.host.stores import Runtime
from bot.pipelines import scheduler
from bot.store.models import Job, Pipeline, PlaceHealth, utcnow
from workers.app import lab_queue

RECENT_JOBS = 50  # finished test jobs of the class looked at for one that reached its runner


def boot_evidence(session: Session, device_class: str) -> str:
    """The newest test job of the class that booted to its runner within a day, or else the class's
    last passing health check within a day; empty when there is neither (a boot-unproven retry then
    waits for a new health check)."""
    queue = lab_queue(device_class)
    since = utcnow() - timedelta(seconds=EVIDENCE_MAX_AGE_S)
    recent = session.execute(
        select(Job.id, Job.outputs, Job.finished_at)
        .where(Job.queue == queue, Job.kind == "test", Job.state == "done", Job.finished_at >= since)
        .order_by(Job.finished_at.desc()).limit(RECENT_JOBS)
    ).all()  # fmt: skip
    for job_id, outputs, finished_at in recent:
        if finished_at is not None and reached_runner(outputs or {}):
            return boot_evidence_text(job_id, device_class, _utc(finished_at), health_check=False)
    check = session.execute(
        select(Job.id, Job.finished_at).join(Pipeline, Job.pipeline_id == Pipeline.id)
        .where(Job.queue == queue, Pipeline.kind == HEALTH_CHECK_KIND, Job.state == "done", Job.result == "pass",
               Job.finished_at >= since)  # a class that boots today may not boot next week
        .order_by(Job.finished_at.desc()).limit(1)
    ).first()  # fmt: skip
    if check is None or check[1] is None:
        return ""
    return boot_evidence_text(check[0], device_class, _utc(check[1]), health_check=True)


def offline_places(session: Session, device_class: str) -> list[str]:
    return list(session.scalars(select(PlaceHealth.place).where(PlaceHealth.device_class == device_class,
                                                                PlaceHealth.offline.is_(True))
                                .order_by(PlaceHealth.place)))  # fmt: skip


def hand_over_tests(runtime: Runtime, session: Session, jobs: Sequence[Job]) -> None:
    """Hand test jobs to the queue (bot/pipelines/scheduler.py) with the evidence and places to avoid of
    their classes, each read once."""
    evidence: dict[str, str] = {}
    avoid: dict[str, list[str]] = {}
    for job in jobs:
        device_class = str(job.spec.get("device_class") or "")
        if device_class not in evidence:
            evidence[device_class] = boot_evidence(session, device_class)
            avoid[device_class] = offline_places(session, device_class)
        places = list(job.spec.get("avoid_places") or [])
        # Its jobs run on the class's other places while one is out (the worker may still use it when
        # no other place can take the job within its wait cap).
        places += [place for place in avoid[device_class] if place not in places]
        job.spec = {**job.spec, "boot_evidence": evidence[device_class], "avoid_places": places}
    scheduler.hand_over(runtime, session, jobs)


def _utc(moment: datetime) -> datetime:
    """SQLite gives back the UTC times it was given without their zone."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
