"""Place health in the store: each (device class, place)'s run of consecutive infrastructure failures, the
place taken offline at FAULT_LIMIT with a health check queued, and the health check's verdict.

Only a health-check job's own result (it carries its job's token, checked by record_result) says how a
check went, and the place it speaks for is the one labgate wrote in that job's spec: a result of any
other job that claims to be a health check is just a test result. A failed check keeps the place
offline and schedules the next one (`recheck_due`, run by the `bot.place_health_recheck` timer), so a
board fixed in the meantime comes back without an operator."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.core.health import (
    PlaceVerdict,
    fault_description,
    goes_offline,
    health_check_passed,
    next_fault_count,
    offline_reason,
    place_of,
    place_verdict,
)
from bot.host.stores import Runtime

# lifecycle as a module: it imports this one too, and each uses the other only at call time.
from bot.pipelines import health_checks, lifecycle, scheduler
from bot.store.models import Job, PlaceHealth, utcnow


def after_test_result(runtime: Runtime, session: Session, job: Job) -> None:
    """Count a recorded test result against (or for) the place it ran on."""
    device_class = str(job.spec.get("device_class") or "")
    if health_checks.is_health_check(job):
        _after_health_check(runtime, session, job, device_class)
        return
    place = place_of(job.outputs)
    verdict = place_verdict(job.result, job.error_code, job.outputs)
    if place is None or verdict is PlaceVerdict.UNKNOWN:
        return
    row = _locked_row(session, device_class, place)
    row.consecutive_failures = next_fault_count(row.consecutive_failures, verdict)
    row.updated_at = utcnow()
    if verdict is not PlaceVerdict.FAULT:
        return
    row.last_fault = f"{fault_description(job.error_code, job.error_message)} (job {job.id})"
    if goes_offline(row.consecutive_failures) and not row.offline:
        row.offline, row.offline_reason = True, offline_reason(row.consecutive_failures, row.last_fault)
        check = health_checks.queue_health_check(runtime, session, device_class, place,
                                                 f"{place} went offline: {row.offline_reason}")  # fmt: skip
        row.check_job_id, row.recheck_at = check.id, None


def _after_health_check(runtime: Runtime, session: Session, job: Job, device_class: str) -> None:
    place = job.spec.get("health_check_place")
    if not isinstance(place, str):
        return  # a class's health check: it proves the class boots (bot/pipelines/handover.py), no place
    row = _locked_row(session, device_class, place)
    now = utcnow()
    row.last_check_at, row.updated_at = now, now
    if health_check_passed(job.result, job.outputs):
        row.last_check_result = "passed"
        row.offline, row.offline_reason, row.consecutive_failures, row.recheck_at = False, "", 0, None
        return
    row.last_check_result = "failed"
    interval = runtime.config.scheduling.health_recheck_interval_s
    row.offline = True
    fault = fault_description(job.error_code or job.result, job.error_message)
    row.offline_reason = f"health check (job {job.id}) failed: {fault}; next check in {max(1, interval // 60)} min"
    row.recheck_at = now + timedelta(seconds=interval)


def request_check(runtime: Runtime, device_class: str, place: str, why: str) -> tuple[int, bool]:
    """A health check of the place now (an operator's `labgate lab health`): its job id, and whether it
    is new (False: one already waits or runs, and that one is the answer)."""
    outbox = lifecycle.Outbox()
    with runtime.store.writing() as session:
        row = _locked_row(session, device_class, place)
        current = session.get(Job, row.check_job_id) if row.check_job_id is not None else None
        if current is not None and current.state in health_checks.NOT_DONE:
            return current.id, False
        check = health_checks.queue_health_check(runtime, session, device_class, place, why)
        row.check_job_id, row.recheck_at, row.updated_at = check.id, None, utcnow()
        scheduler.fill_windows(runtime, session, [check.queue], outbox)
        check_id = check.id
    outbox.send()
    return check_id, True


def recheck_due(runtime: Runtime) -> list[str]:
    """The timer's task: a new health check for every offline place whose last one failed long enough ago."""
    outbox = lifecycle.Outbox()
    done = []
    with runtime.store.writing() as session:
        due = session.scalars(
            select(PlaceHealth).where(PlaceHealth.offline.is_(True), PlaceHealth.recheck_at.is_not(None),
                                      PlaceHealth.recheck_at <= utcnow())
            .order_by(PlaceHealth.id).with_for_update(skip_locked=True)
        ).all()  # fmt: skip
        queues = set()
        for row in due:
            why = f"{row.place} is offline ({row.offline_reason}): checked again"
            check = health_checks.queue_health_check(runtime, session, row.device_class, row.place, why)
            row.check_job_id, row.recheck_at, row.updated_at = check.id, None, utcnow()
            queues.add(check.queue)
            done.append(f"{row.device_class} {row.place}: health check job {check.id}")
        scheduler.fill_windows(runtime, session, queues, outbox)
    outbox.send()
    return done


def places(session: Session) -> dict[tuple[str, str], PlaceHealth]:
    """Every place the store knows of, by (device class, place)."""
    return {(row.device_class, row.place): row for row in session.scalars(select(PlaceHealth))}


def _locked_row(session: Session, device_class: str, place: str) -> PlaceHealth:
    """The place's row, locked until the transaction ends (made on first sight; two makers: one wins)."""
    lock = select(PlaceHealth).where(PlaceHealth.device_class == device_class, PlaceHealth.place == place)
    lock = lock.with_for_update().execution_options(populate_existing=True)
    row = session.scalar(lock)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            session.add(PlaceHealth(device_class=device_class, place=place, consecutive_failures=0, last_fault="",
                                    offline=False, offline_reason="", updated_at=utcnow()))  # fmt: skip
    except IntegrityError:
        pass
    row = session.scalar(lock)
    assert row is not None
    return row
