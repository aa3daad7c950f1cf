"""Pipelines in the store: submit a revision, create and dispatch jobs, record results."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.core.plans import Plan, PlanError, parse_plan
from bot.core.progress import (
    JobDraft,
    check_plan_devices,
    draft_jobs,
    is_base_build,
    job_outcome,
    no_test_ran,
    pipeline_result,
    selection_notes,
)
from bot.core.reproduce import REPRODUCE_KEY, Reproduction, reproduction_drafts
from bot.core.signed_urls import is_digest
from bot.host.config import DeviceClass, config_plan
from bot.host.stores import Runtime

# Modules: they import this one too, and each uses the other only at call time.
from bot.pipelines import base_builds, bisection, change_builds, handover, place_health, retries, scheduler, triage_runs
from bot.pipelines.credentials import remove_checkout_credential, write_checkout_credential
from bot.pipelines.exchange_grants import exchange_url, job_exchange
from bot.store.models import Change, Delivery, Job, Pipeline, Revision, TestResult, Tree, utcnow
from bot.store.once import once_done, record_once
from workers.app import BUILD_QUEUE, CHECKOUT_QUEUE, CONTROL_QUEUE, app, lab_queue
from workers.errors import ConfigError, UserError
from workers.spec import (
    TASK_NAMES,
    ArtifactRef,
    BuildSpec,
    CheckoutSpec,
    JobResult,
    JobSpec,
    LabgridTarget,
    PatchRef,
    QemuSpec,
    StaticSpec,
    TestSpec,
    unsafe_path_reason,
    url_credentials_reason,
)

log = logging.getLogger(__name__)
START_PIPELINE_TASK = "bot.start_pipeline"
REPORT_TASK = "bot.report"


@dataclass(frozen=True)
class Submission:
    """A revision to test, as any intake (CLI, forge hook, API) hands it over."""

    tree_name: str
    tree_url: str
    source: str
    external_id: str
    base_ref: str
    ref: str | None = None
    patches: tuple[tuple[str, bytes], ...] = ()
    base_branches: tuple[str, ...] = ()  # base_ref is a commit that must be on one of these branches
    title: str = ""
    submitter: str = ""
    plan_from: str = "head"
    merge: bool = False  # test the head merged onto the current base (speculative merge)
    head_sha: str | None = None  # known up front for forge changes: reports attach to it
    forge_repo: str | None = None
    number: int | None = None
    installation_id: int | None = None
    author_trusted: bool = True
    kind: str = "pre-merge"
    tier: str = "hardware"  # "qemu": an approved untrusted change may not reach boards
    # `labgate reproduce`: the jobs to run after the checkout instead of the plan's (bot/core/reproduce.py)
    reproduction: Reproduction | None = None


def change_for(session: Session, submission: Submission) -> Change:
    """The submission's change (and tree), created on first sight, brought up to date after."""
    tree = session.scalar(select(Tree).where(Tree.name == submission.tree_name))
    if tree is None:
        tree = Tree(name=submission.tree_name, url=submission.tree_url)
        session.add(tree)
    tree.url = submission.tree_url
    change = session.scalar(
        select(Change).where(
            Change.tree == tree, Change.source == submission.source, Change.external_id == submission.external_id
        )
    )
    if change is None:
        change = Change(
            tree=tree, source=submission.source, external_id=submission.external_id, title=submission.title,
            submitter=submission.submitter, forge_repo=submission.forge_repo, number=submission.number,
            installation_id=submission.installation_id,
        )  # fmt: skip
        session.add(change)
    change.author_trusted = submission.author_trusted
    change.title = submission.title or change.title
    session.flush()
    return change


def check_submission(runtime: Runtime, submission: Submission) -> None:
    """Refuse what no pipeline may carry, before anything is stored (UserError says why)."""
    reason = url_credentials_reason(submission.tree_url)
    if reason:
        raise UserError(f"tree {submission.tree_name}: its URL {reason}")
    cap = runtime.config.caps.max_patch_bytes
    for name, data in submission.patches:
        if len(data) > cap:
            raise UserError(f"{name}: {len(data)} bytes is over the {cap} byte patch cap; nothing was stored")


def submit(runtime: Runtime, submission: Submission, delivery_id: str | None = None, *,
           once_key: str | None = None) -> int:  # fmt: skip
    """Record the revision and a queued pipeline, then hand it to the control queue.
    With `once_key` (bot/store/once.py), a second call returns the first call's pipeline."""
    if once_key is not None:
        with runtime.store.session() as session:
            done = once_done(session, once_key)
        if done is not None:
            # The first attempt may have committed and then failed to enqueue: starting is idempotent.
            app.send_task(START_PIPELINE_TASK, args=[int(done)], queue=CONTROL_QUEUE)
            return int(done)
    check_submission(runtime, submission)
    patch_refs = [{"name": name, "digest": runtime.artifacts.put_bytes(data)} for name, data in submission.patches]
    with runtime.store.session() as session:
        if delivery_id is not None:  # intakes without a delivery record of their own (the CLI, the API)
            session.add(Delivery(source=submission.source, delivery_id=delivery_id, event="submission"))
        change = change_for(session, submission)
        revision = Revision(change=change, version=len(change.revisions) + 1, base_ref=submission.base_ref,
                            ref=submission.ref, patches=patch_refs, head_sha=submission.head_sha)  # fmt: skip
        pipeline = Pipeline(revision=revision, state="queued", kind=submission.kind, tier=submission.tier)
        session.add(pipeline)
        session.flush()
        checkout = CheckoutSpec(base_ref=submission.base_ref, ref=submission.ref,
                                base_branches=submission.base_branches,
                                patches=tuple(PatchRef(**p) for p in patch_refs),
                                plan_from=submission.plan_from, merge=submission.merge)  # type: ignore[arg-type]  # fmt: skip
        reproduction = submission.reproduction
        extra = {REPRODUCE_KEY: reproduction.model_dump(mode="json")} if reproduction is not None else {}
        session.add(Job(pipeline=pipeline, kind="checkout", name="checkout", queue=CHECKOUT_QUEUE,
                        spec={**checkout.model_dump(mode="json"), **extra}))  # fmt: skip
        pipeline_id = pipeline.id
        if once_key is not None:
            record_once(session, once_key, str(pipeline_id))
    app.send_task(START_PIPELINE_TASK, args=[pipeline_id], queue=CONTROL_QUEUE)
    return pipeline_id


def report_after(pipeline: Pipeline, outbox: Outbox) -> None:
    """Forge changes get their checks brought up to date after every state change."""
    if pipeline.revision.change.forge_repo:
        outbox.add(REPORT_TASK, [pipeline.id], CONTROL_QUEUE)


class Outbox:
    """Task messages held until the transaction that decided them has committed,
    so a worker never reports on a job the store does not show as queued yet."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[object], str, str | None]] = []

    def add(self, name: str, args: list[object], queue: str, task_id: str | None = None) -> None:
        self.messages.append((name, args, queue, task_id))

    def send(self) -> None:
        for name, args, queue, task_id in self.messages:
            app.send_task(name, args=args, queue=queue, task_id=task_id)
        self.messages.clear()


def lock_pipeline(session: Session, pipeline_id: int) -> Pipeline | None:
    # Row lock on PostgreSQL: two results of one pipeline are recorded one at a time.
    return session.scalar(select(Pipeline).where(Pipeline.id == pipeline_id).with_for_update())


def start_pipeline(runtime: Runtime, pipeline_id: int) -> None:
    outbox = Outbox()
    with runtime.store.session() as session:
        pipeline = lock_pipeline(session, pipeline_id)
        if pipeline is None or pipeline.state != "queued":
            return  # a redelivered message: already started
        pipeline.state = "running"
        for job in pipeline.jobs:
            if job.state == "pending" and job.depends_on_id is None:
                dispatch(runtime, session, job, outbox)
        report_after(pipeline, outbox)
    outbox.send()


# TestSpec fields the control side decided when it drafted or handed over the job (bot/core/caps.py, retries,
# health checks), carried in Job.spec.
CAPPED_TEST_FIELDS = ("boot_timeout_s", "silence_timeout_s", "max_console_bytes", "network")
DECIDED_TEST_FIELDS = (*CAPPED_TEST_FIELDS, "avoid_places", "health_check_place", "boot_evidence")


def dispatch(runtime: Runtime, session: Session, job: Job, outbox: Outbox, *, flush: bool = True) -> None:
    """Mark a job queued and send it to its queue with everything it needs (never a secret).
    `flush=False`: the caller dispatches many and lets its next query (autoflush) or the commit write
    them together; the messages go only after the commit either way (the Outbox)."""
    tree = job.pipeline.revision.change.tree
    fields: dict[str, object] = {}
    # Digests the job reads: a worker on another host is granted these only, and those a worker made only
    # if that job uploaded them (made_by).
    inputs: list[str] = []
    made_by: int | None = None
    if job.kind == "checkout":
        fields["checkout"] = checkout = CheckoutSpec.model_validate(
            {key: value for key, value in job.spec.items() if key != REPRODUCE_KEY})  # the control side's
        inputs = [patch.digest for patch in checkout.patches]
        write_checkout_credential(runtime, job)
    elif job.kind in ("build", "static"):
        # A build host of its own gets the tested commits as the checkout's bundle (none when it made none).
        checkout_job, bundle = _source_bundle(session, job) if exchange_url() is not None else (None, None)
        inputs, made_by = ([bundle], _maker(session, checkout_job)) if bundle else ([], None)
        # The lab's caps as configured now: nothing the plan says can lift them.
        model = BuildSpec if job.kind == "build" else StaticSpec
        fields[job.kind] = model.model_validate({**job.spec, "limits": runtime.config.caps.build_limits(),
                                                 "bundle_digest": bundle})  # fmt: skip
    else:
        # A health check boots the lab's own kernel and builds nothing: it depends on no build.
        build_job = session.get(Job, job.depends_on_id) if job.depends_on_id is not None else None
        built = build_job.outputs.get("artifacts", {}) if build_job is not None else {}
        dc = runtime.config.device_class(job.spec["device_class"])
        fields["test"] = TestSpec(
            name=job.spec["name"], device_class=dc.name, qemu=QemuSpec(**dc.qemu.model_dump()),
            kernel=job.spec["kernel"], commands=job.spec["commands"], timeout_s=job.spec["timeout_s"],
            artifacts={k: ArtifactRef(**v) for k, v in built.items()},
            kunit=job.spec.get("kunit", False), modules=job.spec.get("modules"), labgrid=_labgrid_target(dc),
            # The lab's caps drafted for this test (bot/core/caps.py); a job drafted before they existed
            # keeps the spec's defaults.
            **{key: job.spec[key] for key in DECIDED_TEST_FIELDS if key in job.spec},
        )  # fmt: skip
        inputs, made_by = [ref["digest"] for ref in built.values()], _maker(session, job.depends_on_id)
    fields["exchange"] = job_exchange(runtime.config, runtime.data_dir, job.id, inputs, made_by=made_by)
    token = secrets.token_urlsafe(24)
    spec = JobSpec(job_id=job.id, pipeline_id=job.pipeline_id, kind=job.kind, tree_name=tree.name,  # type: ignore[arg-type]
                   tree_url=tree.url, max_log_bytes=runtime.config.caps.max_log_bytes, result_token=token,
                   **fields)  # type: ignore[arg-type]  # fmt: skip
    job.result_token_hash = _token_hash(token)  # a redelivery keeps the message, and so the token
    job.state = "queued"
    job.task_id = f"job-{job.id}-{uuid.uuid4().hex[:8]}"
    if flush:
        session.flush()
    outbox.add(TASK_NAMES[job.kind], [spec.model_dump_json()], job.queue, job.task_id)


def _maker(session: Session, job_id: int | None) -> int | None:
    """The job that ran and uploaded a job's outputs: itself, or the one a re-run kept its result from."""
    job = session.get(Job, job_id) if job_id is not None else None
    while job is not None and job.reused_from_id is not None:
        job = session.get(Job, job.reused_from_id)
    return job.id if job is not None else None


def _source_bundle(session: Session, job: Job) -> tuple[int | None, str | None]:
    """The pipeline's checkout job and the digest of the bundle it made of the tested commits, if any."""
    checkout = session.scalars(select(Job).where(Job.pipeline_id == job.pipeline_id, Job.kind == "checkout")).first()
    bundle = checkout.outputs.get("bundle_digest") if checkout is not None else None
    if checkout is None or not isinstance(bundle, str) or not is_digest(bundle):  # a worker's word
        return None, None
    return checkout.id, bundle


def _labgrid_target(dc: DeviceClass) -> LabgridTarget | None:
    """A board class's places for its test jobs, the environment template read now (workers hold no config)."""
    if dc.labgrid is None:
        return None
    try:
        environment = dc.labgrid.environment.read_text()
    except OSError as exc:
        raise ConfigError(f"device class {dc.name}: labgrid environment {dc.labgrid.environment}: {exc}") from exc
    return LabgridTarget(coordinator=dc.labgrid.coordinator, place_tags=dc.labgrid.place_tags,
                         environment=environment)  # fmt: skip


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def holds_token(job: Job, token: str) -> bool:
    """Whether a message comes from the worker that was given this job (constant-time compare)."""
    return job.result_token_hash is not None and hmac.compare_digest(job.result_token_hash, _token_hash(token))


def record_started(runtime: Runtime, job_id: int, delivery: int, token: str = "") -> None:
    outbox = Outbox()
    with runtime.store.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state == "done":
            return
        if not holds_token(job, token):
            log.warning("job %s: start message without the job's token ignored", job_id)
            return
        job.state = "running"
        job.attempts = max(job.attempts, delivery)
        job.started_at = job.started_at or utcnow()
        report_after(job.pipeline, outbox)
    outbox.send()


MAX_WAITING_TEXT = 500  # what a worker says about the places it waits for, kept in the job's outputs


def record_waiting(runtime: Runtime, job_id: int, token: str, why: str) -> None:
    """A running board job waits for a place (who holds them, the worker's word): its report says so
    until its result arrives, which replaces the job's outputs."""
    outbox = Outbox()
    with runtime.store.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != "running" or not holds_token(job, token):
            return
        job.outputs = {**job.outputs, "waiting_for_place": str(why)[:MAX_WAITING_TEXT]}
        report_after(job.pipeline, outbox)
    outbox.send()


def record_result(runtime: Runtime, result: JobResult) -> None:
    """Store a job's result and move its pipeline on. Idempotent: a repeat is ignored."""
    outbox = Outbox()
    with runtime.store.session() as session:
        job = session.get(Job, result.job_id)
        if job is None or lock_pipeline(session, job.pipeline_id) is None:
            return
        session.refresh(job)
        if job.state == "done":
            return
        if not holds_token(job, result.result_token):
            # Another worker (or anyone who can write to the results queue) speaking for a job
            # it was never given: dropped, the job's own worker still reports.
            log.warning("job %s: result without the job's token ignored", result.job_id)
            return
        result = _checked_outputs(job, result)
        job.state = "done"
        job.result = result.result
        job.error_code = result.error_code
        job.error_message = result.error_message
        job.log_digest = result.log_digest
        job.command_s = result.command_s
        job.outputs = dict(result.outputs)
        job.attempts = max(job.attempts, result.delivery)
        job.started_at = job.started_at or utcnow()
        job.finished_at = utcnow()
        for case in result.tests:
            session.add(TestResult(job=job, path=case.path, status=case.status, directive=case.directive,
                                   reason=case.reason, diagnostics=case.diagnostics, caveat=case.caveat))  # fmt: skip
        pipeline = job.pipeline
        if job.kind == "checkout":
            remove_checkout_credential(runtime, job.id)  # the worker removed it; a lost worker did not
            _after_checkout(runtime, session, pipeline, job, outbox)
        elif job.kind == "build":
            after_build(runtime, session, pipeline, job, outbox)
            if job.build_key is not None:
                base_builds.after_result(runtime, session, job, outbox)  # other pipelines waiting for it
        elif job.kind == "test":
            place_health.after_test_result(runtime, session, job)  # counts, before a retry clears the outputs
            retries.after_test_result(runtime, session, job, outbox)
        triage_runs.after_result(runtime, session, job, outbox)  # history, re-runs and base runs, verdicts
        scheduler.after_result(runtime, session, job, outbox)  # a freed slot, or tests handed over: fill
        finish_if_done(session, pipeline)
        bisection.after_result(runtime, session, pipeline, outbox)  # a staging push's new failure; a step's end
        report_after(pipeline, outbox)
    outbox.send()


MAX_ANNOTATIONS = 500  # a static job's annotations kept (workers/spec.py: the worker caps them too)


def _checked_outputs(job: Job, result: JobResult) -> JobResult:
    """A build's artifact names are a worker's word: any that would leave a job dir voids the result.
    A static job's annotations are capped whatever its worker sent."""
    annotations = result.outputs.get("annotations") if job.kind == "static" else None
    if isinstance(annotations, list) and len(annotations) > MAX_ANNOTATIONS:
        result = result.model_copy(update={"outputs": {**result.outputs, "annotations": annotations[:MAX_ANNOTATIONS]}})
    artifacts = result.outputs.get("artifacts", {}) if job.kind == "build" else {}
    bad = [name for name in artifacts if unsafe_path_reason(str(name))] if isinstance(artifacts, dict) else ["?"]
    if not bad:
        return result
    return result.model_copy(update={
        "result": None, "error_code": "infra-error", "outputs": {},
        "error_message": f"the build worker sent artifact names that leave the build dir: {bad[:5]}",
    })  # fmt: skip


def _after_checkout(runtime: Runtime, session: Session, pipeline: Pipeline, job: Job, outbox: Outbox) -> None:
    if job.result != "pass":
        return
    revision = pipeline.revision
    revision.base_sha = str(job.outputs["base_sha"])
    revision.head_sha = str(job.outputs["head_sha"])
    tested_sha = str(job.outputs.get("tested_sha") or revision.head_sha)
    plan_path = job.spec.get("plan_path", ".labgate/plan.yaml")
    plan_text = job.outputs.pop("plan_text", None)
    job.outputs = dict(job.outputs)  # reassign so the JSON column is saved without the plan
    if REPRODUCE_KEY in job.spec:  # `labgate reproduce`: that job's builds and test, not the plan's
        try:
            drafts, pipeline.notes = reproduction_drafts(Reproduction.model_validate(job.spec[REPRODUCE_KEY]),
                                                         tested_sha=tested_sha, base_sha=revision.base_sha,
                                                         inventory=runtime.config.inventory())  # fmt: skip
        except (UserError, KeyError) as exc:  # KeyError: its device class left this machine's config since
            job.result, job.error_code, job.error_message = None, "user-error", f"reproduction: {exc}"
            return
        _create_drafted(runtime, session, pipeline, job, drafts, outbox)
        return
    tree = runtime.config.tree(revision.change.tree.name)
    from_config = config_plan(tree) if tree is not None and not isinstance(plan_text, str) else None
    if from_config is not None:
        # The tree carries no plan (at the head, or at the base for an untrusted change): the operator's.
        plan_text, plan_path = from_config
    inventory = runtime.config.inventory()
    try:
        plan = parse_plan(plan_text if isinstance(plan_text, str) else None, plan_path)  # type: ignore[arg-type]
        check_plan_devices(plan, inventory, plan_path)
    except PlanError as exc:
        job.result = None
        job.error_code = "user-error"
        job.error_message = str(exc)
        return
    if pipeline.kind == bisection.KIND:  # a bisection's step: its one test and build (bot/pipelines/bisection.py)
        _create_drafted(runtime, session, pipeline, job, bisection.step_drafts(runtime, session, pipeline, plan,
                                                                               tested_sha), outbox)  # fmt: skip
        return
    tree_has = job.outputs.get("tree_has")
    maintainers = _maintainers_text(runtime, plan, job)
    drafts = draft_jobs(
        plan,
        head_sha=tested_sha,
        changed_files=list(job.outputs.get("changed_files", [])),  # type: ignore[call-overload]
        inventory=inventory,
        tier=pipeline.tier,
        max_build_s=runtime.config.caps.max_build_s,
        network_tiers=tree.lab_grants.network if tree is not None else (),
        base_sha=revision.base_sha,
        tree_name=revision.change.tree.name,
        # A trusted submitter's plan is the change's own: its build may write warm state.
        trusted=job.spec.get("plan_from", "head") == "head",
        tree_has_checkpatch=isinstance(tree_has, dict) and tree_has.get("checkpatch") is True,
        maintainers_text=maintainers,
    )
    pipeline.notes = [*selection_notes(plan, list(job.outputs.get("changed_files", [])),  # type: ignore[call-overload]
                                       maintainers),
                      *(note for draft in drafts for note in draft.notes)]  # fmt: skip
    _create_drafted(runtime, session, pipeline, job, drafts, outbox)


def _maintainers_text(runtime: Runtime, plan: Plan, checkout: Job) -> str | None:
    """The base's MAINTAINERS as the checkout stored it, when a test of the plan selects by area."""
    digest = checkout.outputs.get("maintainers_digest")
    if not any(test.areas for test in plan.tests) or not isinstance(digest, str):
        return None
    try:
        return runtime.artifacts.get_bytes(digest).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None  # pruned or unreadable: tests with areas then run, and the selection note says why


def _create_drafted(runtime: Runtime, session: Session, pipeline: Pipeline, checkout: Job, drafts: list[JobDraft],
                    outbox: Outbox) -> None:  # fmt: skip
    """Create the drafted jobs and send what can start: the static job first (its result is posted before
    any build's), then the builds; a base build may instead share another pipeline's (base_builds)."""
    builds: dict[str, Job] = {}
    for draft in drafts:
        queue = BUILD_QUEUE if draft.kind in ("build", "static") else lab_queue(draft.device_class or "none")
        new = Job(pipeline=pipeline, kind=draft.kind, name=draft.name, queue=queue,
                  spec=draft.spec if draft.kind != "test" else {**draft.spec, "device_class": draft.device_class},
                  depends_on_id=builds[draft.needs].id if draft.needs else checkout.id)  # fmt: skip
        if draft.skip_reason:
            new.state, new.result, new.error_message = "done", draft.result, draft.skip_reason
        if is_base_build(draft.kind, draft.spec):
            new.build_key = base_builds.build_key(pipeline.revision.change.tree.name, draft.spec)
        session.add(new)
        session.flush()
        if draft.kind == "build":
            builds[draft.name] = new
        if new.build_key is not None:
            base_builds.start(runtime, session, new, outbox)
        elif draft.kind != "test" and draft.needs is None:
            dispatch(runtime, session, new, outbox)
    for build in builds.values():
        if build.build_key is not None and build.state == "done":  # took a finished base build's pass
            after_build(runtime, session, pipeline, build, outbox)


def after_build(runtime: Runtime, session: Session, pipeline: Pipeline, build: Job, outbox: Outbox) -> None:
    """A build ended: the change's build that waits for its base build goes whatever the base ended as
    (there is then no base to compare with); tests go if their build passed, or end as skips."""
    # Also for a failed build: its errors are always reported. Binary identity needs both builds passed.
    identical = change_builds.compare_with_base(session, pipeline, build)
    ready = []
    for job in pipeline.jobs:
        if job.depends_on_id != build.id or job.state != "pending":
            continue
        if job.kind == "build":
            dispatch(runtime, session, job, outbox)
        elif build.result == "pass" and identical:
            # Not run, and not needed: what it would boot is what the base boots.
            job.state, job.result, job.error_message = "done", "skip", identical
            job.finished_at = utcnow()
        elif build.result == "pass":
            ready.append(job)
        else:
            job.state, job.result = "done", "skip"
            job.error_message = f"not run: build {build.name} did not pass"
            job.finished_at = utcnow()
    if ready:
        handover.hand_over_tests(runtime, session, ready)  # they wait in the store for their class's window


def finish_if_done(session: Session, pipeline: Pipeline) -> None:
    session.flush()
    if any(job.state != "done" for job in pipeline.jobs):
        return
    pipeline.state = "done"
    pipeline.finished_at = utcnow()
    # The base's build is not the change's: kept for the comparison and the report, never its result.
    # Nor are triage runs (evidence); a triaged test job fails it only with a new failure or regression.
    counted = [j for j in pipeline.jobs if not is_base_build(j.kind, j.spec) and not triage_runs.is_triage_run(j)]
    outcomes = [triage_runs.judged_outcome(session, j) for j in counted]
    pipeline.result = pipeline_result(outcomes)
    errors = [j for j in counted if job_outcome(j.result, j.error_code) == "error"]
    if errors:
        pipeline.error_code = errors[0].error_code
        pipeline.error_message = errors[0].error_message
    nothing = no_test_ran([(j.result, j.error_message) for j in pipeline.jobs if j.kind == "test"])
    if nothing and pipeline.result in ("pass", "skip"):
        pipeline.result, pipeline.error_code, pipeline.error_message = "incomplete", "no-test-ran", nothing


def pipeline_of_job(runtime: Runtime, job_id: int) -> int | None:
    with runtime.store.session() as session:
        job = session.get(Job, job_id)
        return job.pipeline_id if job else None


def record_delivery(
    session: Session, source: str, delivery_id: str, event: str, status: str = "accepted", detail: str = ""
) -> bool:
    """Store a delivery once; False when it was seen before (a redelivery)."""
    try:
        with session.begin_nested():
            session.add(Delivery(source=source, delivery_id=delivery_id, event=event, status=status, detail=detail))
    except IntegrityError:
        return False
    return True


def delivery_status(runtime: Runtime, source: str, delivery_id: str) -> str | None:
    with runtime.store.session() as session:
        return session.scalar(
            select(Delivery.status).where(Delivery.source == source, Delivery.delivery_id == delivery_id)
        )


def mark_delivery(runtime: Runtime, source: str, delivery_id: str, status: str, detail: str) -> None:
    with runtime.store.session() as session:
        delivery = session.scalar(
            select(Delivery).where(Delivery.source == source, Delivery.delivery_id == delivery_id)
        )
        if delivery is not None:
            delivery.status, delivery.detail = status, detail[:10000]
