"""Missed deliveries are caught up: the resync lists open pull requests and handles each head labgate
never heard of, exactly once, however often it runs and whatever webhook turns up late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot import tasks
from bot.forges.github.resync import resync_open_pulls
from bot.host.config import Tree, TreeGitHub
from bot.store import models
from tests.bot.forges.github.conftest import BASE, REPO, Desk, pushed

OLD, NEW, MISSED, STRANGER = "1" * 40, "2" * 40, "3" * 40, "4" * 40


def heads(desk: Desk) -> dict[int, str | None]:
    with desk.runtime.store.session() as session:
        return {c.number: c.head_sha for c in session.scalars(select(models.Change)) if c.number is not None}


def pipeline_heads(desk: Desk) -> list[tuple[str | None, str]]:
    with desk.runtime.store.session() as session:
        return sorted((p.revision.head_sha, p.state) for p in session.scalars(select(models.Pipeline)))


def test_missed_heads_are_handled_once(desk: Desk) -> None:
    # #6: labgate heard of OLD; the push of NEW was lost. #8: never heard of at all.
    # #9: a stranger's, heard of by nobody: it waits for approval. #5 (the fixture's): closed meanwhile.
    desk.deliver(pushed(OLD, at=datetime.now(UTC) - timedelta(minutes=1)), "push-old")
    desk.fake.add_pull(REPO, 6, NEW, "topic", "main", BASE, "alice", "MEMBER")
    desk.fake.add_pull(REPO, 8, MISSED, "topic-8", "main", BASE, "alice", "MEMBER")
    desk.fake.add_pull(REPO, 9, STRANGER, "topic-9", "main", BASE, "mallory", "NONE")
    desk.fake.add_pull(REPO, 5, "a" * 40, "topic", "main", BASE, "mallory", "CONTRIBUTOR", state="closed")

    tasks.github_resync.apply()
    assert heads(desk) == {6: NEW, 8: MISSED, 9: STRANGER}
    assert pipeline_heads(desk) == [(OLD, "done"), (NEW, "queued"), (MISSED, "queued")], "OLD superseded by NEW"
    waiting = [r for r in desk.fake.check_runs(REPO) if r["name"] == "labgate"]
    assert [(r["head_sha"], r["conclusion"]) for r in waiting] == [(STRANGER, "action_required")]

    requests_before = len(desk.fake.requests)
    tasks.github_resync.apply()
    tasks.github_resync.apply()
    assert pipeline_heads(desk) == [(OLD, "done"), (NEW, "queued"), (MISSED, "queued")]
    assert len([r for r in desk.fake.check_runs(REPO) if r["name"] == "labgate"]) == 1
    later = desk.fake.requests[requests_before:]
    assert {(r.method, r.path.split("?")[0]) for r in later if r.method == "GET"} <= {
        ("GET", f"/repos/{REPO}/installation"), ("GET", f"/repos/{REPO}/pulls")}, "nothing but the listing"
    assert all(r.method == "GET" or r.path.endswith("/access_tokens") for r in later)

    # The lost webhook turns up after all: the head was handled, so it is ignored.
    desk.deliver(pushed(NEW), "push-new-late")
    assert pipeline_heads(desk) == [(OLD, "done"), (NEW, "queued"), (MISSED, "queued")]
    with desk.runtime.store.session() as session:
        late = session.scalar(select(models.Delivery).where(models.Delivery.delivery_id == "push-new-late"))
        assert late is not None and "was handled when labgate first heard of it" in late.detail


def test_a_repository_without_the_app_is_said(desk: Desk) -> None:
    desk.fake.add_repo("octo-org/elsewhere")
    config = desk.runtime.config
    github = TreeGitHub(repo="octo-org/elsewhere")
    tree = Tree(name="elsewhere", url="https://example.org/elsewhere.git", github=github)
    desk.runtime.config = config.model_copy(update={"trees": [tree]})
    assert resync_open_pulls(desk.runtime, tasks.github_app()) == ["octo-org/elsewhere: the App is not installed there"]
    assert desk.fake.requests_to("GET", r"/repos/octo-org/elsewhere/pulls") == []
