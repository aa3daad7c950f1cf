"""Triage runs through the real result path: a change's failing test job is re-run and run at its base
commit, interleaved on its class at a lower priority; base runs are shared by every change on that base;
the extra-run cap cuts short; verdicts decide the pipeline's result, and nothing a job's worker sends
(outputs, tests) is read as a verdict, a triage mark or a crash title that decides."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any

from sqlalchemy import select

from bot.core.reproduce import REPRODUCE_KEY
from bot.host.config import KnownIssueConfig, Scheduling, Triage
from bot.pipelines.history import BOOT
from bot.pipelines.lifecycle import record_result
from bot.pipelines.steering import cancel_pipelines, retest_failed
from bot.pipelines.triage_runs import CUT_SHORT, MARK, STATE
from bot.store.models import Job, Pipeline, ResultHistory
from bot.store.models import TestVerdict as VerdictRow
from tests.bot.pipelines.kernel_lab import (
    BASE,
    PLAN,
    QEMU,
    KernelLab,
    build_outputs,
    run_together,
    spec_of_message,
)
from workers.app import lab_queue
from workers.spec import JobResult, TestCase

TEST = f"{QEMU} boot"  # the job's name; its tests are "boot/<path>" in the history and verdicts
PATH = "boot/hello"
Outcome = Callable[[Job], tuple[str, tuple[TestCase, ...]]]


def failing(_: Job) -> tuple[str, tuple[TestCase, ...]]:
    return "fail", (TestCase(path="hello", status="fail", diagnostics="# hello: expected 1, got 2"),)


def passing(_: Job) -> tuple[str, tuple[TestCase, ...]]:
    return "pass", (TestCase(path="hello", status="pass"),)


def by_side(change: Outcome, base: Outcome) -> Outcome:
    return lambda job: base(job) if job.spec[MARK]["side"] == "base" else change(job)


def queued_test(lab: KernelLab, head: str = "c" * 40) -> tuple[int, Job]:
    """A pipeline whose builds passed and whose test job is queued: its id and the test job."""
    pipeline_id = lab.checked_out(head=head, checkpatch=False)
    jobs = lab.jobs(pipeline_id)
    if jobs["base x86_64"].state != "done":
        lab.report(jobs["base x86_64"].id, outputs=lab.stored(build_outputs("1" * 64)))
    lab.report(jobs["x86_64"].id, outputs=lab.stored(build_outputs(head[:1] * 64)))
    return pipeline_id, lab.jobs(pipeline_id)[TEST]


def finish(lab: KernelLab, job_id: int, outcome: Outcome, outputs: dict[str, Any] | None = None) -> None:
    with lab.runtime.store.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        result, tests = outcome(job)
    lab.report(job_id, result, outputs=outputs or {}, tests=tests)


def drive(lab: KernelLab, outcome: Outcome, *, leave: frozenset[int] = frozenset()) -> list[int]:
    """Play the lab's workers until no test job is queued (but those to `leave`); the job ids in the order
    they were run."""
    ran: list[int] = []
    while True:
        with lab.runtime.store.session() as session:
            queued = list(session.scalars(select(Job.id).where(Job.kind == "test", Job.state == "queued")
                                          .order_by(Job.id)))  # fmt: skip
        sent = [m.job_id for m in lab.messages(lab_queue(QEMU)) if m.job_id in queued and m.job_id not in leave]
        if not sent:
            return ran
        finish(lab, sent[0], outcome)
        ran.append(sent[0])


def triage_runs(lab: KernelLab, pipeline_id: int) -> list[Job]:
    return sorted((job for job in lab.jobs(pipeline_id).values() if MARK in job.spec), key=lambda job: job.id)


def verdicts(lab: KernelLab, pipeline_id: int) -> dict[str, VerdictRow]:
    with lab.runtime.store.session() as session:
        rows = session.scalars(select(VerdictRow).where(VerdictRow.pipeline_id == pipeline_id)).all()
        session.expunge_all()
        return {row.test_path: row for row in rows}


def with_triage(lab: KernelLab, **settings: Any) -> KernelLab:
    config = lab.runtime.config.model_copy(update={"triage": Triage(**settings)})
    return dataclasses.replace(lab, runtime=dataclasses.replace(lab.runtime, config=config))


def test_a_new_failure_is_rerun_interleaved_with_base_runs_and_fails_the_pipeline(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    finish(kernel_lab, test.id, failing)
    runs = triage_runs(kernel_lab, pipeline_id)
    assert [(r.spec[MARK]["side"], r.spec[MARK]["n"]) for r in runs] == [
        ("change", 1), ("base", 1), ("change", 2), ("base", 2), ("change", 3), ("base", 3), ("base", 4)]
    assert all(r.spec[MARK]["of"] == test.id for r in runs)
    assert kernel_lab.jobs(pipeline_id)[TEST].spec[STATE] == "running"
    base_build = kernel_lab.jobs(pipeline_id)["base x86_64"]
    assert {r.depends_on_id for r in runs if r.spec[MARK]["side"] == "base"} == {base_build.id}
    assert {r.depends_on_id for r in runs if r.spec[MARK]["side"] == "change"} == {test.depends_on_id}
    # The class's window (4) holds the first four, in the interleaved order, behind normal jobs.
    sent = [m.job_id for m in kernel_lab.messages(lab_queue(QEMU))]
    assert sent == [test.id, *(r.id for r in runs[:4])]
    assert all(r.priority < test.priority for r in triage_runs(kernel_lab, pipeline_id))
    assert kernel_lab.pipeline(pipeline_id).state == "running"  # waits for its evidence
    ran = drive(kernel_lab, by_side(failing, passing))
    assert ran == [r.id for r in runs]  # interleaved as drafted
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.evidence) == ("new", "failed 4/4 with the change, 0/4 on base")
    assert (verdict.change_runs, verdict.change_fails, verdict.base_runs, verdict.base_fails) == (4, 4, 4, 0)
    assert verdict.job_id == test.id and verdict.p_value is not None and verdict.p_value <= 0.02
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.state, pipeline.result) == ("done", "fail")
    after = kernel_lab.jobs(pipeline_id)[TEST]
    assert (after.result, after.spec[STATE]) == ("fail", "done")  # the raw result stays
    with kernel_lab.runtime.store.session() as session:
        rows = session.scalars(select(ResultHistory).where(ResultHistory.test_path == PATH)).all()
        assert sorted((r.commit, r.status, r.source) for r in rows) == sorted(
            [(BASE, "pass", "base-run")] + [(BASE, "pass", "rerun")] * 3)  # the change's runs are not history
        assert {(r.branch, r.config, r.device_class) for r in rows} == {("master", "x86_64", QEMU)}


def test_a_base_run_is_shared_by_two_changes_on_one_base(kernel_lab: KernelLab) -> None:
    first_id, first = queued_test(kernel_lab, "c" * 40)
    second_id, second = queued_test(kernel_lab, "d" * 40)
    finish(kernel_lab, first.id, failing)
    finish(kernel_lab, second.id, failing)
    leaders = [r for r in triage_runs(kernel_lab, first_id) if r.spec[MARK]["side"] == "base"]
    followers = [r for r in triage_runs(kernel_lab, second_id) if r.spec[MARK]["side"] == "base"]
    assert [f.follows_id for f in followers] == [leader.id for leader in leaders]
    assert all(f.state == "pending" for f in followers)
    ran = drive(kernel_lab, by_side(failing, passing))
    base_ran = [job_id for job_id in ran if job_id in {r.id for r in [*leaders, *followers]}]
    assert base_ran == [leader.id for leader in leaders]  # four base runs in all, not eight
    after = [r for r in triage_runs(kernel_lab, second_id) if r.spec[MARK]["side"] == "base"]
    assert [(r.state, r.result, r.reused_from_id) for r in after] == [("done", "pass", lead.id) for lead in leaders]
    for pipeline_id in (first_id, second_id):
        verdict = verdicts(kernel_lab, pipeline_id)[PATH]
        assert (verdict.verdict, verdict.base_runs, verdict.base_fails) == ("new", 4, 0)
        assert kernel_lab.pipeline(pipeline_id).result == "fail"
    # A third change on that base later: the base's four runs are known, only its own re-runs go.
    third_id, third = queued_test(kernel_lab, "e" * 40)
    finish(kernel_lab, third.id, failing)
    assert [r.spec[MARK]["side"] for r in triage_runs(kernel_lab, third_id)] == ["change"] * 3
    drive(kernel_lab, failing)
    assert verdicts(kernel_lab, third_id)[PATH].verdict == "new"


def test_a_failure_on_the_base_too_is_pre_existing_and_passes(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    finish(kernel_lab, test.id, failing)
    ran = drive(kernel_lab, failing)
    runs = triage_runs(kernel_lab, pipeline_id)
    # The base's first failure decides: what had not been sent by then is dropped, never sent.
    assert ran == [r.id for r in runs[:5]] and [r.spec[MARK]["side"] for r in runs[5:]] == ["base", "base"]
    assert [(r.result, r.error_code) for r in runs[5:]] == [("skip", "not-needed")] * 2
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.evidence) == ("pre-existing", "fails on base too (2/2)")
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.state, pipeline.result) == ("done", "pass")
    assert kernel_lab.jobs(pipeline_id)[TEST].result == "fail"


def test_a_flaky_base_history_gives_flaky_without_reruns(kernel_lab: KernelLab) -> None:
    with kernel_lab.runtime.store.session() as session:
        for index, status in enumerate(["pass", "fail", "pass", "pass", "fail", "pass"]):
            session.add(ResultHistory(tree="linux", branch="master", commit=f"{index:040x}", test_path=PATH,
                                      device_class=QEMU, config="x86_64", status=status, source="staging"))  # fmt: skip
    pipeline_id, test = queued_test(kernel_lab)
    finish(kernel_lab, test.id, failing)
    assert triage_runs(kernel_lab, pipeline_id) == []
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.evidence) == ("flaky", f"base history mixed on {QEMU} (2 of 6 failed)")
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.state, pipeline.result) == ("done", "pass")


def test_the_extra_run_cap_cuts_short_and_the_failure_is_unconfirmed(kernel_lab: KernelLab) -> None:
    lab = with_triage(kernel_lab, max_extra_runs=3)
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    runs = triage_runs(lab, pipeline_id)
    assert [r.spec[MARK]["side"] for r in runs] == ["change", "base", "change"]
    drive(lab, by_side(failing, passing))
    verdict = verdicts(lab, pipeline_id)[PATH]
    cut = "the pipeline's cap of 3 extra runs was reached: 3 of the 7 runs asked for were drafted"
    assert (verdict.verdict, verdict.cut_short) == ("unconfirmed", cut)
    assert cut in verdict.evidence and lab.jobs(pipeline_id)[TEST].spec[CUT_SHORT] == cut
    assert lab.pipeline(pipeline_id).result == "pass"  # cut short is not new


def test_a_boot_failure_with_no_test_result_is_triaged_as_the_jobs_boot(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    kernel_lab.report(test.id, "fail", outputs={})
    assert len(triage_runs(kernel_lab, pipeline_id)) == 7
    drive(kernel_lab, by_side(lambda _: ("fail", ()), passing))
    verdict = verdicts(kernel_lab, pipeline_id)[f"boot/{BOOT}"]
    assert (verdict.verdict, verdict.change_fails, verdict.base_runs) == ("new", 4, 4)


def test_a_passing_pipeline_runs_nothing_more_and_writes_no_verdict(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    finish(kernel_lab, test.id, passing)
    assert triage_runs(kernel_lab, pipeline_id) == [] and verdicts(kernel_lab, pipeline_id) == {}
    assert STATE not in kernel_lab.jobs(pipeline_id)[TEST].spec
    assert kernel_lab.pipeline(pipeline_id).result == "pass"


def test_with_triage_off_a_failure_fails_at_once_and_nothing_more_runs(kernel_lab: KernelLab) -> None:
    lab = with_triage(kernel_lab, enabled=False)
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    assert triage_runs(lab, pipeline_id) == [] and verdicts(lab, pipeline_id) == {}
    assert STATE not in lab.jobs(pipeline_id)[TEST].spec
    assert (lab.pipeline(pipeline_id).state, lab.pipeline(pipeline_id).result) == ("done", "fail")


def test_a_run_of_the_base_itself_keeps_its_failure(kernel_lab: KernelLab) -> None:
    """Attack: `labgate try --ref main` on main (head == base). Its failure at its own base would be
    "pre-existing" and pass: nothing is triaged, the raw failure stands."""
    checkout_id = kernel_lab.new_checkout()
    kernel_lab.pass_checkout(checkout_id, head=BASE, checkpatch=False)
    pipeline_id = kernel_lab.pipeline_of(checkout_id)
    for job in kernel_lab.jobs(pipeline_id).values():
        if job.kind == "build" and job.state == "queued":
            kernel_lab.report(job.id, outputs=kernel_lab.stored(build_outputs("1" * 64)))
    test = kernel_lab.jobs(pipeline_id)[TEST]
    finish(kernel_lab, test.id, failing)
    assert triage_runs(kernel_lab, pipeline_id) == [] and verdicts(kernel_lab, pipeline_id) == {}
    assert (kernel_lab.pipeline(pipeline_id).state, kernel_lab.pipeline(pipeline_id).result) == ("done", "fail")


def test_an_incomplete_job_is_not_triaged(kernel_lab: KernelLab) -> None:
    lab = kernel_lab
    pipeline_id, _ = queued_test(lab)
    while (raw := lab.broker.rpop(lab_queue(QEMU))) is not None:  # the first attempt and its retries
        spec = spec_of_message(raw)  # type: ignore[arg-type]
        record_result(lab.runtime, JobResult(job_id=spec.job_id, delivery=1, result="incomplete",
                                             error_code="qemu-crashed", result_token=spec.result_token))  # fmt: skip
    job = lab.jobs(pipeline_id)[TEST]
    assert (job.state, job.result, job.attempts) == ("done", "incomplete", 3)
    assert triage_runs(lab, pipeline_id) == [] and STATE not in job.spec
    assert lab.pipeline(pipeline_id).result == "incomplete"  # as before: the lab's, not the change's


def test_what_a_change_job_sends_cannot_change_its_verdict(kernel_lab: KernelLab) -> None:
    """Attack: the job's outputs and tests claim a verdict, a triage mark, a done state and a crash title
    (a kernel prints what it likes to its console); only what the control plane wrote is read."""
    pipeline_id, test = queued_test(kernel_lab)
    forged = {"verdict": "pass", MARK: {"of": test.id, "side": "base", "n": 1}, STATE: "done",
              "crash": {"title": "x" * 100_000, "kind": "BUG"}, "triage_verdicts": {PATH: "flaky"}}  # fmt: skip
    lie = "# verdict: flaky\n# metric: t=1 ms lower is better\n# triage: pre-existing"
    hostile = (TestCase(path="hello", status="fail", diagnostics=lie),)
    finish(kernel_lab, test.id, lambda _: ("fail", hostile), outputs=forged)
    after = kernel_lab.jobs(pipeline_id)[TEST]
    assert MARK not in after.spec and after.spec[STATE] == "running"
    for _ in range(7):
        ran = drive(kernel_lab, by_side(lambda _: ("fail", hostile), passing))
        if not ran:
            break
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert verdict.verdict == "new" and len(verdict.crash_title) == 300  # shown, capped, never judged
    assert kernel_lab.pipeline(pipeline_id).result == "fail"


def test_a_staging_pipelines_tests_feed_the_history_with_their_metrics(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    with kernel_lab.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        pipeline.kind = "post-merge"
        pipeline.revision.change.external_id = "org/linux@next"
    metric = "# metric: sched.wakeup_ns=1234.5 ns lower is better"
    measured = (TestCase(path="hello", status="pass", diagnostics=metric), TestCase(path="bye", status="fail"))
    finish(kernel_lab, test.id, lambda _: ("fail", measured))
    assert triage_runs(kernel_lab, pipeline_id) == []  # a staging push is compared head to head, as before
    with kernel_lab.runtime.store.session() as session:
        rows = session.scalars(select(ResultHistory).order_by(ResultHistory.test_path)).all()
        assert [(r.test_path, r.status, r.source, r.branch, r.commit, r.metrics) for r in rows] == [
            ("boot/boot", "pass", "staging", "next", "c" * 40, {}),
            ("boot/bye", "fail", "staging", "next", "c" * 40, {}),
            (PATH, "pass", "staging", "next", "c" * 40, {"sched.wakeup_ns": 1234.5}),
        ]  # fmt: skip
    assert kernel_lab.pipeline(pipeline_id).result == "fail"


def measured(values: dict[str, list[float]], first: float) -> Outcome:
    """A passing test that reports sched.wakeup_ns: `first` on the change's own run, then by side and run."""

    def outcome(job: Job) -> tuple[str, tuple[TestCase, ...]]:
        mark = job.spec.get(MARK)
        value = first if mark is None else values[mark["side"]][mark["n"] - 1]
        line = f"# metric: sched.wakeup_ns={value} ns lower is better"
        return "pass", (TestCase(path="hello", status="pass", diagnostics=line),)

    return outcome


def test_a_slowdown_in_a_reported_metric_is_a_regression(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    slow = measured({"change": [115, 116, 114, 117], "base": [100, 101, 99, 100, 102]}, 115)
    finish(kernel_lab, test.id, slow)
    runs = triage_runs(kernel_lab, pipeline_id)
    assert [r.spec[MARK]["side"] for r in runs] == ["change", "base"] * 4 + ["base"]  # metric_runs 5 a side
    drive(kernel_lab, slow)
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert verdict.verdict == "regression" and verdict.evidence.startswith("sched.wakeup_ns +15% (p=")
    assert (verdict.change_runs, verdict.base_runs) == (5, 5)
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.result, kernel_lab.jobs(pipeline_id)[TEST].result) == ("fail", "pass")


def test_noise_in_a_reported_metric_passes(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    noise = measured({"change": [101, 99, 100, 102], "base": [100, 101, 99, 100, 102]}, 100)
    finish(kernel_lab, test.id, noise)
    drive(kernel_lab, noise)
    assert verdicts(kernel_lab, pipeline_id)[PATH].verdict == "pass"
    assert kernel_lab.pipeline(pipeline_id).result == "pass"


def test_a_change_cannot_dodge_its_comparison(kernel_lab: KernelLab) -> None:
    """Attack: its re-runs print no number (nan) and call the metric `higher is better`; the base's runs
    declare which way is better, and a metric the base measures must be measured with the change."""
    pipeline_id, test = queued_test(kernel_lab)
    base = measured({"change": [], "base": [100, 101, 99, 100, 102]}, 0)

    def dodging(job: Job) -> tuple[str, tuple[TestCase, ...]]:
        if job.spec.get(MARK, {}).get("side") == "base":
            return base(job)
        return "pass", (TestCase(path="hello", status="pass",
                                 diagnostics="# metric: sched.wakeup_ns=nan ns higher is better"),)  # fmt: skip

    first = "# metric: sched.wakeup_ns=200 ns higher is better"
    finish(kernel_lab, test.id, lambda _: ("pass", (TestCase(path="hello", status="pass", diagnostics=first),)))
    drive(kernel_lab, dodging)
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.evidence) == (
        "regression", "sched.wakeup_ns: reported on base (5 runs), not in 4 of 5 runs with the change")
    assert kernel_lab.pipeline(pipeline_id).result == "fail"


def test_a_base_whose_build_fails_makes_the_failure_pre_existing_without_runs(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out(checkpatch=False)
    jobs = kernel_lab.jobs(pipeline_id)
    kernel_lab.report(jobs["base x86_64"].id, "fail", outputs=build_outputs(""))
    kernel_lab.report(jobs["x86_64"].id, outputs=kernel_lab.stored(build_outputs("2" * 64)))
    finish(kernel_lab, jobs[TEST].id, failing)
    assert triage_runs(kernel_lab, pipeline_id) == []
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.evidence) == ("pre-existing", "the base's build fails")
    assert kernel_lab.pipeline(pipeline_id).result == "pass"


COMMAND_PLAN = PLAN.replace("kernel: {arch: x86_64, config: tinyconfig, targets: [image, modules]}",
                            "command: make\n    artifacts: [bzImage, modules.tar.gz]")  # fmt: skip
COMMAND_OUTPUTS = {"artifacts": {"bzImage": {"digest": "a" * 64, "mode": 0o644}}}


def test_a_command_build_gets_one_shared_base_build_for_its_base_runs(kernel_lab: KernelLab) -> None:
    pipelines = [kernel_lab.checked_out(plan=COMMAND_PLAN, checkpatch=False, head=h * 40) for h in "cd"]
    for pipeline_id in pipelines:
        jobs = kernel_lab.jobs(pipeline_id)
        assert "base x86_64" not in jobs  # nothing to compare a command build with
        kernel_lab.report(jobs["x86_64"].id, outputs=kernel_lab.stored(COMMAND_OUTPUTS))
        finish(kernel_lab, jobs[TEST].id, failing)
    bases = [kernel_lab.jobs(p)["base x86_64"] for p in pipelines]
    assert [(b.spec["role"], b.spec["head_sha"], b.spec["trusted"]) for b in bases] == [("base", BASE, True)] * 2
    assert (bases[0].state, bases[1].follows_id) == ("queued", bases[0].id)  # one build of the base
    assert [m.job_id for m in kernel_lab.messages() if m.build is not None and m.build.role == "base"] == [bases[0].id]
    kernel_lab.report(bases[0].id, outputs=kernel_lab.stored(COMMAND_OUTPUTS))
    drive(kernel_lab, by_side(failing, passing))
    for pipeline_id in pipelines:
        assert verdicts(kernel_lab, pipeline_id)[PATH].verdict == "new"
        assert kernel_lab.pipeline(pipeline_id).result == "fail"


def test_a_known_issue_explains_the_failure_without_reruns(kernel_lab: KernelLab) -> None:
    issue = KnownIssueConfig(id="KI-7", test="boot/hel*", log="expected 1", expires=date(2999, 1, 1))
    config = kernel_lab.runtime.config.model_copy(update={"known_issues": [issue]})
    lab = dataclasses.replace(kernel_lab, runtime=dataclasses.replace(kernel_lab.runtime, config=config))
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    assert triage_runs(lab, pipeline_id) == []
    verdict = verdicts(lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.known_issue) == ("known-issue", "KI-7")
    assert lab.pipeline(pipeline_id).result == "pass"


def test_a_cancelled_leaders_base_runs_go_to_its_followers_with_the_base_build(kernel_lab: KernelLab) -> None:
    """Attack: a change that leads the base runs is superseded (its author pushes again) while another
    change follows them: the follower runs them itself, booting the base build, never nothing."""
    first_id, first = queued_test(kernel_lab, "c" * 40)
    second_id, second = queued_test(kernel_lab, "d" * 40)
    finish(kernel_lab, first.id, failing)
    finish(kernel_lab, second.id, failing)
    cancel_pipelines(kernel_lab.runtime, [first_id], "superseded")
    followers = [r for r in triage_runs(kernel_lab, second_id) if r.spec[MARK]["side"] == "base"]
    assert all(r.follows_id is None and r.state == "queued" for r in followers)
    base_build = kernel_lab.jobs(first_id)["base x86_64"]
    for run in followers:
        sent = kernel_lab.message_for(run.id, lab_queue(QEMU)).test
        assert sent is not None and sent.artifacts["arch/x86/boot/bzImage"].digest == (
            base_build.outputs["artifacts"]["arch/x86/boot/bzImage"]["digest"])
    drive(kernel_lab, by_side(failing, passing))
    verdict = verdicts(kernel_lab, second_id)[PATH]
    assert (verdict.verdict, verdict.base_runs, verdict.base_fails) == ("new", 4, 0)
    assert kernel_lab.pipeline(second_id).result == "fail"


def test_a_retest_keeps_the_verdicts_of_a_job_it_does_not_run_again(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    finish(kernel_lab, test.id, failing)
    drive(kernel_lab, failing)
    assert kernel_lab.pipeline(pipeline_id).result == "pass"  # pre-existing
    again = retest_failed(kernel_lab.runtime, pipeline_id, f"{TEST} [change run 1]")
    assert again is not None
    copy = kernel_lab.jobs(again)[TEST]
    assert (copy.state, copy.result, copy.reused_from_id) == ("done", "fail", test.id)
    drive(kernel_lab, failing)
    assert kernel_lab.pipeline(again).result == "pass"  # still pre-existing, not the raw fail


def test_a_reproduction_runs_exactly_its_job_untriaged(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)
    with kernel_lab.runtime.store.session() as session:
        checkout = session.scalars(select(Job).where(Job.pipeline_id == pipeline_id, Job.kind == "checkout")).one()
        checkout.spec = {**checkout.spec, REPRODUCE_KEY: {"job_id": 1}}
    finish(kernel_lab, test.id, failing)
    assert triage_runs(kernel_lab, pipeline_id) == [] and verdicts(kernel_lab, pipeline_id) == {}
    assert kernel_lab.pipeline(pipeline_id).result == "fail"  # `labgate reproduce` exits 1 with the failing test


def test_a_test_that_failed_on_the_base_and_passes_with_the_change_is_fixed(kernel_lab: KernelLab) -> None:
    pipeline_id, test = queued_test(kernel_lab)

    def outcome(job: Job) -> tuple[str, tuple[TestCase, ...]]:
        on_base = job.spec.get(MARK, {}).get("side") == "base"
        return "fail", (TestCase(path="hello", status="pass" if on_base else "fail"),
                        TestCase(path="bye", status="fail" if on_base else "pass"))  # fmt: skip

    finish(kernel_lab, test.id, outcome)
    drive(kernel_lab, outcome)
    found = verdicts(kernel_lab, pipeline_id)
    assert found[PATH].verdict == "new"
    fixed = found["boot/bye"]
    assert (fixed.verdict, fixed.evidence) == ("fixed", "passed 4/4 with the change, failed 4/4 on base")


def test_changes_failing_at_once_on_one_base_share_its_runs(kernel_lab: KernelLab) -> None:
    queued = [queued_test(kernel_lab, f"{n:x}" * 40) for n in range(3, 7)]  # the class's window holds four
    run_together([partial(finish, kernel_lab, test.id, failing) for _, test in queued])
    base_runs = [r for pipeline_id, _ in queued for r in triage_runs(kernel_lab, pipeline_id)
                 if r.spec[MARK]["side"] == "base"]  # fmt: skip
    leaders = [r for r in base_runs if r.follows_id is None and r.reused_from_id is None]
    assert len(leaders) == 4 and len(base_runs) == 16
    drive(kernel_lab, by_side(failing, passing))
    with kernel_lab.runtime.store.session() as session:
        ran = set(session.scalars(select(ResultHistory.job_id).where(ResultHistory.test_path == PATH)))
    assert ran == {r.id for r in leaders}  # four base runs in all
    assert all(verdicts(kernel_lab, pipeline_id)[PATH].verdict == "new" for pipeline_id, _ in queued)


def test_a_full_queue_never_turns_a_failure_into_a_pass(kernel_lab: KernelLab) -> None:
    """Attack: the class's queue is full (other changes, maybe the submitter's own, fill it) and turns the
    triage runs away; the failure is not judged unconfirmed and passed: its raw result stands, said."""
    config = kernel_lab.runtime.config.model_copy(update={"scheduling": Scheduling(max_waiting_per_class=1)})
    lab = dataclasses.replace(kernel_lab, runtime=dataclasses.replace(kernel_lab.runtime, config=config))
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    assert [r.error_code for r in triage_runs(lab, pipeline_id)][-2:] == ["back-pressure"] * 2
    drive(lab, by_side(failing, passing))
    job = lab.jobs(pipeline_id)[TEST]
    why = f"triage of {TEST} stopped: {QEMU}'s queue was full; its raw result stands"
    assert STATE not in job.spec and job.spec[CUT_SHORT] == why
    assert verdicts(lab, pipeline_id) == {}
    pipeline = lab.pipeline(pipeline_id)
    assert (pipeline.result, pipeline.notes[-1]) == ("fail", job.spec[CUT_SHORT])


def test_reruns_that_keep_ending_incomplete_leave_the_failure_unjudged(kernel_lab: KernelLab) -> None:
    """A change's kernel can make QEMU exit on its own (`incomplete`, the lab's word): runs that never give
    evidence do not make its failure unconfirmed and passed."""
    lab = with_triage(kernel_lab, reruns=1)
    pipeline_id, test = queued_test(lab)
    finish(lab, test.id, failing)
    drive(lab, by_side(lambda _: ("incomplete", ()), passing))
    change_runs = [r for r in triage_runs(lab, pipeline_id) if r.spec[MARK]["side"] == "change"]
    assert len(change_runs) == 3 and {r.result for r in change_runs} == {"incomplete"}  # three batches
    job = lab.jobs(pipeline_id)[TEST]
    assert STATE not in job.spec and "3 batches of runs ended without the evidence" in job.spec[CUT_SHORT]
    assert verdicts(lab, pipeline_id) == {} and lab.pipeline(pipeline_id).result == "fail"


def test_a_drafted_base_build_that_fails_makes_the_failure_pre_existing(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out(plan=COMMAND_PLAN, checkpatch=False)
    jobs = kernel_lab.jobs(pipeline_id)
    kernel_lab.report(jobs["x86_64"].id, outputs=kernel_lab.stored(COMMAND_OUTPUTS))
    finish(kernel_lab, jobs[TEST].id, failing)
    base_build = kernel_lab.jobs(pipeline_id)["base x86_64"]
    kernel_lab.report(base_build.id, "fail", outputs={})
    base_runs = [r for r in triage_runs(kernel_lab, pipeline_id) if r.spec[MARK]["side"] == "base"]
    assert {(r.state, r.result) for r in base_runs} == {("done", "skip")}  # nothing to boot
    drive(kernel_lab, failing)
    verdict = verdicts(kernel_lab, pipeline_id)[PATH]
    assert (verdict.verdict, verdict.evidence) == ("pre-existing", "the base's build fails")
    assert kernel_lab.pipeline(pipeline_id).result == "pass"


TWO_TESTS = PLAN + PLAN[PLAN.index("  - name: boot"):].replace("name: boot", "name: again")  # the same test again


def test_runs_dropped_as_not_needed_do_not_count_against_the_cap(kernel_lab: KernelLab) -> None:
    lab = with_triage(kernel_lab, max_extra_runs=7)
    pipeline_id = lab.checked_out(plan=TWO_TESTS, checkpatch=False)
    jobs = lab.jobs(pipeline_id)
    lab.report(jobs["base x86_64"].id, outputs=lab.stored(build_outputs("1" * 64)))
    lab.report(jobs["x86_64"].id, outputs=lab.stored(build_outputs("2" * 64)))
    other = f"{QEMU} again"
    finish(lab, jobs[TEST].id, failing)  # its seven runs: the whole cap
    drive(lab, failing, leave=frozenset({jobs[other].id}))
    assert verdicts(lab, pipeline_id)[PATH].verdict == "pre-existing"
    dropped = [r for r in triage_runs(lab, pipeline_id) if r.error_code == "not-needed"]
    assert len(dropped) == 3  # the window held "again" and three runs: the first base run decided
    lab.report(jobs[other].id, "fail", outputs={}, tests=(TestCase(path="hello", status="fail"),))
    runs = [r for r in triage_runs(lab, pipeline_id) if r.spec[MARK]["of"] == jobs[other].id]
    assert [r.spec[MARK]["side"] for r in runs] == ["change", "base", "change"]  # what the dropped runs left
