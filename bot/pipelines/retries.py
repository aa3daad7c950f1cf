"""Automatic retries of `incomplete` test jobs: the lab's side failed, so the same job runs again, at most
MAX_RETRIES times, away from the place that failed it. `fail` is never retried (the change did it), and a
re-run triage asks for is a separate job (bot/pipelines/steering.py).

Each failed attempt is kept as a JobAttempt row. The job itself goes back to the queue with no result
token at all: a late or redelivered message of the old attempt holds a token nothing matches any more,
and dispatch gives the next attempt a new one. An attempt that never reached the runner on a class not
seen booting ("boot-unproven") waits for a health check of the class first, so the retry carries the
evidence that decides a broken boot (bot/pipelines/handover.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bot.core.health import avoid_after, place_of, retry_note, should_retry
from bot.host.stores import Runtime

# lifecycle as a module: it imports this one too, and each uses the other only at call time.
from bot.pipelines import handover, health_checks, lifecycle
from bot.store.models import Job, JobAttempt, TestResult
from workers.spec import INCOMPLETE_BOOT_UNPROVEN

if TYPE_CHECKING:
    from bot.pipelines.lifecycle import Outbox

THEN_HAND_OVER = "then_hand_over"  # a class health check's Job.spec: the retries waiting for its result


def after_test_result(runtime: Runtime, session: Session, job: Job, outbox: Outbox) -> bool:
    """Retry a test job that ended `incomplete`, if it may be; whether it was."""
    if health_checks.is_health_check(job):
        _release_waiting_retries(runtime, session, job, outbox)
        return False
    done = session.scalar(select(func.count()).select_from(JobAttempt).where(JobAttempt.job_id == job.id)) or 0
    if not should_retry(job.result, job.error_code, done):
        return False
    place = place_of(job.outputs)
    number = done + 1
    session.add(JobAttempt(job_id=job.id, number=number, place=place, result=job.result, error_code=job.error_code,
                           error_message=job.error_message, log_digest=job.log_digest, started_at=job.started_at,
                           finished_at=job.finished_at))  # fmt: skip
    boot_unproven = job.error_code == INCOMPLETE_BOOT_UNPROVEN
    note = retry_note(number, job.error_code, place)
    session.execute(delete(TestResult).where(TestResult.job_id == job.id))  # the attempt's partial tests
    job.result_token_hash = None  # the old attempt's messages are refused from now on
    job.state, job.result, job.error_code, job.error_message = "pending", None, None, note
    job.log_digest, job.command_s, job.outputs, job.started_at, job.finished_at = None, None, {}, None, None
    job.attempts = number + 1
    job.spec = {**job.spec, "avoid_places": avoid_after(list(job.spec.get("avoid_places") or []), place)}
    if boot_unproven:
        _wait_for_class_check(runtime, session, job)
    else:
        handover.hand_over_tests(runtime, session, [job])
    return True


def attempts_of(session: Session, job_id: int) -> list[JobAttempt]:
    """A job's earlier attempts, first first (the job row itself is the latest)."""
    return list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)))


def _wait_for_class_check(runtime: Runtime, session: Session, job: Job) -> None:
    device_class = str(job.spec.get("device_class") or "")
    check = health_checks.class_check_in_flight(session, device_class)
    if check is None:
        why = f"{device_class} has not been seen booting: job {job.id} waits"
        check = health_checks.queue_health_check(runtime, session, device_class, None, why)
    check.spec = {**check.spec, THEN_HAND_OVER: [*check.spec.get(THEN_HAND_OVER, []), job.id]}
    job.error_message = f"{job.error_message}, after a health check of {device_class} (job {check.id})"


def _release_waiting_retries(runtime: Runtime, session: Session, check: Job, outbox: Outbox) -> None:
    """A class health check ended: the retries that waited for it go to the queue (with its evidence if
    it passed; without, if it failed: the class then shows what it does with the change's kernel)."""
    # Read again under its row lock: a retry may have joined the list after this result was first read.
    session.scalar(select(Job).where(Job.id == check.id).with_for_update()
                   .execution_options(populate_existing=True))  # fmt: skip
    ids = [int(job_id) for job_id in check.spec.get(THEN_HAND_OVER, [])]
    if not ids:
        return
    pick = select(Job).where(Job.id.in_(ids), Job.kind == "test", Job.state == "pending").order_by(Job.id)
    waiting = session.scalars(pick.with_for_update().execution_options(populate_existing=True)).all()
    handover.hand_over_tests(runtime, session, waiting)
    for pipeline in {job.pipeline for job in waiting}:
        lifecycle.finish_if_done(session, pipeline)  # a retry back-pressure turned away ends its pipeline
        lifecycle.report_after(pipeline, outbox)
