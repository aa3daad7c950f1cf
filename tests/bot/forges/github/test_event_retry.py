"""A forge event's task fails half-way and runs again (Celery's retry, or a redelivered message):
nothing the first attempt did is done twice. Real Celery task (applied eagerly), real store and
broker, FakeGitHub through PyGithub."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot import tasks
from bot.core.events import event_to_json
from bot.forges.github.intake import handle_event
from bot.pipelines.lifecycle import delivery_status
from bot.store import models
from tests.bot.forges.github.conftest import HEAD, REPO, Desk, comment, pushed

COMMENTS = rf"/repos/{REPO}/issues/\d+/comments"


def test_a_failed_reply_is_retried_and_nothing_before_it_repeats(desk: Desk) -> None:
    # One comment: approve the head, then /help. The help reply fails once with a 502 whose
    # effect is lost (GitHub did not post it); the task retries and posts it.
    desk.fake.fail_next("POST", COMMENTS, 502)
    desk.deliver(comment(f"/ok-to-test {HEAD[:12]}\n/help"), "d-1")
    assert desk.count(models.Approval) == 1
    assert len(desk.pipelines()) == 1
    assert desk.starts_queued() >= 1
    assert len(desk.fake.comments(REPO, 5)) == 1, "the reply went out once"
    approvals = [r for r in desk.fake.check_runs(REPO) if r["name"] == "labgate"]
    assert len(approvals) == 1, "the approval check went out once, before the failure"
    assert delivery_status(desk.runtime, "github", "d-1") == "handled"


def test_a_redelivered_message_does_nothing_again(desk: Desk) -> None:
    desk.deliver(comment(f"/ok-to-test {HEAD[:12]}"), "d-2")
    before = (desk.count(models.Approval), desk.pipelines(), len(desk.fake.requests))
    tasks.github_event.apply(args=[event_to_json(comment(f"/ok-to-test {HEAD[:12]}")), "d-2"])
    assert (desk.count(models.Approval), desk.pipelines(), len(desk.fake.requests)) == before


def test_a_retry_does_not_supersede_its_own_pipeline(desk: Desk) -> None:
    """A push's event cancels what ran for the older head and starts the new one; run again after
    that committed, it must neither cancel the pipeline it started nor start another."""
    first = pushed("1" * 40, at=datetime.now(UTC) - timedelta(minutes=5))
    desk.deliver(first, "push-1")
    second = pushed("2" * 40)
    runtime = desk.runtime
    github = tasks.github_app()
    handle_event(runtime, github, second, "push-2")
    handle_event(runtime, github, second, "push-2")  # as a retry would, before the delivery is marked
    (p1, s1, why1), (p2, s2, _) = desk.pipelines()
    assert (s1, why1) == ("done", f"superseded by {'2' * 40}")
    assert s2 == "queued", "the retry left its own pipeline alone"


def test_an_older_head_arriving_late_is_ignored(desk: Desk) -> None:
    now = datetime.now(UTC)
    desk.deliver(pushed("2" * 40, at=now), "late-2")
    desk.deliver(pushed("1" * 40, at=now - timedelta(seconds=30)), "late-1")
    assert [s for _, s, _ in desk.pipelines()] == ["queued"], "the older head did not cancel the newer"
    with desk.runtime.store.session() as session:
        change = session.scalar(select(models.Change).where(models.Change.number == 6))
        assert change is not None and change.head_sha == "2" * 40
        delivery = session.scalar(select(models.Delivery).where(models.Delivery.delivery_id == "late-1"))
        assert delivery is not None and "older than the head already known" in delivery.detail


def test_a_permanent_error_is_recorded_not_retried(desk: Desk) -> None:
    desk.fake.fail_next("GET", rf"/repos/{REPO}/pulls/5", 404, times=10)
    desk.deliver(comment(f"/ok-to-test {HEAD[:12]}"), "d-404")
    assert len(desk.fake.requests_to("GET", rf"/repos/{REPO}/pulls/5")) == 1
    with desk.runtime.store.session() as session:
        delivery = session.scalar(select(models.Delivery).where(models.Delivery.delivery_id == "d-404"))
        assert delivery is not None and delivery.status == "failed"
        assert "after 1 attempts" in delivery.detail and "404" in delivery.detail


def test_retries_stop_after_the_configured_attempts(desk: Desk) -> None:
    desk.fake.fail_next("POST", COMMENTS, 502, times=1000)
    desk.deliver(comment("/help"), "d-502")
    # POSTs are not retried inside PyGithub (a 502 may follow a create); the task runs 1 + 3 times.
    assert len(desk.fake.requests_to("POST", COMMENTS)) == 4
    assert delivery_status(desk.runtime, "github", "d-502") == "failed"
    assert desk.fake.comments(REPO, 5) == []
