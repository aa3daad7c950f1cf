"""Place health through the real result path (bot/pipelines/place_health.py): three consecutive
infrastructure faults take a place offline and queue a health check at the top priority; the check's own
result brings it back or keeps it out with the next check scheduled; nobody else's result can do either."""

from __future__ import annotations

from datetime import UTC, timedelta

from sqlalchemy import select, update

from bot.core.schedule import PRIORITY_HEALTH_CHECK
from bot.pipelines.place_health import recheck_due, request_check
from bot.reporting.sync import pipeline_source
from bot.store.models import Job, PlaceHealth, utcnow
from tests.bot.pipelines.conftest import BIG, SMALL, Lab
from tests.bot.pipelines.test_retries import report
from workers.spec import JobSpec


def place(lab: Lab, name: str, device_class: str = BIG) -> PlaceHealth | None:
    with lab.runtime.store.session() as session:
        row = session.scalar(select(PlaceHealth).where(PlaceHealth.device_class == device_class,
                                                       PlaceHealth.place == name))  # fmt: skip
        session.expunge_all()
        return row


def take_place_a_offline(lab: Lab) -> JobSpec:
    """Three faults of place-a in a row, over two jobs (a retry goes on too); the health check sent."""
    lab.pass_build(lab.pipeline({BIG: 2}))
    one, two = lab.take(BIG), lab.take(BIG)
    report(lab, one, "incomplete", code="power-driver-error", place="place-a")
    report(lab, two, "incomplete", code="no-console-output", place="place-a")
    row = place(lab, "place-a")
    assert row is not None and (row.consecutive_failures, row.offline) == (2, False)
    retry = lab.take(BIG)
    report(lab, retry, "incomplete", code="qemu-crashed", place="place-a")
    other_retry, check = lab.take(BIG), lab.take(BIG)  # the check went to the window's free slot at once
    assert other_retry.job_id == two.job_id
    assert check.test is not None and check.test.health_check_place == "place-a"
    report(lab, other_retry, "pass", place="place-b", reached_runner=True)  # it ran on the other place
    third = lab.take(BIG)  # the first job's third attempt, kept away from place-a
    assert third.job_id == one.job_id and third.test is not None and third.test.avoid_places == ("place-a",)
    report(lab, third, "pass", place="place-b", reached_runner=True)
    return check


def test_three_consecutive_faults_take_a_place_offline_and_queue_its_health_check(lab: Lab) -> None:
    check = take_place_a_offline(lab)
    row = place(lab, "place-a")
    assert row is not None and row.offline and row.consecutive_failures == 3 and row.check_job_id == check.job_id
    assert row.offline_reason.startswith("3 consecutive infrastructure failures, the last qemu-crashed: ")
    assert check.test is not None and check.test.kernel == "debian" and check.test.artifacts == {}
    assert [c.run for c in check.test.commands] == ["echo alive"]
    with lab.runtime.store.session() as session:
        job = session.get(Job, check.job_id)
        assert job is not None and job.priority == PRIORITY_HEALTH_CHECK and job.depends_on_id is None
        assert job.pipeline.kind == "health-check" and job.pipeline.revision.change.forge_repo is None
        assert job.pipeline.revision.change.tree.name == "@lab"
    # Jobs handed over while it is out keep away from it.
    lab.pass_build(lab.pipeline({BIG: 1}, tree="later"))
    later = lab.take(BIG)
    assert later.test is not None and later.test.avoid_places == ("place-a",)
    assert pipeline_source(lab.runtime, job.pipeline_id) == "lab"  # no forge and no mail sink reports to it


def test_a_boot_to_the_runner_clears_the_count_and_an_unavailable_place_does_not_count(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 4}))
    report(lab, lab.take(BIG), "incomplete", code="power-driver-error", place="place-a")
    report(lab, lab.take(BIG), "incomplete", code="power-driver-error", place="place-a")
    report(lab, lab.take(BIG), "fail", place="place-a", reached_runner=True)  # the place works
    row = place(lab, "place-a")
    assert row is not None and row.consecutive_failures == 0 and not row.offline
    report(lab, lab.take(BIG), "incomplete", code="place-unavailable", place="place-a")
    row = place(lab, "place-a")
    assert row is not None and row.consecutive_failures == 0


def test_a_passing_health_check_brings_the_place_back(lab: Lab) -> None:
    check = take_place_a_offline(lab)
    report(lab, check, "pass", place="place-a", reached_runner=True,
           health_check={"place": "place-a", "passed": True, "online": True})  # fmt: skip
    row = place(lab, "place-a")
    assert row is not None and (row.offline, row.offline_reason, row.consecutive_failures) == (False, "", 0)
    assert row.last_check_result == "passed" and row.recheck_at is None


def test_a_failing_health_check_keeps_it_offline_and_the_next_one_is_queued_when_due(lab: Lab) -> None:
    check = take_place_a_offline(lab)
    report(lab, check, "incomplete", code="power-driver-error", place="place-a",
           health_check={"place": "place-a", "passed": False, "online": False})  # fmt: skip
    row = place(lab, "place-a")
    assert row is not None and row.offline and row.last_check_result == "failed" and row.recheck_at is not None
    assert row.offline_reason.startswith(f"health check (job {check.job_id}) failed: power-driver-error")
    due = row.recheck_at.replace(tzinfo=UTC)  # SQLite gives back UTC without its zone
    assert due > utcnow() + timedelta(minutes=29)  # the default interval: 30 min
    assert recheck_due(lab.runtime) == []  # not yet
    with lab.runtime.store.session() as session:
        session.execute(update(PlaceHealth).values(recheck_at=utcnow() - timedelta(seconds=1)))
    assert len(recheck_due(lab.runtime)) == 1
    again = lab.take(BIG)
    assert again.test is not None and again.test.health_check_place == "place-a" and again.job_id != check.job_id
    report(lab, again, "pass", place="place-a", health_check={"place": "place-a", "passed": True})
    row = place(lab, "place-a")
    assert row is not None and not row.offline and row.last_check_result == "passed"


def test_an_operator_asks_for_a_check_once(lab: Lab) -> None:
    job_id, new = request_check(lab.runtime, SMALL, "place-z", "asked for by test")
    again, second = request_check(lab.runtime, SMALL, "place-z", "asked for by test")
    assert new and not second and again == job_id
    spec = lab.take(SMALL)
    assert spec.job_id == job_id and spec.test is not None and spec.test.health_check_place == "place-z"


def test_no_result_but_the_health_checks_own_can_bring_a_place_back(lab: Lab) -> None:
    check = take_place_a_offline(lab)
    # An ordinary job's worker claims a passing health check of place-a: just a test result.
    lab.pass_build(lab.pipeline({BIG: 1}, tree="other"))
    ordinary = lab.take(BIG)
    report(lab, ordinary, "pass", place="place-b", health_check={"place": "place-a", "passed": True, "online": True})
    row = place(lab, "place-a")
    assert row is not None and row.offline
    # The health check's message with a wrong token: refused.
    forged = check.model_copy(update={"result_token": "guessed"})
    report(lab, forged, "pass", place="place-a", health_check={"place": "place-a", "passed": True})
    row = place(lab, "place-a")
    assert row is not None and row.offline
    # The check's own result speaks for the place labgate wrote in its spec, whatever it names.
    report(lab, check, "pass", place="place-b", health_check={"place": "place-b", "passed": True})
    assert place(lab, "place-b") is None or not place(lab, "place-b").offline  # type: ignore[union-attr]
    row = place(lab, "place-a")
    assert row is not None and not row.offline


def test_a_forged_fault_report_cannot_take_a_place_offline(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 1}))
    spec = lab.take(BIG)
    forged = spec.model_copy(update={"result_token": "not-the-token"})
    for _ in range(3):
        report(lab, forged, "incomplete", code="power-driver-error", place="place-a")
    assert place(lab, "place-a") is None
    with lab.runtime.store.session() as session:
        assert session.scalar(select(Job).where(Job.priority == PRIORITY_HEALTH_CHECK)) is None
