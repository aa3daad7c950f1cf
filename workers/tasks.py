"""Thin Celery tasks around checkout, build and test; results go back to the control queue."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from workers.app import (
    RESULTS_QUEUE,
    app,
    artifacts_dir_from_env,
    broker_redis,
    configured_role,
    is_job_role,
    work_dir_from_env,
)
from workers.artifacts import ArtifactStore
from workers.base_file import answer_request
from workers.build import run_build
from workers.checkout import CheckoutOutcome, fetch_tested_commit, make_bundle, mirror_path, prepare_checkout
from workers.errors import InfraError, UserError
from workers.leftovers import holding_job, sweep_orphans
from workers.remote_store import fetch_inputs, publish_outputs
from workers.slots import BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS, UidRange
from workers.spec import (
    BASE_FILE_READ_TASK,
    READ_BASE_FILE_TASK,
    TASK_NAMES,
    BaseFileAnswer,
    BaseFileRequest,
    JobResult,
    JobSpec,
)

log = logging.getLogger(__name__)

# After this many deliveries of one job (worker killed, InfraError retries) we
# stop and say so, rather than loop on a change that kills its worker.
MAX_DELIVERIES = 3
# A lab worker's coordinators (space-separated host:port), swept for its stale locks at start-up.
LAB_COORDINATORS_ENV = "LABGATE_LAB_COORDINATORS"
# Task names of bot/result_tasks.py (the bot sends by name, workers never import bot).
RECORD_RESULT_TASK = "bot.record_result"
JOB_STARTED_TASK = "bot.job_started"
JOB_WAITING_TASK = "bot.job_waiting"  # a board job waits for a place: who holds them


def count_delivery(job_id: int, token: str = "") -> int:
    from workers.app import configured_role, delivery_key

    client = broker_redis(app.conf.broker_url)
    # Keyed by role: a worker's broker user may touch its own role's counters only.
    key = delivery_key(configured_role(), job_id, token)
    count = int(client.incr(key))
    client.expire(key, 7 * 24 * 3600)
    return count


def job_dir(spec: JobSpec) -> Path:
    return work_dir_from_env() / "work" / f"job-{spec.job_id}"


def credential_file(spec: JobSpec) -> Path:
    """Where the control side leaves a private tree's read credential for this one job."""
    return work_dir_from_env() / "credentials" / f"job-{spec.job_id}"


def execute_checkout(spec: JobSpec, delivery: int, later: list[Callable[[], None]]) -> JobResult:
    assert spec.checkout is not None
    store = ArtifactStore(artifacts_dir_from_env())
    patches = [(p.name, store.get_bytes(p.digest)) for p in spec.checkout.patches]
    credential = credential_file(spec)
    try:
        outcome = _checkout(spec, patches, credential if credential.exists() else None)
    finally:
        credential.unlink(missing_ok=True)  # used once; the token also expires on its own
    bundle = _bundle(spec, outcome, store) if spec.exchange is not None else None
    return JobResult(
        job_id=spec.job_id,
        delivery=delivery,
        result="pass",
        outputs={
            "base_sha": outcome.base_sha,
            "head_sha": outcome.head_sha,
            "tested_sha": outcome.tested_sha,
            "plan_text": outcome.plan_text,
            "changed_files": list(outcome.changed_files),
            "changed_lines": outcome.changed_lines,
            "base_is_ancestor": outcome.base_is_ancestor,
            "tree_has": outcome.tree_has,
            # The base's MAINTAINERS, for the control side to map the areas a change touches to suites.
            **({"maintainers_digest": store.put_bytes(outcome.maintainers)} if outcome.maintainers is not None else {}),
            **({"bundle_digest": bundle} if bundle else {}),
            **({"commits": [list(pair) for pair in outcome.commits]} if outcome.commits is not None else {}),
        },
    )


def _bundle(spec: JobSpec, outcome: CheckoutOutcome, store: ArtifactStore) -> str | None:
    """The tested commits as a git bundle in the store, for build hosts with their own mirror."""
    path = job_dir(spec) / "tested.bundle"
    try:
        made = make_bundle(mirror_path(work_dir_from_env(), spec.tree_name),
                           f"refs/labgate/pipelines/{spec.pipeline_id}", outcome.base_sha, path)  # fmt: skip
        return store.put_file(path) if made else None
    finally:
        path.unlink(missing_ok=True)


def _checkout(spec: JobSpec, patches: list[tuple[str, bytes]], credential: Path | None) -> CheckoutOutcome:
    assert spec.checkout is not None
    return prepare_checkout(
        mirror_path(work_dir_from_env(), spec.tree_name),
        spec.tree_url,
        base_ref=spec.checkout.base_ref,
        ref=spec.checkout.ref,
        patches=patches,
        plan_path=spec.checkout.plan_path,
        plan_from=spec.checkout.plan_from,
        worktree=job_dir(spec) / "src",
        keep_ref=f"refs/labgate/pipelines/{spec.pipeline_id}",
        merge=spec.checkout.merge,
        credential_file=credential,
        base_branches=spec.checkout.base_branches,
        list_commits=spec.checkout.list_commits,
        revert_sha=spec.checkout.revert_sha,
    )


def _have_tested_commit(spec: JobSpec, sha: str, bundle: str | None, store: ArtifactStore) -> None:
    """On a build host of its own (the job came with an exchange), the tested commit into this host's mirror:
    the tree from its URL, the change from the checkout's bundle. A shared mirror has it already."""
    if spec.exchange is not None:
        mirror = mirror_path(work_dir_from_env(), spec.tree_name)
        fetch_tested_commit(mirror, spec.tree_url, sha, store.path_of(bundle) if bundle else None)


def execute_build(spec: JobSpec, delivery: int, later: list[Callable[[], None]]) -> JobResult:
    assert spec.build is not None
    work_dir = work_dir_from_env()
    store = ArtifactStore(artifacts_dir_from_env())
    _have_tested_commit(spec, spec.build.head_sha, spec.build.bundle_digest, store)
    outcome = run_build(
        spec.build,
        mirror=mirror_path(work_dir, spec.tree_name),
        job_dir=job_dir(spec),
        uids=UidRange.from_env(BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS),
        store=store,
        max_log_bytes=spec.max_log_bytes,
        later=later.append,
        tree_name=spec.tree_name,
        warm_dir=work_dir / "warm",  # kernel builds keep their warm state there (workers/warm.py)
    )
    return JobResult(
        job_id=spec.job_id,
        delivery=delivery,
        result=outcome.result,  # type: ignore[arg-type]
        error_code=outcome.error_code,
        error_message=outcome.message,
        log_digest=outcome.log_digest,
        command_s=outcome.command_s,
        outputs={
            "artifacts": {k: v.model_dump() for k, v in outcome.artifacts.items()},
            "diagnostics": outcome.diagnostics,
            "confinement": outcome.confinement,
            "confinement_s": round(outcome.confinement_s, 3),
            "cap": outcome.cap,
            **(outcome.kernel or {}),
        },
    )


def execute_test(spec: JobSpec, delivery: int, later: list[Callable[[], None]]) -> JobResult:
    from workers.testjob import run_test_job  # imports labgrid: only lab workers pay for it

    def tell_waiting(why: str) -> None:
        app.send_task(JOB_WAITING_TASK, args=[spec.job_id, spec.result_token, why], queue=RESULTS_QUEUE)

    return run_test_job(spec, delivery, work_dir_from_env(), ArtifactStore(artifacts_dir_from_env()), tell_waiting)


def run_job(task: Task, spec_json: str, execute: Callable[[JobSpec, int, list[Callable[[], None]]], JobResult]) -> None:
    """Run one job and send its result, whatever happens, to the results queue; then clean up after it.
    Its directory is this process's until the clean-up is done (workers/leftovers.py)."""
    spec = JobSpec.model_validate_json(spec_json)
    with holding_job(work_dir_from_env(), spec.job_id):
        _run_held_job(task, spec, execute)


def _run_held_job(task: Task, spec: JobSpec,
                  execute: Callable[[JobSpec, int, list[Callable[[], None]]], JobResult]) -> None:  # fmt: skip
    delivery = count_delivery(spec.job_id, spec.result_token)
    if delivery > MAX_DELIVERIES:
        send_result(JobResult(
            job_id=spec.job_id, result_token=spec.result_token, delivery=delivery, result="incomplete",
            error_code="worker-lost",
            error_message=f"the job's worker was lost or failed {MAX_DELIVERIES} times; not retried",
        ))  # fmt: skip
        return
    app.send_task(JOB_STARTED_TASK, args=[spec.job_id, delivery, spec.result_token], queue=RESULTS_QUEUE)
    later: list[Callable[[], None]] = []
    try:
        result = _execute(task, spec, delivery, execute, later)
    except BaseException:  # a retry: clean up before the job runs again
        _run_all(later)
        raise
    try:
        send_result(result.model_copy(update={"result_token": spec.result_token}))
    except ValueError as exc:  # e.g. text a change made that JSON cannot carry: never leave the job hanging
        log.exception("job %s: its result could not be sent", spec.job_id)
        send_result(JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=delivery,
                              result="incomplete", error_code="unsendable-result",
                              error_message=f"the job's result could not be sent: {type(exc).__name__}"))  # fmt: skip
    _run_all(later)


@worker_ready.connect
@worker_process_init.connect
@worker_shutdown.connect
def release_killed_jobs(**_: object) -> None:
    """A job worker's start (and each new pool process's: one replaces a terminated job's) and its end
    release what killed jobs left: their mounts and directories (workers/leftovers.py)."""
    if not is_job_role(configured_role()):
        return
    try:
        sweep_orphans(work_dir_from_env())
    except Exception:  # never keep a worker from starting or stopping: the next sweep tries again
        log.exception("releasing what killed jobs left failed")


@worker_ready.connect
def release_stale_places(**_: object) -> None:
    """A lab worker's start: places still locked as its labgrid user (lab/places.worker_identity) were
    its killed predecessor's; locks never expire, so they are powered off and released now. Only
    the parent does it, once: its pool processes hold places of their own while they run."""
    addresses = os.environ.get(LAB_COORDINATORS_ENV, "").split()
    if not configured_role().startswith("lab.") or not addresses:
        return
    try:
        done = subprocess.run([sys.executable, "-m", "lab.sweep", *addresses], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        for line in done.stdout.splitlines():
            log.warning("start-up sweep: %s", line)
        if done.returncode != 0:
            log.error("start-up sweep of %s failed: %s", addresses, done.stderr[-2000:])
    except Exception:  # never keep a worker from starting: an operator can release by hand (labgate lab)
        log.exception("start-up sweep of %s failed", addresses)


def _execute(task: Task, spec: JobSpec, delivery: int,
             execute: Callable[[JobSpec, int, list[Callable[[], None]]], JobResult],
             later: list[Callable[[], None]]) -> JobResult:  # fmt: skip
    """The job's result, with our own failures turned into results (InfraError retried first)."""
    try:
        if spec.exchange is None:
            return execute(spec, delivery, later)
        # A worker on another host: its inputs fetched first, its outputs uploaded before the result is sent.
        store = ArtifactStore(artifacts_dir_from_env())
        fetch_inputs(spec, store)
        result = execute(spec, delivery, later)
        publish_outputs(spec, result, store)
        return result
    except UserError as exc:
        return JobResult(job_id=spec.job_id, delivery=delivery, result=None,
                         error_code="user-error", error_message=str(exc))  # fmt: skip
    except InfraError as exc:
        if delivery < MAX_DELIVERIES:
            log.warning("job %s: infrastructure error, retrying: %s", spec.job_id, exc)
            raise task.retry(exc=exc, countdown=2**delivery) from exc
        return JobResult(job_id=spec.job_id, delivery=delivery, result=None,
                         error_code="infra-error", error_message=str(exc))  # fmt: skip
    except Exception as exc:  # a bug of ours: report it, never leave the job hanging
        log.exception("job %s crashed", spec.job_id)
        return JobResult(job_id=spec.job_id, delivery=delivery, result=None,
                         error_code="infra-error",
                         error_message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")  # fmt: skip


def _run_all(actions: list[Callable[[], None]]) -> None:
    while actions:
        try:
            actions.pop(0)()
        except Exception:  # cleanup of a finished job: log it, the next job starts clean anyway
            log.exception("cleaning up after a job failed")


def send_result(result: JobResult) -> None:
    app.send_task(RECORD_RESULT_TASK, args=[result.model_dump_json()], queue=RESULTS_QUEUE)


@app.task(name=TASK_NAMES["checkout"], bind=True, max_retries=MAX_DELIVERIES)
def run_checkout(self: Task, spec_json: str) -> None:
    run_job(self, spec_json, execute_checkout)


@app.task(name=TASK_NAMES["build"], bind=True, max_retries=MAX_DELIVERIES)
def run_build_task(self: Task, spec_json: str) -> None:
    run_job(self, spec_json, execute_build)


@app.task(name=TASK_NAMES["test"], bind=True, max_retries=MAX_DELIVERIES)
def run_test(self: Task, spec_json: str) -> None:
    run_job(self, spec_json, execute_test)



@app.task(name=READ_BASE_FILE_TASK, bind=True, max_retries=MAX_DELIVERIES)
def read_base_file_task(self: Task, request_json: str) -> None:
    """A file of the tree at a base, for the control side (bot/intake/base_maintainers.py): the answer goes
    to the results queue like a job's result, with the request's token."""
    request = BaseFileRequest.model_validate_json(request_json)
    try:
        answer = answer_request(request, work_dir_from_env(), ArtifactStore(artifacts_dir_from_env()))
    except InfraError as exc:
        if self.request.retries < MAX_DELIVERIES - 1:
            raise self.retry(exc=exc, countdown=2 ** (self.request.retries + 1)) from exc
        answer = BaseFileAnswer(request_id=request.request_id, token=request.token,
                                problem=f"the checkout worker could not read it: {exc}")  # fmt: skip
    app.send_task(BASE_FILE_READ_TASK, args=[answer.model_dump_json()], queue=RESULTS_QUEUE)


def execute_static(spec: JobSpec, delivery: int, later: list[Callable[[], None]]) -> JobResult:
    """The static stage (workers/static.py): checkpatch, diff --check and kernel-doc with the base's tools."""
    from workers.static import run_static

    assert spec.static is not None
    work_dir = work_dir_from_env()
    store = ArtifactStore(artifacts_dir_from_env())
    mirror = mirror_path(work_dir, spec.tree_name)
    _have_tested_commit(spec, spec.static.head_sha, spec.static.bundle_digest, store)
    outcome = run_static(spec.static, mirror=mirror, job_dir=job_dir(spec),
                         uids=UidRange.from_env(BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS), store=store,
                         max_log_bytes=spec.max_log_bytes)  # fmt: skip
    return JobResult(
        job_id=spec.job_id,
        delivery=delivery,
        result=outcome.result,  # type: ignore[arg-type]
        log_digest=outcome.log_digest,
        command_s=outcome.command_s,
        tests=tuple(outcome.tests),
        outputs={
            "annotations": outcome.annotations,
            "annotations_complete": outcome.annotations_complete,
            "confinement": outcome.confinement,
            "export_s": round(outcome.export_s, 3),
        },
    )


@app.task(name=TASK_NAMES["static"], bind=True, max_retries=MAX_DELIVERIES)
def run_static_task(self: Task, spec_json: str) -> None:
    run_job(self, spec_json, execute_static)
