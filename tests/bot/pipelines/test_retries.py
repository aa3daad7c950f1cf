"""Incomplete test jobs retried through the real result path (bot/pipelines/retries.py): the attempt kept,
the place avoided, twice at most, never a `fail`; a late result of an old attempt refused; boot evidence
carried, and a class health check first when a boot was unproven."""

from __future__ import annotations

import re

from sqlalchemy import select
from starlette.testclient import TestClient

from bot.pipelines.lifecycle import record_result
from bot.reporting.job_reports import job_report
from bot.reporting.pipeline_views import job_view
from bot.store.models import Job, JobAttempt, Pipeline
from bot.web.app import create_app
from tests.bot.pipelines.conftest import BIG, Lab
from workers.spec import JobResult, JobSpec


def report(lab: Lab, spec: JobSpec, result: str | None, *, code: str | None = None, place: str | None = None,
           **outputs: object) -> None:  # fmt: skip
    """The worker of this message reports (its token)."""
    record_result(lab.runtime, JobResult(job_id=spec.job_id, delivery=1, result=result, error_code=code,  # type: ignore[arg-type]
                                         error_message=f"{code or result} on {place}", result_token=spec.result_token,
                                         outputs={**outputs, **({"place": place} if place else {})}))  # fmt: skip


def job_row(lab: Lab, job_id: int) -> tuple[Job, list[JobAttempt]]:
    with lab.runtime.store.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        attempts = list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                        .order_by(JobAttempt.number)))  # fmt: skip
        session.expunge_all()
        return job, attempts


def test_an_incomplete_job_runs_again_elsewhere_twice_at_most_and_keeps_each_attempt(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 1}))
    first = lab.take(BIG)
    assert first.test is not None and first.test.avoid_places == ()
    report(lab, first, "incomplete", code="power-driver-error", place="place-a")
    second = lab.take(BIG)  # the same job, sent again at once: the window had room
    assert second.job_id == first.job_id and second.result_token != first.result_token
    assert second.test is not None and second.test.avoid_places == ("place-a",)
    job, attempts = job_row(lab, first.job_id)
    assert job.attempts == 2 and job.state == "queued" and job.result is None
    assert [(a.number, a.place, a.result, a.error_code) for a in attempts] == \
        [(1, "place-a", "incomplete", "power-driver-error")]  # fmt: skip
    report(lab, second, "incomplete", code="qemu-crashed", place="place-b")
    third = lab.take(BIG)
    assert third.test is not None and third.test.avoid_places == ("place-a", "place-b")
    report(lab, third, "incomplete", code="no-console-output", place="place-a")
    job, attempts = job_row(lab, first.job_id)
    # Two retries: the third incomplete attempt is the job's result.
    assert (job.state, job.result, job.error_code) == ("done", "incomplete", "no-console-output")
    assert [a.number for a in attempts] == [1, 2] and not lab.messages(BIG)
    with lab.runtime.store.session() as session:
        pipeline = session.get(Pipeline, job.pipeline_id)
        assert pipeline is not None and (pipeline.state, pipeline.result) == ("done", "incomplete")
        done = session.get(Job, job.id)
        assert done is not None
        summary = job_report(done, job_view(lab.runtime, done), "").summary
    assert "- attempt 1: incomplete (power-driver-error on place-a): `power-driver-error on place-a`" in summary
    assert "- attempt 2: incomplete (qemu-crashed on place-b)" in summary
    # The job page lists where each attempt ran and why it failed.
    page = TestClient(create_app(lab.runtime)).get(f"/jobs/{job.id}")
    assert page.status_code == 200
    rows = re.findall(r"<tr><td>(\d)</td><td>([^<]*)</td><td[^>]*>([^<]*)</td><td>([^<]*)</td>", page.text)
    assert rows == [("1", "place-a", "incomplete (power-driver-error)", "power-driver-error on place-a"),
                    ("2", "place-b", "incomplete (qemu-crashed)", "qemu-crashed on place-b")]  # fmt: skip
    assert "<tr><th>place</th><td>place-a</td></tr>" in page.text  # the last attempt's


def test_a_fail_is_never_retried(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 1}))
    spec = lab.take(BIG)
    report(lab, spec, "fail", place="place-a", reached_runner=True)
    job, attempts = job_row(lab, spec.job_id)
    assert (job.state, job.result, attempts) == ("done", "fail", [])
    assert not lab.messages(BIG)


def test_a_waiting_retry_says_so_and_a_late_result_of_the_old_attempt_is_refused(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 3}))  # a window of 2: the third waits
    first = lab.take(BIG)
    report(lab, first, "incomplete", code="power-driver-error", place="place-a")
    job, _ = job_row(lab, first.job_id)
    assert job.state == "waiting"  # behind the job that was already waiting
    with lab.runtime.store.session() as session:
        waiting = session.get(Job, first.job_id)
        assert waiting is not None
        title = job_report(waiting, job_view(lab.runtime, waiting), "").title
    assert "(attempt 1 incomplete (power-driver-error on place-a): retrying elsewhere)" in title, title
    # The old attempt's worker, or a redelivery of its message, says it passed after all: refused,
    # while the job waits and after the new attempt was sent.
    report(lab, first, "pass", place="place-a", reached_runner=True)
    assert job_row(lab, first.job_id)[0].state == "waiting"
    lab.finish(lab.take(BIG))
    lab.finish(lab.take(BIG))
    retry = lab.take(BIG)
    assert retry.job_id == first.job_id
    report(lab, first, "pass", place="place-a", reached_runner=True)
    assert job_row(lab, first.job_id)[0].state == "queued"
    report(lab, retry, "pass", place="place-b", reached_runner=True)
    job, attempts = job_row(lab, first.job_id)
    assert (job.result, job.outputs["place"], len(attempts)) == ("pass", "place-b", 1)


def test_a_test_carries_the_evidence_that_its_class_boots(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 1}))
    spec = lab.take(BIG)
    assert spec.test is not None and spec.test.boot_evidence == ""  # nothing booted on big yet
    report(lab, spec, "pass", place="place-a", reached_runner=True)
    lab.pass_build(lab.pipeline({BIG: 1}))
    later = lab.take(BIG)
    assert later.test is not None
    assert later.test.boot_evidence.startswith(f"job {spec.job_id} booted to its runner on big at "), later.test


def test_an_unproven_boot_waits_for_a_class_health_check_and_its_retry_carries_the_evidence(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 2}))
    one, two = lab.take(BIG), lab.take(BIG)
    report(lab, one, "incomplete", code="boot-unproven")
    report(lab, two, "incomplete", code="boot-unproven")
    check = lab.take(BIG)  # one health check of the class for both
    assert check.test is not None and check.test.kernel == "debian" and check.test.artifacts == {}
    assert check.test.health_check_place is None and not lab.messages(BIG)
    assert job_row(lab, one.job_id)[0].state == "pending"  # the retries wait for the check's result
    assert f"after a health check of big (job {check.job_id})" in str(job_row(lab, two.job_id)[0].error_message)
    report(lab, check, "pass", reached_runner=True)
    sent = [lab.take(BIG), lab.take(BIG)]
    assert {spec.job_id for spec in sent} == {one.job_id, two.job_id}
    for spec in sent:
        assert spec.test is not None
        assert spec.test.boot_evidence.startswith(f"job {check.job_id} booted to its runner on big at ")
    with lab.runtime.store.session() as session:
        health = session.get(Job, check.job_id)
        assert health is not None and health.pipeline.kind == "health-check" and health.pipeline.state == "done"


def test_a_retry_held_for_a_class_health_check_says_so(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 1}))
    spec = lab.take(BIG)
    report(lab, spec, "incomplete", code="boot-unproven")
    with lab.runtime.store.session() as session:
        held = session.get(Job, spec.job_id)
        assert held is not None
        title = job_report(held, job_view(lab.runtime, held), "").title
    assert title.startswith("attempt 1 incomplete (boot-unproven): retrying again, after a health check of big (job ")


def test_a_retest_reads_the_places_to_avoid_and_the_boot_evidence_afresh(lab: Lab) -> None:
    """A re-run of a job that ended incomplete avoids what is offline now, not what its old attempts met."""
    from bot.pipelines.steering import retest_failed

    lab.pass_build(lab.pipeline({BIG: 1}))
    spec = lab.take(BIG)
    for place in ("place-a", "place-b", "place-c"):
        report(lab, spec, "incomplete", code="power-driver-error", place=place)
        if place != "place-c":
            spec = lab.take(BIG)
    job, _ = job_row(lab, spec.job_id)
    assert job.result == "incomplete" and job.spec["avoid_places"] == ["place-a", "place-b"]
    again = retest_failed(lab.runtime, job.pipeline_id)
    assert again is not None
    rerun = lab.take(BIG)
    assert rerun.job_id != job.id and rerun.test is not None
    # None of the three places failed three times in a row, so none is offline: nothing to avoid.
    assert rerun.test.avoid_places == () and rerun.test.boot_evidence == ""


def test_a_board_job_waiting_for_a_place_says_so_until_its_result(lab: Lab) -> None:
    """The worker's word on who holds the places (bot.job_waiting) is the running job's report, as a code
    span; a message without the job's token changes nothing; the result replaces it."""
    from bot.pipelines.lifecycle import record_started, record_waiting

    lab.pass_build(lab.pipeline({BIG: 1}))
    spec = lab.take(BIG)
    record_started(lab.runtime, spec.job_id, 1, spec.result_token)
    record_waiting(lab.runtime, spec.job_id, "guessed", "[free](https://evil.example)")
    job, _ = job_row(lab, spec.job_id)
    assert "waiting_for_place" not in job.outputs
    record_waiting(lab.runtime, spec.job_id, spec.result_token, "standin-0 locked by ci/alice, standin-1 offline (x)")
    with lab.runtime.store.session() as session:
        running = session.get(Job, spec.job_id)
        assert running is not None
        shown = job_report(running, job_view(lab.runtime, running), "")
    assert shown.title == "waiting for a place"
    assert "waits for a place: `standin-0 locked by ci/alice, standin-1 offline (x)`." in shown.summary
    report(lab, spec, "pass", place="standin-1", reached_runner=True)
    job, _ = job_row(lab, spec.job_id)
    assert job.result == "pass" and "waiting_for_place" not in job.outputs
