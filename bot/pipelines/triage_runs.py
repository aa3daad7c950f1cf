"""Triage runs: when a change's test job fails (or reports metrics), re-runs of it and runs at its base
commit, interleaved on the same device class, until bot/core/triage.py can decide; then its verdicts
(bot/pipelines/triage_verdicts.py).

What is triaged: a pre-merge pipeline's own test job (not a triage run, not a health check) that has a
test with status `fail`, or that failed with no test result (its `<job>/boot`, bot/pipelines/history.py),
or whose tests report metrics; and only when its base commit is known (else the raw result stands). A
job that ended `incomplete` is not: that is the lab's, and retries (bot/pipelines/retries.py) have had
their go. A job that failed while every test it ran passed (a crash after them) keeps its raw `fail`.

A triage run is a test job of the change's pipeline with Job.spec["triage"] = {"of", "side", "n"}, written
here only: the change's test job gets spec["triage_state"] "running", then "done" once its TestVerdict rows
are written. Nothing a job's worker sends (outputs, tests) is read as a verdict, a triage mark or a state.

A base run needs the base's build: the pipeline's own base build, or one drafted as bot/core/progress.py
drafts them (role base, build_key) and shared through bot/pipelines/base_builds.py. The base run itself is
shared the same way: its run key (Job.build_key of a test job: the base build's key, the test's recipe, the
class and the run's number at that commit) runs once; a later pipeline takes its result, a concurrent one
follows it (Job.follows_id) and takes its result when it ends.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.progress import BASE_BUILD_PREFIX, job_outcome
from bot.core.reproduce import REPRODUCE_KEY
from bot.core.schedule import job_priority
from bot.core.triage import runs_wanted
from bot.host.stores import Runtime
from bot.pipelines import base_builds, handover, history, lifecycle, scheduler
from bot.pipelines.triage_verdicts import (
    BASE,
    CHANGE,
    CUT_SHORT,
    MARK,
    STATE,
    Context,
    conclude,
    evidence,
    existing_base_build,
    mark_of,
    runs_of,
)
from bot.store.models import Job, Pipeline, TestVerdict, Tree, utcnow
from workers.app import BUILD_QUEUE

if TYPE_CHECKING:
    from bot.pipelines.lifecycle import Outbox

ROUND = "triage_round"  # Job.spec of the change's test job: how many batches of runs it asked for
TRIAGED_KINDS = ("pre-merge",)  # staging pushes are compared head to head and feed the history instead
PRIORITY_DROP = 5  # triage runs go after the normal jobs of the same kind of pipeline
MAX_ROUNDS = 3  # batches of runs: the first, and two for runs that ended without evidence (incomplete)
FAILING_VERDICTS = ("new", "regression")
NOT_COPIED = (STATE, CUT_SHORT, ROUND, "boot_evidence", "avoid_places")  # read afresh at hand-over
FINAL = ("pass", "fail", "skip", "incomplete")  # a base run's result another pipeline may take
NOT_NEEDED = "not-needed"  # a run dropped once the evidence decided
BACK_PRESSURE = "back-pressure"  # a run the class's full queue turned away (bot/pipelines/scheduler.py)


def is_triage_run(job: Job) -> bool:
    return history.triage_of(job) is not None


def judged_outcome(session: Session, job: Job) -> str:
    """A job's word in its pipeline's result: a triaged test job fails only when a verdict of its own is
    new or a regression; every other job as job_outcome says (Job.result itself stays the raw result)."""
    raw = job_outcome(job.result, job.error_code)
    if job.spec.get(STATE) != "done":
        return raw
    # A retest's copy of a job it did not run again (Job.reused_from_id) keeps that job's verdicts.
    judged = job.reused_from_id if job.reused_from_id is not None else job.id
    verdicts = list(session.scalars(select(TestVerdict.verdict).where(TestVerdict.job_id == judged)))
    if not verdicts:  # "done" copied by a retest, or written by no one we know: the raw result stands
        return raw
    if any(verdict in FAILING_VERDICTS for verdict in verdicts):
        return "fail"
    return "pass" if raw == "fail" else raw


def after_result(runtime: Runtime, session: Session, job: Job, outbox: Outbox) -> None:
    """Any job's result was recorded: the history, a shared base run's followers, a change's failed test
    job's triage started, and any triage of the pipeline whose runs all ended moved on."""
    if job.kind == "test" and job.state == "done":
        history.after_test_result(session, job)
        mark = history.triage_of(job)
        if mark is not None and mark.get("side") == BASE and job.build_key is not None and job.follows_id is None:
            _release_followers(runtime, session, job, outbox)
        elif mark is None and _wants_triage(runtime, session, job):
            _start(runtime, session, job)
    advance(runtime, session, job.pipeline, outbox)


def _wants_triage(runtime: Runtime, session: Session, job: Job) -> bool:
    if not runtime.config.triage.enabled:
        return False  # the operator's choice: failures reported as they came
    if job.pipeline.kind not in TRIAGED_KINDS or job.reused_from_id is not None:
        return False
    if any(other.kind == "checkout" and REPRODUCE_KEY in other.spec for other in job.pipeline.jobs):
        return False  # `labgate reproduce` runs exactly the job it reproduces, and says what it did
    if job.spec.get(STATE) == "running":
        return False
    return session.scalar(select(TestVerdict.id).where(TestVerdict.job_id == job.id).limit(1)) is None


def _start(runtime: Runtime, session: Session, job: Job) -> None:
    """A fresh state (a retest's copy carries the old run's), if the job has anything to triage."""
    context = Context.of(runtime, session, job)
    if context.base_sha is None or (not context.failing and not context.metric_paths):
        return  # with no base commit there is nothing to judge against: the raw result stands, as before
    revision = job.pipeline.revision
    if revision.head_sha == context.base_sha:
        # Nothing changed (`labgate try --ref main` on main): a failure would be its own base's, and so
        # "pre-existing", which passes. The run asked about this commit: its raw result stands.
        return
    fresh = {key: value for key, value in job.spec.items() if key not in (STATE, CUT_SHORT, ROUND)}
    job.spec = {**fresh, STATE: "running"}


def advance(runtime: Runtime, session: Session, pipeline: Pipeline, outbox: Outbox) -> None:
    """Each test job of the pipeline under triage whose runs have all ended: more runs, or its verdicts.
    Its waiting runs go after the normal jobs (a base build's end hands them over at the normal priority)."""
    session.flush()
    for job in list(pipeline.jobs):
        if job.state == scheduler.WAITING and is_triage_run(job):
            job.priority = _priority(pipeline)
        if job.kind != "test" or job.spec.get(STATE) != "running" or job.state != "done":
            continue
        for _ in range(MAX_ROUNDS + 1):  # again when a batch ended as it was drafted (back-pressure skips it)
            runs = runs_of(pipeline, job)
            if any(run.state != "done" for run in runs):
                _drop_unneeded(runtime, session, job, runs)
                runs = runs_of(pipeline, job)
            if job.spec.get(STATE) != "running" or any(run.state != "done" for run in runs):
                break
            if any(run.error_code == BACK_PRESSURE for run in runs):
                device_class = job.spec.get("device_class")
                _unjudged(job, f"triage of {job.name} stopped: {device_class}'s queue was full")
                break
            if not _more_runs(runtime, session, job, runs, outbox):
                conclude(runtime, session, job)
                break


def _drop_unneeded(runtime: Runtime, session: Session, job: Job, runs: list[Job]) -> None:
    """Once the evidence so far decides (a base run failed too: pre-existing), the job's runs still waiting
    are not run: they end `skip`, and its verdict comes now rather than after them. A base run another
    pipeline follows is left to run."""
    context = Context.of(runtime, session, job)
    if context.metric_paths or _wanted(session, context, runs) != (0, 0):
        return
    waiting = [run.id for run in runs if run.state in ("pending", scheduler.WAITING)]
    if not waiting:
        return
    followed = set(session.scalars(select(Job.follows_id).where(Job.follows_id.in_(waiting))))
    # Under their row locks, as they are now: a fill sending one of them meanwhile has made it `queued`.
    for run in session.scalars(select(Job).where(Job.id.in_(waiting)).with_for_update()
                               .execution_options(populate_existing=True)):  # fmt: skip
        if run.state in ("pending", scheduler.WAITING) and run.id not in followed:
            run.state, run.result, run.error_code = "done", "skip", NOT_NEEDED  # never taken by another pipeline
            run.error_message = "not needed: the evidence already decides"
            run.follows_id = None
            run.finished_at = utcnow()


def _unjudged(job: Job, why: str) -> None:
    """The lab gave no evidence: the failure is not judged, its raw result stands, and the report says why.
    What stops it here (a full queue, which every submitter's jobs cause together; runs that keep ending
    incomplete, which a change's kernel can cause) must not make a failure pass; only the pipeline's own
    extra-run cap makes one unconfirmed."""
    why = f"{why}; its raw result stands"
    job.spec = {key: value for key, value in job.spec.items() if key not in (STATE, ROUND)} | {CUT_SHORT: why}
    job.pipeline.notes = [*job.pipeline.notes, why]


def _more_runs(runtime: Runtime, session: Session, job: Job, runs: list[Job], outbox: Outbox) -> bool:
    """Draft the next batch of runs the evidence still wants (within the pipeline's cap); False: decide now."""
    context = Context.of(runtime, session, job)
    rounds = int(job.spec.get(ROUND) or 0)
    change, base = _wanted(session, context, runs)
    if (change, base) == (0, 0):
        return False
    if rounds >= MAX_ROUNDS:
        _unjudged(job, f"triage of {job.name} stopped: {rounds} batches of runs ended without the evidence "
                       f"asked for (incomplete)")  # fmt: skip
        return True
    pipeline = job.pipeline
    cap = runtime.config.triage.max_extra_runs
    used = sum(1 for other in pipeline.jobs if is_triage_run(other) and other.error_code != NOT_NEEDED)
    order = interleaved(change, base)
    if len(order) > cap - used:
        given = max(cap - used, 0)
        _cut(job, f"the pipeline's cap of {cap} extra runs was reached: {given} of the {len(order)} runs asked "
                  f"for were drafted")  # fmt: skip
        order = order[:given]
    if not order:
        return False
    job.spec = {**job.spec, ROUND: rounds + 1}
    base_build = _base_build(runtime, session, job, outbox) if BASE in order else None
    ready: list[Job] = []
    numbers = {CHANGE: _last_n(runs, CHANGE), BASE: _last_n(runs, BASE)}
    at_base = history.runs_at(session, context.tree, context.base_sha or "", context.job_name,
                              context.device_class, context.config)  # fmt: skip
    for side in order:
        if side == BASE and base_build is None:
            continue
        numbers[side] += 1
        run = _new_run(session, job, side, numbers[side])
        if side == CHANGE:
            ready.append(run)
            continue
        assert base_build is not None
        at_base += 1
        run.depends_on_id = base_build.id
        run.build_key = run_key(base_build, job, context.device_class, at_base)
        if _share(session, run) or base_build.state != "done":
            continue  # it took or follows another pipeline's run, or waits for its build (lifecycle.after_build)
        if base_build.result == "pass":
            ready.append(run)
        else:
            run.state, run.result = "done", "skip"
            run.error_message = f"not run: build {base_build.name} did not pass"
    hand_over(runtime, session, ready)
    return True


def interleaved(change: int, base: int) -> list[str]:
    """change, base, change, base, ...: a lab that drifts hurts both sides alike."""
    order: list[str] = []
    for index in range(max(change, base)):
        order += [CHANGE] if index < change else []
        order += [BASE] if index < base else []
    return order


def _wanted(session: Session, context: Context, runs: list[Job]) -> tuple[int, int]:
    """The most runs any failing test still wants; metric tests want metric_runs on each side."""
    change = base = 0
    for path in context.failing:
        wanted = runs_wanted(evidence(session, context, path, runs), context.rule)
        change, base = max(change, wanted[0]), max(base, wanted[1])
    if context.metric_paths:
        metric_runs = context.runtime.config.triage.metric_runs
        ran = 1 + sum(1 for run in runs if mark_of(run).get("side") == CHANGE)
        at_base = history.runs_at(session, context.tree, context.base_sha or "", context.job_name,
                                  context.device_class, context.config)  # fmt: skip
        change, base = max(change, metric_runs - ran), max(base, metric_runs - at_base)
    return change, base


def _last_n(runs: list[Job], side: str) -> int:
    return max([int(mark_of(run).get("n") or 0) for run in runs if mark_of(run).get("side") == side], default=0)


def _cut(job: Job, why: str) -> None:
    job.spec = {**job.spec, CUT_SHORT: job.spec.get(CUT_SHORT) or why}


def _new_run(session: Session, job: Job, side: str, n: int) -> Job:
    """A re-run of the change's test job (side change) or its run at the base (side base), pending."""
    spec = {key: value for key, value in job.spec.items() if key not in NOT_COPIED}
    taken = {other.name for other in job.pipeline.jobs}
    name = f"{job.name[:160]} [{side} run {n}]"
    while name in taken:  # a retest's copies keep their names
        name += "'"
    run = Job(pipeline=job.pipeline, kind="test", name=name, queue=job.queue, depends_on_id=job.depends_on_id,
              spec={**spec, MARK: {"of": job.id, "side": side, "n": n}})  # fmt: skip
    session.add(run)
    session.flush()
    return run


def run_key(base_build: Job, job: Job, device_class: str, number: int) -> str:
    """What makes two base runs the same run: the base build (tree, commit, recipe), the test's recipe,
    the class, and which run at that commit it is."""
    recipe = {key: job.spec.get(key) for key in ("name", "kernel", "commands", "kunit", "modules", "timeout_s")}
    identity = ["triage-base-run", base_build.build_key or base_build.id, recipe, device_class, number]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _share(session: Session, run: Job) -> bool:
    """Take a finished base run of the same key, or follow one not finished; False: this one runs."""
    # Serialised per tree, as base builds are: two pipelines drafting at once see each other's run.
    session.scalar(select(Tree.id).where(Tree.id == run.pipeline.revision.change.tree_id).with_for_update())
    session.flush()
    same = select(Job).where(Job.build_key == run.build_key, Job.kind == "test", Job.id != run.id)
    done = session.scalars(same.where(Job.state == "done", Job.result.in_(FINAL), Job.error_code.is_(None))
                           .order_by(Job.id).limit(1)).first()  # fmt: skip
    if done is not None:
        base_builds.take_result(run, done)
        return True
    leader = session.scalars(same.where(Job.state != "done", Job.follows_id.is_(None))
                             .order_by(Job.id).limit(1).with_for_update()).first()  # fmt: skip
    build = session.get(Job, leader.depends_on_id) if leader is not None and leader.depends_on_id else None
    if leader is None or build is None or (build.state, build.result) != ("done", "pass"):
        # Followed only once its build passed: a follower the leader's cancel hands the run to
        # (base_builds.after_cancelled) boots that build, never one that was cancelled with it.
        return False
    # Its build is the leader's (the same key): what it would boot if it has to run after all.
    run.follows_id, run.depends_on_id = leader.id, leader.depends_on_id
    return True


def _release_followers(runtime: Runtime, session: Session, leader: Job, outbox: Outbox) -> None:
    """A shared base run ended: its followers take its result (a run that failed is evidence too), or,
    when ours failed it (no result), the first of them runs it and the others follow that one."""
    session.flush()
    followers = list(session.scalars(select(Job).where(Job.follows_id == leader.id, Job.state == "pending")
                                     .order_by(Job.id).with_for_update()))  # fmt: skip
    if not followers:
        return
    if leader.result in FINAL and leader.error_code is None:
        for follower in followers:
            base_builds.take_result(follower, leader)
            follower.follows_id = None
            _moved_on(runtime, session, follower.pipeline, outbox)
        return
    first, rest = followers[0], followers[1:]
    first.follows_id = None
    for follower in rest:
        follower.follows_id = first.id
    hand_over(runtime, session, [first])
    lifecycle.report_after(first.pipeline, outbox)


def _moved_on(runtime: Runtime, session: Session, pipeline: Pipeline, outbox: Outbox) -> None:
    advance(runtime, session, pipeline, outbox)
    lifecycle.finish_if_done(session, pipeline)
    lifecycle.report_after(pipeline, outbox)


def hand_over(runtime: Runtime, session: Session, runs: list[Job]) -> None:
    """To their class's queue, after the normal jobs of their kind of pipeline."""
    if not runs:
        return
    handover.hand_over_tests(runtime, session, runs)
    for run in runs:
        if run.state == scheduler.WAITING:
            run.priority = _priority(run.pipeline)


def _priority(pipeline: Pipeline) -> int:
    return job_priority(pipeline.kind, pipeline.revision.change.author_trusted) - PRIORITY_DROP


def _base_build(runtime: Runtime, session: Session, job: Job, outbox: Outbox) -> Job | None:
    """The base build for the job's base runs: the pipeline's, or one drafted now as bot/core/progress.py
    drafts them (role base, build_key) and shared through base_builds."""
    pipeline = job.pipeline
    build = session.get(Job, job.depends_on_id) if job.depends_on_id is not None else None
    base_sha = pipeline.revision.base_sha
    found = existing_base_build(session, job)
    if found is not None or build is None or base_sha is None:
        return found
    name = BASE_BUILD_PREFIX + build.name
    spec = {**build.spec, "name": name, "head_sha": base_sha, "trusted": True, "role": "base"}
    base = Job(pipeline=pipeline, kind="build", name=name, queue=BUILD_QUEUE, spec=spec,
               depends_on_id=build.depends_on_id,
               build_key=base_builds.build_key(pipeline.revision.change.tree.name, spec))  # fmt: skip
    session.add(base)
    session.flush()
    base_builds.start(runtime, session, base, outbox)
    return base


