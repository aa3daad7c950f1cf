"""The test queue in the store: test jobs wait here, and each device class gets only a window of messages.

A test job whose build passed is handed over (state `waiting`, with its priority and fair sequence,
bot/core/schedule.py). A class's window is its capacity plus a margin: `fill_windows` dispatches its
next waiting jobs through the Outbox (bot/pipelines/lifecycle.py) until that many are queued or
running. It runs in the transaction that records a result or hands jobs over, and on a timer (the
`bot.queue_top_up` control task), so a lost wake-up never strands a job. 100,000 waiting jobs are rows,
not broker messages.

Two control workers never over-fill a window: each fill first locks the class's `queue_window` row
(SELECT ... FOR UPDATE on PostgreSQL; SQLite has one writer at a time) and only then counts what is in
flight. Windows are locked in name order, always after any pipeline row, so fillers cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, object_session

from bot.core.schedule import (
    PRIORITY_HEALTH_CHECK,
    QuotaUse,
    estimate_wait_min,
    fair_key,
    job_priority,
    next_fair_seq,
    over_limit_reason,
    quota_key,
    quota_refusal,
    waiting_title,
    window_size,
)
from bot.host.config import DeviceClass
from bot.host.stores import Runtime

# Imported as a module: lifecycle imports this module too, and each uses the other only at call time.
from bot.pipelines import lifecycle
from bot.store.models import Change, Job, Pipeline, QueueWindow, Revision, utcnow
from workers.app import lab_queue

if TYPE_CHECKING:
    from bot.pipelines.lifecycle import Outbox

WAITING = "waiting"
IN_FLIGHT = ("queued", "running")
RECENT_JOBS = 20  # finished jobs of a class its wait estimate goes by
SCAN_ROWS = 256  # waiting jobs one fill looks past for jobs whose submitter is over quota
_HAND_OVER_INFO = "labgate.scheduler.hand_over"  # session.info key: what this transaction's hand-overs read
_TO_FILL_INFO = "labgate.scheduler.to_fill"  # session.info key: queues this transaction handed jobs to


def hand_over(runtime: Runtime, session: Session, jobs: Sequence[Job]) -> set[str]:
    """Test jobs ready to run wait in the store for their class; the queues to fill. A class over its
    waiting limit takes none but health checks: those jobs end `skip` with the reason (back-pressure)."""
    limits = runtime.config.scheduling
    # Hand-overs of one transaction (a build's tests, one by one) share what they read: one count per
    # queue and one newest sequence per (queue, submitter), not a query per job.
    seen: dict[tuple[str, ...], int | None] = session.info.setdefault(_HAND_OVER_INFO, {})
    queues: set[str] = set()
    for job in jobs:
        pipeline = job.pipeline
        change = pipeline.revision.change
        window = _window(session, job.queue)
        job.priority = job_priority(pipeline.kind, change.author_trusted)
        if ("waiting", job.queue) not in seen:
            # Those the window has room for now are not going to wait: they do not count.
            room = window_size(_capacity(runtime, job.queue), limits.window_margin)
            room -= _count(session, job.queue, IN_FLIGHT)
            seen["waiting", job.queue] = _count(session, job.queue, (WAITING,)) - max(0, room)
        waiting = seen["waiting", job.queue] or 0
        if waiting >= limits.max_waiting_per_class and job.priority < PRIORITY_HEALTH_CHECK:
            job.state, job.result, job.error_code = "done", "skip", "back-pressure"
            job.error_message = over_limit_reason(_class_name(job), waiting, limits.max_waiting_per_class)
            job.finished_at = utcnow()
            continue
        job.fair_key = fair_key(change.tree.name, change.submitter)
        if ("newest", job.queue, job.fair_key) not in seen:
            seen["newest", job.queue, job.fair_key] = session.scalar(
                select(func.max(Job.fair_seq)).where(Job.queue == job.queue, Job.fair_key == job.fair_key,
                                                     Job.state == WAITING)
            )  # fmt: skip
        job.fair_seq = next_fair_seq(window.virtual_time, seen["newest", job.queue, job.fair_key])
        seen["newest", job.queue, job.fair_key] = job.fair_seq
        job.quota_key = quota_key(change.source, change.submitter, change.author_trusted)
        job.state = WAITING
        seen["waiting", job.queue] = waiting + 1
        queues.add(job.queue)
    session.info.setdefault(_TO_FILL_INFO, set()).update(queues)
    return queues


def fill_windows(runtime: Runtime, session: Session, queues: Iterable[str], outbox: Outbox, *,
                 skip_locked: bool = False) -> int:  # fmt: skip
    """Dispatch each queue's next waiting jobs until its window is full; how many were dispatched.
    With `skip_locked`, a queue another transaction is filling right now is left to it.

    Every queue of the call is filled together, whatever the number of freed slots: one statement locks
    their windows, one counts what they have in flight, one pick per queue and one load take the jobs
    (acknowledgements that arrive together are filled together)."""
    classes = {queue: dc for queue in set(queues) if (dc := _device_class(runtime, queue)) is not None}
    # A class gone from the config is not filled: its jobs wait, and their reports say for what.
    windows = _lock_windows(session, sorted(classes), skip_locked)
    in_flight = _counts(session, [window.queue for window in windows], IN_FLIGHT)
    free: dict[str, int] = {}
    for window in windows:
        capacity = classes[window.queue].capacity
        if window.capacity != capacity:
            window.capacity, window.updated_at = capacity, utcnow()
        room = window_size(capacity, runtime.config.scheduling.window_margin) - in_flight.get(window.queue, 0)
        if room > 0:
            free[window.queue] = room
    return _dispatch_next(runtime, session, {window.queue: window for window in windows}, free, outbox)


def _lock_windows(session: Session, queues: list[str], skip_locked: bool) -> list[QueueWindow]:
    """The queues' window rows, locked in name order (one statement); made on their first fill.
    With `skip_locked`, those another transaction holds are left out."""
    if not queues:
        return []

    def lock(names: Sequence[str]) -> list[QueueWindow]:
        return list(session.scalars(
            select(QueueWindow).where(QueueWindow.queue.in_(names)).order_by(QueueWindow.queue)
            .with_for_update(skip_locked=skip_locked)
            .execution_options(populate_existing=True)  # as the lock's previous holder left it
        ))  # fmt: skip

    windows = lock(queues)
    missing = sorted(set(queues) - {window.queue for window in windows})
    if missing:
        made = set(session.scalars(select(QueueWindow.queue).where(QueueWindow.queue.in_(missing))))
        for queue in missing:
            if queue not in made:
                _window(session, queue)  # its first fill: made, then locked
        windows = sorted([*windows, *lock([q for q in missing if q not in made])], key=lambda w: w.queue)
    return windows


def _dispatch_next(runtime: Runtime, session: Session, windows: dict[str, QueueWindow], free: dict[str, int],
                   outbox: Outbox) -> int:  # fmt: skip
    """Send up to `free[queue]` waiting jobs of each queue, in the fair order, past those over their quota."""
    limits = runtime.config.scheduling
    uses: dict[str, QuotaUse] = {}
    passed: dict[str, list[int]] = {queue: [] for queue in free}  # held by their quota: looked past
    sent = 0
    while free:
        picked = {queue: _pick(session, windows[queue], room, passed[queue]) for queue, room in free.items()}
        jobs = _load([job_id for ids in picked.values() for job_id in ids], session)
        for queue, ids in picked.items():
            if not ids:
                free.pop(queue)
                continue
            dispatched: list[int] = []  # their fair sequences
            for job in (jobs[job_id] for job_id in ids):
                if job.quota_key is not None:
                    use = uses.get(job.quota_key) or _quota_use(session, job.quota_key)
                    refusal = quota_refusal(use, limits.submitter_jobs_in_flight,
                                            limits.submitter_device_minutes_per_day)  # fmt: skip
                    uses[job.quota_key] = use
                    if refusal is not None:
                        job.error_message = refusal  # said in its report while it waits
                        passed[queue].append(job.id)
                        continue
                    uses[job.quota_key] = QuotaUse(use.submitter, use.in_flight + 1, use.device_minutes)
                job.error_message = None
                # Written with the fill's next query or its commit: one round trip for the batch, not one per job.
                lifecycle.dispatch(runtime, session, job, outbox, flush=False)
                dispatched.append(job.fair_seq)
                free[queue] -= 1
                sent += 1
            # Once per class, not per job: dispatch flushes, and a window changed per job is an UPDATE per job.
            windows[queue].virtual_time = max([windows[queue].virtual_time, *dispatched])
            if free[queue] <= 0 or len(passed[queue]) > SCAN_ROWS:
                free.pop(queue)
    return sent


def _pick(session: Session, window: QueueWindow, room: int, passed: Sequence[int]) -> list[int]:
    """The ids of a queue's next `room` waiting jobs in the fair order: one range of ix_job_pick."""
    pick = (
        select(Job.id).where(Job.queue == window.queue, Job.state == WAITING, Job.id.not_in(passed))
        .order_by(Job.priority.desc(), Job.fair_seq, Job.id).limit(room)
        # A job another transaction holds (a cancel) is not ours to send.
        .with_for_update(skip_locked=True)
    )  # fmt: skip
    if window.offline:
        pick = pick.where(Job.priority >= PRIORITY_HEALTH_CHECK)  # health checks bring a class back
    return list(session.scalars(pick))


def _load(ids: Sequence[int], session: Session) -> dict[int, Job]:
    """The picked jobs with what dispatch reads of them (their change's tree, their build) in two queries,
    rather than lazy loads and gets per job."""
    if not ids:
        return {}
    jobs = session.scalars(
        select(Job).where(Job.id.in_(ids))
        .options(joinedload(Job.pipeline, innerjoin=True).joinedload(Pipeline.revision, innerjoin=True)
                 .joinedload(Revision.change, innerjoin=True).joinedload(Change.tree, innerjoin=True))
    ).unique().all()  # fmt: skip
    builds = {job.depends_on_id for job in jobs if job.depends_on_id is not None}
    # Held by the caller as long as it dispatches: the session's identity map keeps only weak references,
    # and dispatch's get finds a build there only while something else holds it.
    loaded = list(session.scalars(select(Job).where(Job.id.in_(builds)))) if builds else []
    return {job.id: job for job in [*jobs, *loaded]}


def after_result(runtime: Runtime, session: Session, job: Job, outbox: Outbox) -> None:
    """A job's result was recorded: a test job freed a slot of its class; a build handed its tests over."""
    queues = set(session.info.pop(_TO_FILL_INFO, set()))
    if job.kind == "test":
        queues.add(job.queue)
    if job.quota_key is not None:
        # Its submitter's quota has room again: wherever its jobs wait, they may go now.
        queues.update(session.scalars(select(Job.queue).distinct().where(Job.quota_key == job.quota_key,
                                                                         Job.state == WAITING)))  # fmt: skip
    if queues:
        fill_windows(runtime, session, queues, outbox)


def top_up(runtime: Runtime) -> list[str]:
    """Fill every configured class's window (the timer's task): what a lost wake-up left waiting goes now."""
    outbox = lifecycle.Outbox()
    queues = [lab_queue(dc.name) for dc in runtime.config.device_classes]
    with runtime.store.writing() as session:
        sent = {queue: fill_windows(runtime, session, [queue], outbox, skip_locked=True) for queue in queues}
    outbox.send()
    return [f"{queue}: {count} dispatched" for queue, count in sent.items() if count]


def set_offline(runtime: Runtime, device_class: str, reason: str | None) -> None:
    """Take a class out (its waiting jobs stay, health checks still go), or bring it back (reason None)."""
    queue = lab_queue(device_class)
    outbox = lifecycle.Outbox()
    with runtime.store.writing() as session:
        _window(session, queue)
        window = session.scalar(select(QueueWindow).where(QueueWindow.queue == queue).with_for_update())
        assert window is not None
        window.offline, window.offline_reason = reason is not None, reason or ""
        session.flush()
        if reason is None:
            fill_windows(runtime, session, [queue], outbox)
    outbox.send()


def waiting_report_title(job: Job) -> str:
    """`waiting for <class>: N ahead, about M min`, with why when the class is offline or the quota is used."""
    session = object_session(job)
    if session is None:  # a job read and let go: where it stands is not known here
        return f"waiting for {_class_name(job)}"
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.queue == job.queue, Job.state == WAITING,
            or_(Job.priority > job.priority,
                and_(Job.priority == job.priority,
                     or_(Job.fair_seq < job.fair_seq, and_(Job.fair_seq == job.fair_seq, Job.id < job.id)))))
    ) or 0  # fmt: skip
    window = session.get(QueueWindow, job.queue)
    capacity = window.capacity if window is not None else 1
    recent = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(Job.queue == job.queue, Job.state == "done", Job.started_at.is_not(None),
               Job.finished_at.is_not(None), Job.result.is_not(None))
        .order_by(Job.id.desc()).limit(RECENT_JOBS)
    ).all()  # fmt: skip
    durations = [(_aware(finished) - _aware(started)).total_seconds() for started, finished in recent
                 if started is not None and finished is not None]  # fmt: skip
    reason = f"offline: {window.offline_reason}" if window is not None and window.offline else ""
    reason = reason or (job.error_message or "")
    return waiting_title(_class_name(job), ahead, estimate_wait_min(ahead, capacity, durations), reason)


def _window(session: Session, queue: str) -> QueueWindow:
    """The queue's window row, made on first use (two makers at once: the second finds the first's)."""
    window = session.get(QueueWindow, queue)
    if window is not None:
        return window
    try:
        with session.begin_nested():
            window = QueueWindow(queue=queue, capacity=1, virtual_time=0, offline=False, offline_reason="")
            session.add(window)
    except IntegrityError:
        window = session.get(QueueWindow, queue)
    assert window is not None
    return window


def _count(session: Session, queue: str, states: Sequence[str]) -> int:
    return _counts(session, [queue], states).get(queue, 0)


def _counts(session: Session, queues: Sequence[str], states: Sequence[str]) -> dict[str, int]:
    """How many jobs of each queue are in these states (one statement; a queue with none is absent)."""
    if not queues:
        return {}
    rows = session.execute(select(Job.queue, func.count()).where(Job.queue.in_(queues), Job.state.in_(states))
                           .group_by(Job.queue))  # fmt: skip
    return {queue: count for queue, count in rows}


def _quota_use(session: Session, key: str) -> QuotaUse:
    in_flight = session.scalar(
        select(func.count()).select_from(Job).where(Job.quota_key == key, Job.state.in_(IN_FLIGHT))
    ) or 0  # fmt: skip
    now = utcnow()
    since = now - timedelta(hours=24)
    rows = session.execute(
        select(Job.started_at, Job.finished_at).where(Job.quota_key == key, Job.started_at.is_not(None),
                                                      or_(Job.finished_at.is_(None), Job.finished_at > since))
    ).all()  # fmt: skip
    seconds = sum((_aware(finished or now) - max(_aware(started), since)).total_seconds()
                  for started, finished in rows if started is not None)  # fmt: skip
    return QuotaUse(key.split(":", 1)[1], in_flight, max(0.0, seconds) / 60)


def _aware(moment: datetime) -> datetime:
    """SQLite gives back the UTC times it was given without their zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _device_class(runtime: Runtime, queue: str) -> DeviceClass | None:
    for device_class in runtime.config.device_classes:
        if lab_queue(device_class.name) == queue:
            return device_class
    return None


def _capacity(runtime: Runtime, queue: str) -> int:
    device_class = _device_class(runtime, queue)
    return device_class.capacity if device_class is not None else 0


def _class_name(job: Job) -> str:
    return str(job.spec.get("device_class") or job.queue.removeprefix("lab."))
