"""Bisection of a staging push's new failure with labgate jobs, step by step (the rules: bot/core/bisect.py).

When a staging push's pipeline (kind post-merge) ends with a test failing that passed at the previous head (the
comparison bot/reporting/job_reports.py's post_merge_comparison makes), one Bisection is started for the first
such test, between the previous head (good) and the new head (bad). Each step is a pipeline of kind
`bisection` (the scheduler's lowest priority) of a change of its own (source `bisection`, external id
"bisection <id>", no forge: it never reports to a forge, and its failures are never bisected themselves). Its
checkout makes the step's commit; its jobs are the bisected test's build (and that build's base build, shared
by every step: the base is the previous head) and the test, `triage.bisect_runs` times.

- The first step tests the new head, and its checkout (list_commits) lists the first-parent commits from the
  previous head to it with their authors: only the worker knows them. The list is the worker's word: its ids
  are checked, its length capped, and it must end at the new head (parse_commit_list); the culprit it leads
  to is then confirmed by reverting it on the new head, which no forged list can make pass.
- Then the midpoints, at most `triage.bisect_max_steps` steps; a step whose runs are mixed stops the bisection
  (the test is flaky there), as does one that could not run the test.
- Last, the culprit reverted on the new head (revert_sha), `bisect_runs` times. The finding and its confidence
  go into the Bisection row, the push pipeline's notes (its page and later reports) and, when the tree mails
  reports, a mail to the tree's report address and to the culprit's author (bisection_mail.py).
- A newer push on the branch supersedes it: when that push's pipeline ends, or when a step of this one
  ends, the bisection is cancelled and its step's unfinished jobs with it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.bisect import (
    SHA,
    Step,
    culprit_wording,
    next_step,
    parse_commit_list,
    steps_as_json,
    steps_from_json,
)
from bot.core.plans import PLAN_PATH, Plan
from bot.core.progress import JobDraft, draft_jobs
from bot.core.triage import compare_results
from bot.host.stores import Runtime
from bot.pipelines import bisection_mail, history, lifecycle
from bot.store.models import Bisection, Change, Job, Pipeline, ResultHistory, Revision, utcnow
from workers.app import CHECKOUT_QUEUE, CONTROL_QUEUE
from workers.spec import CheckoutSpec

if TYPE_CHECKING:
    from bot.pipelines.lifecycle import Outbox

KIND = "bisection"  # Pipeline.kind of a step: bot/core/schedule.py gives its jobs the lowest priority
SOURCE = "bisection"  # Change.source of a bisection's steps: no forge_repo, so no forge ever hears of them
PUSH_KIND = "post-merge"
TEST, REVERT = "test", "revert"
RUNNING = "running"  # a step's verdict while its pipeline runs
MAX_NOTE = 1000


def external_id(bisection_id: int) -> str:
    return f"bisection {bisection_id}"


def after_result(runtime: Runtime, session: Session, pipeline: Pipeline, outbox: Outbox) -> None:
    """A job's result was recorded and may have ended its pipeline: a staging push's ends a bisection it
    supersedes and may start one; a step's moves its bisection on."""
    if pipeline.state != "done":
        return
    if pipeline.kind == PUSH_KIND:
        _after_push(runtime, session, pipeline, outbox)
    elif pipeline.kind == KIND:
        _after_step(runtime, session, pipeline, outbox)


def step_drafts(runtime: Runtime, session: Session, pipeline: Pipeline, plan: Plan, tested_sha: str) -> list[JobDraft]:
    """A step's jobs once its checkout passed: the bisected test (whatever paths or areas it selects by) and its
    build, `bisect_runs` times the test; none when the plan at that commit has no such test. No base build and
    no static stage: nothing is compared with the previous head, so no test is skipped as booting what it boots."""
    bisection = _bisection_of(session, pipeline)
    job = _bisected_job(session, bisection) if bisection is not None else None
    wanted = [test for test in plan.tests if job is not None and test.name == job.spec.get("name")]
    if not wanted:
        pipeline.notes = [f"the bisected test is not in the plan at {tested_sha[:12]}"]
        return []
    test = wanted[0].model_copy(update={"paths": (), "areas": ()})
    builds = tuple(build for build in plan.builds if build.name == test.build)
    narrowed = plan.model_copy(update={"tests": (test,), "builds": builds, "static": None})
    tree = runtime.config.tree(pipeline.revision.change.tree.name)
    drafts = draft_jobs(narrowed, head_sha=tested_sha, changed_files=(), inventory=runtime.config.inventory(),
                        tier=pipeline.tier, max_build_s=runtime.config.caps.max_build_s,
                        network_tiers=tree.lab_grants.network if tree is not None else (),
                        base_sha=None, tree_name=pipeline.revision.change.tree.name,
                        # As lifecycle trusts a push's own build: its plan is the branch's (plan_from head).
                        trusted=all(own.spec.get("plan_from", "head") == "head" for own in pipeline.jobs
                                    if own.kind == "checkout"))  # fmt: skip
    runs = runtime.config.triage.bisect_runs
    repeated = [draft for draft in drafts if draft.kind == "build"]
    for draft in (d for d in drafts if d.kind == "test"):
        repeated += [draft, *(replace(draft, name=f"{draft.name} (run {n})") for n in range(2, runs + 1))]
    return repeated


def _after_push(runtime: Runtime, session: Session, pipeline: Pipeline, outbox: Outbox) -> None:
    change_id = pipeline.revision.change_id
    for older in session.scalars(select(Bisection).join(Pipeline, Bisection.pipeline_id == Pipeline.id)
                                 .join(Revision).where(Revision.change_id == change_id, Bisection.state == RUNNING,
                                                       Revision.id < pipeline.revision_id)):  # fmt: skip
        _cancel(session, older, f"superseded by the newer push's pipeline {pipeline.id}")
    started = session.scalar(select(Bisection.id).where(Bisection.pipeline_id == pipeline.id))
    # One bisection per push: a re-run of the push's pipeline (a retest) starts none of its own.
    if pipeline.result == "cancelled" or pipeline.rerun_of_id is not None or started is not None:
        return
    found = _new_failure(session, pipeline, runtime.config.triage.history)
    if found is None:
        return
    previous, job, path = found
    good, bad = previous.revision.head_sha or "", pipeline.revision.head_sha or ""
    if not (SHA.fullmatch(good) and SHA.fullmatch(bad)) or good == bad:
        return
    bisection = Bisection(pipeline_id=pipeline.id, tree=pipeline.revision.change.tree.name,
                          branch=history.branch_of(pipeline), test_path=f"{history.test_job_name(job)}/{path}"[:500],
                          device_class=str(job.spec.get("device_class") or ""), good_sha=good, bad_sha=bad,
                          state=RUNNING, steps=[])  # fmt: skip
    session.add(bisection)
    session.flush()
    _submit_step(session, bisection, pipeline, bad, outbox, list_commits=True)


def _new_failure(session: Session, pipeline: Pipeline, history_limit: int) -> tuple[Pipeline, Job, str] | None:
    """The previous head's pipeline, and the first test (its job and path) that fails now and did not then,
    and never failed in its branch history; None when there is none, or nothing to compare with (the first
    run, a rewritten branch). A test that failed before on the branch is flaky there: its failure now is no
    news, and its bisection would stop at its first mixed step after spending the lab's time."""
    previous = session.scalar(
        select(Pipeline).join(Revision)
        .where(Revision.change_id == pipeline.revision.change_id, Pipeline.id < pipeline.id,
               Pipeline.kind == PUSH_KIND, Pipeline.state == "done", Pipeline.result != "cancelled")
        .order_by(Pipeline.id.desc())
    )  # fmt: skip
    checkout = next((job for job in pipeline.jobs if job.kind == "checkout"), None)
    if previous is None or (checkout is not None and checkout.outputs.get("base_is_ancestor") is False):
        return None
    compared = compare_results(_statuses(pipeline), _statuses(previous))
    now = {f"{job.name}/{t.path}": (job, t.path, t.status) for job in _test_jobs(pipeline) for t in job.tests}
    # An incomplete run is the lab's: nothing to bisect.
    failing = [(job, path) for job, path, status in (now[key] for key in compared.new) if status == "fail"]
    stable = [(job, path) for job, path in failing if not _failed_before(session, pipeline, job, path, history_limit)]
    if not stable:
        return None
    job, path = stable[0]
    return previous, job, path


def _failed_before(session: Session, pipeline: Pipeline, job: Job, path: str, limit: int) -> bool:
    """Whether the test failed on the branch before this head (its history on the same class and config)."""
    name, config = history.identity(session, job)
    rows = history.history_for(session, pipeline.revision.change.tree.name, history.branch_of(pipeline),
                               f"{name}/{path}", str(job.spec.get("device_class") or ""), config, limit,
                               exclude_commit=pipeline.revision.head_sha)  # fmt: skip
    return any(row.status == "fail" for row in rows)


def _test_jobs(pipeline: Pipeline) -> list[Job]:
    return [job for job in pipeline.jobs if job.kind == "test" and history.triage_of(job) is None]


def _statuses(pipeline: Pipeline) -> dict[str, str]:
    return {f"{job.name}/{test.path}": test.status for job in _test_jobs(pipeline) for test in job.tests}


def _submit_step(session: Session, bisection: Bisection, push: Pipeline, sha: str, outbox: Outbox, *,
                 list_commits: bool = False, revert_sha: str | None = None) -> None:  # fmt: skip
    """A step's pipeline, queued and handed to the control queue once the transaction commits."""
    change = session.scalar(select(Change).where(Change.source == SOURCE,
                                                 Change.external_id == external_id(bisection.id)))  # fmt: skip
    if change is None:
        change = Change(tree=push.revision.change.tree, source=SOURCE, external_id=external_id(bisection.id),
                        title=f"bisection of {bisection.test_path} on {bisection.branch}"[:500], submitter="labgate",
                        author_trusted=True)  # fmt: skip
        session.add(change)
    push_checkout = next((job for job in push.jobs if job.kind == "checkout"), None)
    pushed = push_checkout.spec if push_checkout is not None else {}
    spec = CheckoutSpec(base_ref=bisection.good_sha, ref=sha, plan_path=pushed.get("plan_path", PLAN_PATH),
                        plan_from=pushed.get("plan_from", "head"), list_commits=list_commits,
                        revert_sha=revert_sha)  # fmt: skip
    revision = Revision(change=change, version=len(bisection.steps) + 1, base_ref=bisection.good_sha, ref=sha)
    pipeline = Pipeline(revision=revision, state="queued", kind=KIND, tier=push.tier)
    session.add(Job(pipeline=pipeline, kind="checkout", name="checkout", queue=CHECKOUT_QUEUE,
                    spec=spec.model_dump(mode="json")))  # fmt: skip
    session.flush()
    role = REVERT if revert_sha is not None else TEST
    sha_tested = revert_sha if revert_sha is not None else sha
    bisection.steps = [*bisection.steps, {"sha": sha_tested, "role": role, "pipeline_id": pipeline.id,
                                          "statuses": [], "verdict": RUNNING}]  # fmt: skip
    outbox.add(lifecycle.START_PIPELINE_TASK, [pipeline.id], CONTROL_QUEUE)


def _after_step(runtime: Runtime, session: Session, pipeline: Pipeline, outbox: Outbox) -> None:
    bisection = _bisection_of(session, pipeline, lock=True)  # a newer push's end may be cancelling it
    if bisection is None or bisection.state != RUNNING:
        return
    entries = list(bisection.steps)
    index = next((i for i, e in enumerate(entries) if e.get("pipeline_id") == pipeline.id and e["verdict"] == RUNNING),
                 None)  # fmt: skip
    if index is None:
        return  # recorded already
    push = session.get(Pipeline, bisection.pipeline_id)
    if push is None:
        return
    statuses = _step_statuses(session, bisection, pipeline)
    entries[index] = {**entries[index], **steps_as_json([Step(entries[index]["sha"], statuses)])[0]}
    bisection.steps = entries
    _record_history(session, bisection, pipeline, entries[index])
    newer = session.scalar(select(Pipeline.id).join(Revision).where(Revision.change_id == push.revision.change_id,
                                                                     Pipeline.kind == PUSH_KIND,
                                                                     Revision.id > push.revision_id))  # fmt: skip
    if newer is not None:
        _cancel(session, bisection, f"superseded by the newer push's pipeline {newer}")
        return
    commits, _ = _commit_list(session, bisection)
    if isinstance(commits, str):
        _finish(session, bisection, push, outbox, "failed", message=commits)
        return
    steps = steps_from_json(entries)
    if entries[index]["role"] == REVERT:
        culprit = str(entries[index]["sha"])
        checkout = next((job for job in pipeline.jobs if job.kind == "checkout"), None)
        wording = culprit_wording(commits, steps, culprit, statuses)
        if checkout is not None and checkout.result != "pass" and checkout.error_message:
            wording += f": {_first_line(checkout.error_message)}"
        bisection.culprit_sha = culprit
        _finish(session, bisection, push, outbox, "done", confidence=wording)
        return
    decision = next_step(commits, steps, runtime.config.triage.bisect_max_steps)
    if decision.action == "test":
        _submit_step(session, bisection, push, decision.sha, outbox)
    elif decision.action == "revert":
        _submit_step(session, bisection, push, bisection.bad_sha, outbox, revert_sha=decision.sha)
    else:
        checkout = next((job for job in pipeline.jobs if job.kind == "checkout"), None)
        failed = _first_line(checkout.error_message) if checkout is not None and checkout.result != "pass" else ""
        why = f"{decision.message}: its checkout failed: {failed}" if failed else decision.message
        _finish(session, bisection, push, outbox, "failed", message=why)


def _bisection_of(session: Session, pipeline: Pipeline, *, lock: bool = False) -> Bisection | None:
    """The bisection a step belongs to (its change is "bisection <id>"; labgate names it, nobody else)."""
    change = pipeline.revision.change
    number = change.external_id.removeprefix("bisection ")
    if change.source != SOURCE or not number.isdigit():
        return None
    return session.get(Bisection, int(number), with_for_update=lock)


def _bisected_job(session: Session, bisection: Bisection) -> Job | None:
    """The push pipeline's test job the bisected test failed in."""
    push = session.get(Pipeline, bisection.pipeline_id)
    jobs = _test_jobs(push) if push is not None else []
    return next((job for job in jobs if bisection.test_path.startswith(f"{history.test_job_name(job)}/")
                 and job.spec.get("device_class") == bisection.device_class), None)  # fmt: skip


def _step_statuses(session: Session, bisection: Bisection, pipeline: Pipeline) -> tuple[str, ...]:
    """The bisected test's status in each run of the step ("" where a run has no such result: its build or
    checkout failed, or the test is gone); an `incomplete` run is the lab's."""
    job = _bisected_job(session, bisection)
    path = bisection.test_path.removeprefix(f"{history.test_job_name(job)}/") if job is not None else ""
    found = []
    for run in (j for j in pipeline.jobs if j.kind == "test"):
        statuses = [t.status for t in run.tests if t.path == path]
        found.append(statuses[0] if statuses else ("incomplete" if run.result == "incomplete" else ""))
    return tuple(found) or ("",)


def _commit_list(session: Session, bisection: Bisection) -> tuple[tuple[str, ...], dict[str, str]] | tuple[str, None]:
    """The first step's checkout's list (parse_commit_list), or (why it was refused, None)."""
    first = bisection.steps[0] if bisection.steps else {}
    checkout = session.scalar(select(Job).where(Job.pipeline_id == first.get("pipeline_id"), Job.kind == "checkout"))
    if checkout is None or checkout.result != "pass":
        why = _first_line(checkout.error_message if checkout is not None else None)
        return f"the new head {bisection.bad_sha[:12]} could not be checked out" + (f": {why}" if why else ""), None
    try:
        return parse_commit_list(checkout.outputs.get("commits"), bisection.good_sha, bisection.bad_sha)
    except ValueError as exc:
        return f"the checkout's commit list was refused: {exc}", None


def _first_line(text: str | None) -> str:
    """The first line of a job's error message (a worker's or git's words), short."""
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else ""


def _record_history(session: Session, bisection: Bisection, pipeline: Pipeline, entry: dict[str, object]) -> None:
    """A test step's runs at a commit of the branch, in the result history (source `bisect`); a revert's are
    not the branch's."""
    if entry["role"] != TEST:
        return
    job = _bisected_job(session, bisection)
    build = session.get(Job, job.depends_on_id) if job is not None and job.depends_on_id is not None else None
    config = str(build.spec.get("name") or build.name) if build is not None else ""
    for run, status in zip((j for j in pipeline.jobs if j.kind == "test"), entry["statuses"], strict=False):  # type: ignore[call-overload]
        if status in history.STATUSES:
            session.add(ResultHistory(tree=bisection.tree, branch=bisection.branch, commit=str(entry["sha"]),
                                      test_path=bisection.test_path, device_class=bisection.device_class,
                                      config=config, status=status, source="bisect", job_id=run.id))  # fmt: skip


def _finish(session: Session, bisection: Bisection, push: Pipeline, outbox: Outbox, state: str, *,
            message: str = "", confidence: str = "") -> None:  # fmt: skip
    """The finding (or why there is none) in the row and the push's notes; the mail once this commits."""
    bisection.state, bisection.message, bisection.confidence = state, message, confidence
    bisection.finished_at = utcnow()
    push.notes = [*(push.notes or []), report_line(bisection)[:MAX_NOTE]]
    lifecycle.report_after(push, outbox)  # a forge's summary of the push says it too
    outbox.add(bisection_mail.BISECTION_MAIL_TASK, [bisection.id], CONTROL_QUEUE)


def report_line(bisection: Bisection) -> str:
    """What the push's report says of its bisection."""
    said = bisection.confidence or f"no first bad commit named: {bisection.message}"
    return f"bisection of {bisection.test_path} between {bisection.good_sha[:12]} and {bisection.bad_sha[:12]}: {said}"


def commit_authors(session: Session, bisection: Bisection) -> dict[str, str]:
    """Each listed commit's author as the checkout worker gave it (untrusted text); empty if no list was taken."""
    return _commit_list(session, bisection)[1] or {}


def _cancel(session: Session, bisection: Bisection, reason: str) -> None:
    """Stop a bisection: no step follows, and its running step's unfinished jobs end `cancelled` (a waiting job
    is never dispatched; one a worker already holds runs out, and its result is then ignored)."""
    bisection.state, bisection.message, bisection.finished_at = "cancelled", reason, utcnow()
    running = [int(e["pipeline_id"]) for e in bisection.steps if e.get("verdict") == RUNNING]
    for pipeline in session.scalars(select(Pipeline).where(Pipeline.id.in_(running), Pipeline.state != "done")):
        for job in pipeline.jobs:
            if job.state != "done":
                job.state, job.error_code, job.error_message = "done", "cancelled", reason
                job.finished_at = utcnow()
        pipeline.state, pipeline.result, pipeline.error_message = "done", "cancelled", reason
        pipeline.finished_at = utcnow()
