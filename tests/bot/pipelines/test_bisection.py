"""A staging push's new failure bisected with labgate jobs (bot/pipelines/bisection.py), driven through the real
result path: each step's checkout, builds and test runs are reported as their workers would report them."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.schedule import PRIORITY_BISECTION
from bot.host.config import Smtp, TreeMail, Triage
from bot.host.config import Tree as TreeConfig
from bot.host.stores import open_runtime
from bot.pipelines import bisection_mail
from bot.pipelines.bisection import KIND, SOURCE
from bot.pipelines.lifecycle import record_result, start_pipeline
from bot.store.models import Bisection, Change, Job, Pipeline, ResultHistory, Revision, TestResult
from bot.store.models import Tree as TreeRow
from tests.bot.pipelines.kernel_lab import PLAN, QEMU, TREE, KernelLab, build_outputs, kernel_config
from workers.app import CHECKOUT_QUEUE, CONTROL_QUEUE, configure
from workers.spec import CheckoutSpec, JobResult, TestCase

TOKEN = "push-token"
BRANCH = "staging"
COMMITS = [f"{0xC0 + i:040x}" for i in range(9)]  # the previous head and the 8 commits pushed after it
GOOD, BAD = COMMITS[0], COMMITS[-1]
TEST_JOB = f"{QEMU} boot"
TEST_PATH = "boot/a"  # the bisected test as the history and verdicts name it (plan test name / test path)
AUTHOR = "Culprit Person <culprit@example.org>"
Outcome = Callable[[str, int], str]  # (tested commit, or "revert:<sha>"; run number) -> status of test "a"


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[KernelLab]:
    """A KernelLab (kernel_lab.py) whose config takes the test's changes (indirect parametrization)."""
    configure(redis_db_url, longest_job_s=60)
    config = kernel_config(tmp_path).model_copy(update=getattr(request, "param", {}))
    made = KernelLab(open_runtime(config, database_url=database_url), redis.Redis.from_url(redis_db_url))
    yield made
    made.broker.close()
    made.runtime.store.engine.dispose()


MAILING = {"trees": [TreeConfig(name=TREE, url="https://example.org/linux.git",
                                mail=TreeMail(report=True, push_to=["Maintainer <maint@example.org>"]))],
           "smtp": Smtp(host="127.0.0.1", port=2525, starttls=False, sender="ci@lab.example.org")}  # fmt: skip


def push_pipeline(lab: KernelLab, base: str, head: str, first_status: str | None, *, ancestor: bool = True,
                  flaky: str | None = None, plan_from: str = "head") -> int:  # fmt: skip
    """A staging push's post-merge pipeline with its checkout and build done; its test job queued with a token
    (None: finished now, passing). Its id."""
    with lab.runtime.store.session() as session:
        tree = session.scalar(select(TreeRow).where(TreeRow.name == TREE)) or TreeRow(name=TREE, url="https://x/l")
        change = session.scalar(select(Change).where(Change.source == "github-push"))
        change = change or Change(tree=tree, source="github-push", external_id=f"org/linux@{BRANCH}",
                                  forge_repo="org/linux", submitter="maintainer")  # fmt: skip
        revision = Revision(change=change, base_ref=base, ref=head, base_sha=base, head_sha=head)
        pipeline = Pipeline(revision=revision, state="running", kind="post-merge")
        session.add(Job(pipeline=pipeline, kind="checkout", name="checkout", queue=CHECKOUT_QUEUE, state="done",
                        result="pass", outputs={"base_is_ancestor": ancestor},
                        spec=CheckoutSpec(base_ref=base, ref=head, plan_from=plan_from).model_dump(mode="json")))  # type: ignore[arg-type]  # fmt: skip
        test_id, pipeline_id = built_and_testing(session, pipeline, head), pipeline.id
    if first_status is not None:
        finish_push(lab, test_id, first_status, flaky=flaky)
    return pipeline_id


def built_and_testing(session: Session, pipeline: Pipeline, head: str) -> int:
    """The pipeline's build, passed, and its test job, running with a worker holding TOKEN; the test job's id."""
    build = Job(pipeline=pipeline, kind="build", name="x86_64", queue="build", state="done", result="pass",
                spec={"name": "x86_64", "head_sha": head})  # fmt: skip
    session.add(build)
    session.flush()
    test = Job(pipeline=pipeline, kind="test", name=TEST_JOB, queue=f"lab.{QEMU}", depends_on_id=build.id,
               state="running", spec={"name": "boot", "device_class": QEMU},
               result_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest())  # fmt: skip
    session.add(test)
    session.flush()
    return test.id


def finish_push(lab: KernelLab, test_id: int, status: str, *, flaky: str | None = None) -> None:
    """The push's test job reports test `a` (and, listed first, a flaky test `b` when given)."""
    tests = ((TestCase(path="b", status=flaky),) if flaky else ()) + (TestCase(path="a", status=status),)  # type: ignore[arg-type]
    record_result(lab.runtime, JobResult(job_id=test_id, delivery=1, result="pass" if status == "pass" else "fail",
                                         result_token=TOKEN, tests=tests))  # fmt: skip


def the_test_job(lab: KernelLab, pipeline_id: int) -> int:
    return next(job.id for job in lab.jobs(pipeline_id).values() if job.kind == "test")


def bisection(lab: KernelLab) -> Bisection:
    with lab.runtime.store.session() as session:
        found = session.scalar(select(Bisection).order_by(Bisection.id.desc()))
        assert found is not None
        session.expunge_all()
        return found


def listed(commits: list[str]) -> list[list[str]]:
    return [[sha, AUTHOR if i == 5 else f"Dev {i} <dev{i}@example.org>"] for i, sha in enumerate(commits) if i > 0]


def run_step(lab: KernelLab, pipeline_id: int, outcome: Outcome, *, commits: object = None,
             plan: str = PLAN, flaky: random.Random | None = None) -> None:  # fmt: skip
    """The step's checkout, builds and test runs, each reported by its worker; the last ends the step."""
    start_pipeline(lab.runtime, pipeline_id)
    jobs = lab.jobs(pipeline_id)
    checkout = jobs["checkout"]
    spec = CheckoutSpec.model_validate(checkout.spec)
    assert spec.base_ref == GOOD
    tested = f"revert:{spec.revert_sha}" if spec.revert_sha else str(spec.ref)
    made = hashlib.sha1(tested.encode()).hexdigest()  # the commit the worker made (a revert) or found
    outputs: dict[str, Any] = {"base_sha": GOOD, "head_sha": spec.ref, "tested_sha": made, "plan_text": plan,
                               "changed_files": ["kernel/printk/printk.c"], "base_is_ancestor": True}  # fmt: skip
    if spec.list_commits:
        outputs["commits"] = listed(COMMITS) if commits is None else commits
    message = lab.message_for(checkout.id, CHECKOUT_QUEUE)
    record_result(lab.runtime, JobResult(job_id=checkout.id, delivery=1, result="pass",
                                         result_token=message.result_token, outputs=outputs))  # fmt: skip
    for _ in range(10):
        jobs = lab.jobs(pipeline_id)
        if lab.pipeline(pipeline_id).state == "done":
            return
        for job in jobs.values():
            if job.state not in ("queued", "running"):
                continue
            if job.kind == "build":
                lab.report(job.id, outputs=lab.stored(build_outputs(binary_digest=hashlib.sha256(
                    f"{job.spec['head_sha']}".encode()).hexdigest())))  # fmt: skip
            elif job.kind == "test":
                run = 1 if "(run" not in job.name else int(job.name.rsplit(" ", 1)[1].rstrip(")"))
                status = outcome(tested, run)
                # Test `b`, when there is a `flaky` one, fails at random in every run, wherever it runs.
                other = (TestCase(path="b", status=flaky.choice(("pass", "fail"))),) if flaky else ()
                lab.report(job.id, result="pass" if status == "pass" else "fail",
                           tests=(*other, TestCase(path="a", status=status)))  # type: ignore[arg-type]  # fmt: skip
    raise AssertionError(f"step pipeline {pipeline_id} did not end: {[(j.name, j.state) for j in jobs.values()]}")


def bisect(lab: KernelLab, outcome: Outcome, *, commits: object = None, limit: int = 20,
           plan_at: Callable[[int], str] = lambda step: PLAN,
           flaky: random.Random | None = None) -> Bisection:  # fmt: skip
    """A push of COMMITS whose test `a` passed at GOOD and fails at BAD, bisected step by step to its end."""
    if flaky is not None:  # `b` failed on the branch before: its history is mixed
        push_pipeline(lab, "e" * 40, "f" * 40, "pass", flaky="fail")
    push_pipeline(lab, "f" * 40, GOOD, "pass", flaky="pass" if flaky else None)
    push_pipeline(lab, GOOD, BAD, "fail", flaky="fail" if flaky else None)  # `b` is new at the head too
    for _ in range(limit):
        found = bisection(lab)
        if found.state != "running":
            return found
        run_step(lab, found.steps[-1]["pipeline_id"], outcome, commits=commits, plan=plan_at(len(found.steps)),
                 flaky=flaky)  # fmt: skip
    raise AssertionError("the bisection did not end")


def breaks_at(culprit: int, *, flaky_at: int | None = None) -> Outcome:
    def outcome(tested: str, run: int) -> str:
        if tested.startswith("revert:"):
            return "pass" if tested == f"revert:{COMMITS[culprit]}" else "fail"
        index = COMMITS.index(tested)
        if index == flaky_at:
            return "fail" if run == 1 else "pass"
        return "fail" if index >= culprit else "pass"

    return outcome


def test_a_new_failure_is_bisected_to_its_first_bad_commit_and_confirmed_by_its_revert(lab: KernelLab) -> None:
    found = bisect(lab, breaks_at(5))
    assert found.state == "done" and found.culprit_sha == COMMITS[5]
    assert found.confidence == (f"first bad commit {COMMITS[5][:12]} (failed 2/2 there, passed 2/2 at its parent; "
                                "confirmed: its revert passes 2/2 on the new head)")  # fmt: skip
    assert (found.good_sha, found.bad_sha, found.test_path, found.device_class) == (GOOD, BAD, TEST_PATH, QEMU)
    tested = [(s["sha"], s["role"], s["verdict"]) for s in found.steps]
    assert tested[0] == (BAD, "test", "bad")  # the new head first: it confirms the failure and lists the commits
    assert tested[-1] == (COMMITS[5], "revert", "good")
    assert len(tested) - 1 <= 8
    with lab.runtime.store.session() as session:
        steps = list(session.scalars(select(Pipeline).where(Pipeline.kind == KIND)))
        assert len(steps) == len(tested)
        for step in steps:
            change = step.revision.change
            assert change.source == SOURCE and change.forge_repo is None  # no forge hears of a step
            tests = [job for job in step.jobs if job.kind == "test"]
            assert len(tests) == 2 and all(job.priority == PRIORITY_BISECTION for job in tests)
            # No static stage, no base build: nothing is compared, so no run is skipped as the base's twin.
            assert sorted(job.kind for job in step.jobs) == ["build", "checkout", "test", "test"]
        push = session.scalar(select(Pipeline).where(Pipeline.kind == "post-merge").order_by(Pipeline.id.desc()))
        assert push is not None and any(note.startswith(f"bisection of {TEST_PATH}") for note in push.notes)
        assert session.scalar(select(Bisection.id).where(Bisection.pipeline_id != push.id)) is None  # one only
        rows = list(session.scalars(select(ResultHistory).where(ResultHistory.source == "bisect")))
        assert {row.commit for row in rows} == {s for s, role, _ in tested if role == "test"}  # not the revert's
    mails = [m for m in lab.broker.lrange(CONTROL_QUEUE, 0, -1) if b"bot.bisection_mail" in m]
    assert len(mails) == 1


@pytest.mark.parametrize("seed", range(3))
def test_a_flaky_test_beside_it_does_not_hide_the_culprit(lab: KernelLab, seed: int) -> None:
    """Test `b` fails at random and is new at the head too, listed first: its branch history is mixed, so the
    stable `a` is bisected, and `b`'s failures in the steps are not read."""
    found = bisect(lab, breaks_at(6), flaky=random.Random(seed))
    assert found.test_path == TEST_PATH
    assert found.state == "done" and found.culprit_sha == COMMITS[6] and "confirmed" in found.confidence


@pytest.mark.parametrize("culprit", [1, 8])
def test_the_culprit_at_either_end(lab: KernelLab, culprit: int) -> None:
    found = bisect(lab, breaks_at(culprit))
    assert found.state == "done" and found.culprit_sha == COMMITS[culprit]
    if culprit == 1:  # its parent is the previous head: measured with the same runs, not assumed
        assert any(s["sha"] == GOOD and s["verdict"] == "good" for s in found.steps)
        assert "passed 2/2 at its parent" in found.confidence


def test_a_flaky_step_stops_the_bisection_and_says_so(lab: KernelLab) -> None:
    found = bisect(lab, breaks_at(7, flaky_at=4))
    assert found.state == "failed" and found.culprit_sha is None
    assert f"flaky at {COMMITS[4][:12]}" in found.message and "1/2" in found.message


@pytest.mark.parametrize("lab", [{"triage": Triage(bisect_max_steps=2)}], indirect=True)
def test_the_step_cap_stops_it_naming_what_is_left(lab: KernelLab) -> None:
    found = bisect(lab, breaks_at(3))
    assert found.state == "failed" and "cap of 2 steps" in found.message
    assert len(found.steps) == 2


def test_a_commit_whose_plan_lacks_the_test_stops_the_bisection(lab: KernelLab) -> None:
    without = PLAN.split("tests:")[0] + "tests: []\n"
    found = bisect(lab, breaks_at(5), plan_at=lambda step: without if step == 2 else PLAN)
    assert found.state == "failed" and f"could not be run at {COMMITS[4][:12]} (no result)" in found.message
    with lab.runtime.store.session() as session:
        step = session.get(Pipeline, found.steps[1]["pipeline_id"])
        assert step is not None
        made = step.jobs[0].outputs["tested_sha"]
        assert step.notes == [f"the bisected test is not in the plan at {made[:12]}"]


def test_a_step_whose_checkout_fails_stops_it_with_gits_words(lab: KernelLab) -> None:
    push_pipeline(lab, "f" * 40, GOOD, "pass")
    push_pipeline(lab, GOOD, BAD, "fail")
    run_step(lab, bisection(lab).steps[-1]["pipeline_id"], breaks_at(5))
    step = bisection(lab).steps[-1]["pipeline_id"]
    start_pipeline(lab.runtime, step)
    checkout = lab.jobs(step)["checkout"]
    token = lab.message_for(checkout.id, CHECKOUT_QUEUE).result_token
    record_result(lab.runtime, JobResult(job_id=checkout.id, delivery=1, result=None, error_code="user-error",
                                         error_message="the tree holds a path too long for a filesystem: x\ny",
                                         result_token=token))  # fmt: skip
    found = bisection(lab)
    assert found.state == "failed" and found.message == (
        f"the test could not be run at {COMMITS[4][:12]} (no result): its checkout failed: "
        "the tree holds a path too long for a filesystem: x")  # fmt: skip


def test_a_revert_that_does_not_fix_it_is_not_confirmed(lab: KernelLab) -> None:
    def outcome(tested: str, run: int) -> str:
        return "fail" if tested.startswith("revert:") else breaks_at(5)(tested, run)

    found = bisect(lab, outcome)
    assert found.culprit_sha == COMMITS[5]
    assert "not confirmed: with it reverted the new head still fails 2/2" in found.confidence


@pytest.mark.parametrize(("commits", "why"), [
    ([[GOOD, "x"], [BAD, "y"]], "repeats"),  # the previous head listed as a commit after itself
    ([["0" * 40, "x"]], "not at the new head"),  # a list that leads nowhere near the push
    ([[BAD + "; rm -rf /", "x"]], "no commit id"),
    ("not a list", "not a list"),
    ([[f"{i:040x}", "x"] for i in range(1, 2000)] + [[BAD, "y"]], "over the cap"),
])  # fmt: skip
def test_a_forged_commit_list_stops_the_bisection_with_the_reason(lab: KernelLab, commits: object, why: str) -> None:
    found = bisect(lab, breaks_at(5), commits=commits)
    assert found.state == "failed" and "commit list was refused" in found.message and why in found.message
    assert len(found.steps) == 1  # nothing of the forged list was tested


def test_a_newer_push_cancels_the_bisection(lab: KernelLab) -> None:
    push_pipeline(lab, "f" * 40, GOOD, "pass")
    push_pipeline(lab, GOOD, BAD, "fail")
    first = bisection(lab)
    run_step(lab, first.steps[-1]["pipeline_id"], breaks_at(5))  # the head confirmed: the first midpoint queued
    step = bisection(lab).steps[-1]["pipeline_id"]
    start_pipeline(lab.runtime, step)
    newer = push_pipeline(lab, BAD, "e" * 40, None)  # a newer push: its pipeline runs
    finish_push(lab, the_test_job(lab, newer), "pass")
    found = bisection(lab)
    assert found.state == "cancelled" and f"pipeline {newer}" in found.message
    assert lab.pipeline(step).result == "cancelled"
    assert all(job.state == "done" for job in lab.jobs(step).values())
    with lab.runtime.store.session() as session:  # the newer push passed: nothing new to bisect
        assert session.scalar(select(Bisection.id).where(Bisection.pipeline_id == newer)) is None


def test_a_step_ending_after_a_newer_push_started_starts_no_other(lab: KernelLab) -> None:
    push_pipeline(lab, "f" * 40, GOOD, "pass")
    push_pipeline(lab, GOOD, BAD, "fail")
    push_pipeline(lab, BAD, "e" * 40, None)  # running: not ended yet
    run_step(lab, bisection(lab).steps[-1]["pipeline_id"], breaks_at(5))
    found = bisection(lab)
    assert found.state == "cancelled" and len(found.steps) == 1


@pytest.mark.parametrize("plan_from", ["head", "base"])
def test_a_steps_build_is_trusted_as_the_pushs_own_was(lab: KernelLab, plan_from: str) -> None:
    push_pipeline(lab, "f" * 40, GOOD, "pass")
    push_pipeline(lab, GOOD, BAD, "fail", plan_from=plan_from)
    step = bisection(lab).steps[-1]["pipeline_id"]
    run_step(lab, step, breaks_at(5))
    assert CheckoutSpec.model_validate(lab.jobs(step)["checkout"].spec).plan_from == plan_from
    [build] = [job for job in lab.jobs(step).values() if job.kind == "build"]
    assert build.spec["trusted"] is (plan_from == "head")  # a base plan: the build may not write warm state


def test_a_retest_of_the_push_neither_supersedes_nor_doubles_it(lab: KernelLab) -> None:
    push_pipeline(lab, "f" * 40, GOOD, "pass")
    push = push_pipeline(lab, GOOD, BAD, "fail")
    with lab.runtime.store.session() as session:  # the push's failed test job run again, as a retest makes it
        original = session.get(Pipeline, push)
        assert original is not None
        rerun = Pipeline(revision=original.revision, state="running", kind="post-merge", rerun_of_id=push)
        test_id = built_and_testing(session, rerun, BAD)
    finish_push(lab, test_id, "fail")
    run_step(lab, bisection(lab).steps[-1]["pipeline_id"], breaks_at(5))
    with lab.runtime.store.session() as session:
        assert [(b.pipeline_id, b.state) for b in session.scalars(select(Bisection))] == [(push, "running")]


@pytest.mark.parametrize("case", ["first-run", "rewritten", "no-new-failure", "incomplete"])
def test_no_bisection_without_a_new_failure_to_bisect(lab: KernelLab, case: str) -> None:
    if case != "first-run":
        push_pipeline(lab, "f" * 40, GOOD, "fail" if case == "no-new-failure" else "pass")
    push_pipeline(lab, GOOD, BAD, "incomplete" if case == "incomplete" else "fail", ancestor=case != "rewritten")
    with lab.runtime.store.session() as session:
        assert session.scalar(select(Bisection.id)) is None
        assert session.scalar(select(Pipeline.id).where(Pipeline.kind == KIND)) is None


def test_a_test_that_failed_before_on_the_branch_alone_is_not_bisected(lab: KernelLab) -> None:
    """Only the flaky `b` is new at the head (`a` passes): its branch history is mixed, so nothing is bisected."""
    push_pipeline(lab, "e" * 40, "f" * 40, "pass", flaky="fail")
    push_pipeline(lab, "f" * 40, GOOD, "pass", flaky="pass")
    push_pipeline(lab, GOOD, BAD, "pass", flaky="fail")
    with lab.runtime.store.session() as session:
        assert session.scalar(select(Bisection.id)) is None
        assert session.scalar(select(Pipeline.id).where(Pipeline.kind == KIND)) is None


def test_a_steps_failure_is_never_bisected_itself(lab: KernelLab) -> None:
    """A step's failing test is the bisection's evidence, never a push of its own: one bisection in all."""
    found = bisect(lab, breaks_at(5))
    with lab.runtime.store.session() as session:
        assert [b.id for b in session.scalars(select(Bisection))] == [found.id]
        of_steps = select(TestResult).join(Job).join(Pipeline).where(Pipeline.kind == KIND)
        assert list(session.scalars(of_steps.where(TestResult.status == "fail")))


# The report mail: to the tree's push address, Cc the culprit's author when theirs is one plain address.


class FakeSmtp:
    """Records each message it is handed."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def __call__(self, server: object, message: Any) -> None:
        self.sent.append(message)


@pytest.mark.parametrize("lab", [MAILING], indirect=True)
def test_the_report_goes_to_the_tree_and_the_culprits_author_once(lab: KernelLab) -> None:
    found = bisect(lab, breaks_at(5))
    smtp = FakeSmtp()
    assert bisection_mail.send_report(lab.runtime, found.id, smtp) == "mailed"
    assert bisection_mail.send_report(lab.runtime, found.id, smtp) == "mailed already"
    [message] = smtp.sent
    assert message["To"] == "Maintainer <maint@example.org>" and message["Cc"] == "culprit@example.org"
    assert f"first bad commit {COMMITS[5][:12]}" in message["Subject"]
    assert found.confidence in message.get_content()


@pytest.mark.parametrize("lab", [MAILING], indirect=True)
@pytest.mark.parametrize("author", ["Eve <eve@example.org>\r\nBcc: victim@example.org",
                                    "Eve <eve@example.org>, victim@example.org"])  # fmt: skip
def test_an_author_that_would_inject_a_header_is_not_mailed(lab: KernelLab, author: str) -> None:
    hostile = [[sha, author if i == 5 else "Dev <dev@example.org>"] for i, sha in enumerate(COMMITS) if i > 0]
    found = bisect(lab, breaks_at(5), commits=hostile)
    smtp = FakeSmtp()
    bisection_mail.send_report(lab.runtime, found.id, smtp)
    [message] = smtp.sent
    rendered = message.as_string()
    assert message["Cc"] is None and "Bcc" not in rendered and "victim" not in rendered.split("\n\n", 1)[0]
    assert "author is not mailed" in message.get_content()


@pytest.mark.parametrize("lab", [MAILING], indirect=True)
def test_a_hostile_test_path_stays_one_subject_line(lab: KernelLab) -> None:
    found = bisect(lab, breaks_at(5))
    with lab.runtime.store.session() as session:
        row = session.get(Bisection, found.id)
        assert row is not None
        row.test_path = f"{TEST_PATH}\r\nBcc: victim@example.org"
    smtp = FakeSmtp()
    bisection_mail.send_report(lab.runtime, found.id, smtp)
    headers = smtp.sent[0].as_string().split("\n\n", 1)[0]
    assert "\nBcc:" not in headers and "Bcc: victim" in smtp.sent[0]["Subject"]


def test_no_mail_when_the_tree_mails_no_reports(lab: KernelLab) -> None:
    found = bisect(lab, breaks_at(5))
    smtp = FakeSmtp()
    assert bisection_mail.send_report(lab.runtime, found.id, smtp) == "the tree mails no reports"
    assert smtp.sent == []
