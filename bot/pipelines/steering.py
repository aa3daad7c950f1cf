"""Stopping and repeating pipelines: cancel superseded ones, re-run what failed, end one a bug stopped."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select

from bot.host.stores import Runtime
from bot.pipelines import base_builds, scheduler
from bot.pipelines.handover import hand_over_tests
from bot.pipelines.lifecycle import Outbox, dispatch, finish_if_done, lock_pipeline, report_after
from bot.store.models import Job, Pipeline, TestResult, utcnow
from bot.store.once import once_done, record_once
from workers.app import app

log = logging.getLogger(__name__)


def cancel_pipelines(runtime: Runtime, pipeline_ids: Sequence[int], reason: str) -> None:
    """Stop pipelines: queued tasks revoked, running ones terminated (their sandbox and QEMU
    die with the worker process), every unfinished job recorded `cancelled` with the reason."""
    outbox = Outbox()
    revoke: list[str] = []
    freed: set[str] = set()  # queues of test jobs that held a window's slot
    cancelled: list[Job] = []
    with runtime.store.session() as session:
        for pipeline_id in pipeline_ids:
            pipeline = lock_pipeline(session, pipeline_id)
            if pipeline is None or pipeline.state == "done":
                continue
            for job in pipeline.jobs:
                if job.state == "done":
                    continue
                if job.task_id:
                    revoke.append(job.task_id)
                if job.kind == "test" and job.state in scheduler.IN_FLIGHT:
                    freed.add(job.queue)
                job.state, job.error_code, job.error_message = "done", "cancelled", reason
                job.finished_at = utcnow()
                cancelled.append(job)
            pipeline.state, pipeline.result, pipeline.error_message = "done", "cancelled", reason
            pipeline.finished_at = utcnow()
            report_after(pipeline, outbox)
        # Other pipelines waiting for a base build that was cancelled here run it themselves.
        base_builds.after_cancelled(runtime, session, cancelled, outbox)
        scheduler.fill_windows(runtime, session, freed, outbox)
    if revoke:
        app.control.revoke(revoke, terminate=True, signal="SIGTERM")
    outbox.send()


def retest_failed(runtime: Runtime, pipeline_id: int, job_name: str | None = None,
                  requested_by: str = "", *, once_key: str | None = None) -> int | None:  # fmt: skip
    """A new pipeline for the same revision that runs again only what did not pass
    (or only `job_name`); what passed is carried over. The new pipeline's id.
    With `once_key` (bot/store/once.py), a second call returns the first call's pipeline."""
    outbox = Outbox()
    with runtime.store.session() as session:
        done = once_done(session, once_key) if once_key is not None else None
        if done is not None:
            return int(done)
        old = session.get(Pipeline, pipeline_id)
        if old is None or old.state != "done":
            return None
        new = Pipeline(revision=old.revision, state="running", kind=old.kind, tier=old.tier, rerun_of_id=old.id,
                       requested_by=requested_by, notes=list(old.notes))  # fmt: skip
        session.add(new)
        copies: dict[int, Job] = {}
        for job in old.jobs:
            if isinstance(job.spec.get("triage"), dict):
                continue  # the old run's evidence runs: the re-run's own failures ask for their own
            again = (job.name == job_name or f"{job.kind} {job.name}" == job_name) if job_name else (
                job.result not in ("pass", "skip") or job.error_code is not None)  # fmt: skip
            depends = copies.get(job.depends_on_id) if job.depends_on_id else None
            if depends is not None and depends.state != "done":
                again = True  # what it needs runs again, so it does too
            if job.kind == "test" and not job.spec.get("device_class"):
                again = False  # drafted as a skip (no class of the lab may run it at this tier): it stays one
            # What the old run's attempts learnt (places that failed it, boot evidence) is read afresh at hand-over.
            spec = {key: value for key, value in job.spec.items() if key not in ("avoid_places", "boot_evidence")}
            copy = Job(pipeline=new, kind=job.kind, name=job.name, queue=job.queue, spec=spec if again else job.spec,
                       depends_on_id=depends.id if depends else None)  # fmt: skip
            session.add(copy)  # before job.tests loads: an autoflush must not meet it outside the session
            if not again:
                copy.state, copy.result, copy.outputs = "done", job.result, dict(job.outputs)
                copy.log_digest, copy.command_s, copy.reused_from_id = job.log_digest, job.command_s, job.id
                copy.started_at, copy.finished_at = job.started_at, job.finished_at
                for test in job.tests:
                    session.add(TestResult(job=copy, path=test.path, status=test.status, directive=test.directive,
                                           reason=test.reason, diagnostics=test.diagnostics,
                                           caveat=test.caveat))  # fmt: skip
            session.flush()
            copies[job.id] = copy
        if copies and next(iter(copies.values())).state != "done":
            # The checkout itself runs again: start from scratch, like a new pipeline.
            for job in list(new.jobs)[1:]:
                session.delete(job)
            session.flush()
        for job in new.jobs:
            parent = session.get(Job, job.depends_on_id) if job.depends_on_id else None
            # A change's build waits for its base build, not for its pass (lifecycle.after_build).
            ready = parent is None or (parent.state == "done" and (parent.result == "pass" or job.kind == "build"))
            if job.state == "pending" and ready:
                if job.kind == "test":
                    hand_over_tests(runtime, session, [job])  # it waits in the store for its class
                else:
                    dispatch(runtime, session, job, outbox)
        scheduler.fill_windows(runtime, session, {job.queue for job in new.jobs if job.state == scheduler.WAITING},
                               outbox)  # fmt: skip
        finish_if_done(session, new)
        report_after(new, outbox)
        new_id = new.id
        if once_key is not None:
            record_once(session, once_key, str(new_id))
    outbox.send()
    return new_id


def fail_pipeline(runtime: Runtime, pipeline_id: int, message: str) -> None:
    """A bug of ours stopped the control path: end the pipeline as an error, never leave it hanging."""
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None or pipeline.state == "done":
            return
        ended = []
        for job in pipeline.jobs:
            if job.state != "done":
                job.state, job.error_code, job.error_message = "done", "infra-error", "not run: " + message
                job.finished_at = utcnow()
                ended.append(job.id)
        pipeline.state, pipeline.result = "done", "error"
        pipeline.error_code, pipeline.error_message = "infra-error", message
        pipeline.finished_at = utcnow()
    # Apart, once the pipeline is ended: the bug that stopped it must not keep it from ending.
    try:
        outbox = Outbox()
        with runtime.store.session() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_(ended))).all()
            base_builds.after_cancelled(runtime, session, jobs, outbox)
        outbox.send()
    except Exception:
        log.exception("pipeline %s: the base builds other pipelines wait for could not be handed on", pipeline_id)
