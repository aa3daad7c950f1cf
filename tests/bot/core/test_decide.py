"""core.decide: who may steer a change, as a table over command x commenter x change state."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from bot.core.decide import (
    Action,
    AwaitApproval,
    CancelPipelines,
    ChangeState,
    Ignore,
    RecordApproval,
    Reply,
    Retest,
    StartPipeline,
    decide_change,
    decide_comment,
)
from bot.core.events import Actor, ChangeEvent, CommentEvent, RepoRef
from bot.core.trust import Approval, TrustPolicy

HEAD = "c0ffee" + "0" * 34
POLICY = TrustPolicy()
REPO = RepoRef("github", "octo-org/hello", "https://example.invalid/hello.git", installation_id=1)
SEEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # when labgate first heard of HEAD
LATER = SEEN + timedelta(minutes=5)  # when the comment was written


@dataclass(frozen=True)
class Commenter:
    actor: Actor
    permission: str | None
    trusted: bool


COMMENTERS = {
    "author": Commenter(Actor("ada"), "read", False),
    "approver": Commenter(Actor("maint"), "write", False),
    "trusted": Commenter(Actor("member", "MEMBER"), "read", True),
    "stranger": Commenter(Actor("mallory"), "read", False),
    "bot": Commenter(Actor("helper[bot]", is_bot=True), "write", True),
}
COMMANDS = ["/ok-to-test", f"/ok-to-test {HEAD[:12]}", "/ok-to-test hardware", "/retest", "/retest unit", "/cancel",
            "/help"]  # fmt: skip


def state(*, closed: bool, approved: bool, running: bool) -> ChangeState:
    return ChangeState(
        author="ada", author_trusted=False, head_sha=HEAD,
        approvals=(Approval(HEAD, "maint", False),) if approved else (),
        active_pipelines=(7,) if running else (), closed=closed, head_seen_at=SEEN,
    )  # fmt: skip


def comment(body: str, who: Commenter, now: ChangeState, *, at: datetime = LATER) -> list[Action]:
    event = CommentEvent(REPO, 5, 99, body, who.actor, created_at=at)
    return decide_comment(event, now, POLICY, commenter_permission=who.permission, commenter_trusted=who.trusted)


IDLE = state(closed=False, approved=False, running=False)


def expected(command: str, who: str, closed: bool, approved: bool, running: bool) -> type[Action] | tuple[type, ...]:
    """The rule, stated once: what each cell of the table must produce (the first action's kind)."""
    if who == "bot":
        return Ignore
    name = command.split()[0]
    if name == "/help":
        return Reply
    if name == "/ok-to-test":
        if who != "approver" or closed:
            return Reply
        return RecordApproval
    if who == "stranger":
        return Reply  # may not steer someone else's change
    if closed:
        return Reply  # nothing to retest or cancel on a closed change
    if name == "/retest":
        return Retest if approved else Reply  # an unapproved head never runs, retest or not
    return CancelPipelines if running else Reply


CELLS = list(itertools.product(COMMANDS, COMMENTERS, [False, True], [False, True], [False, True]))


@pytest.mark.parametrize(("command", "who", "closed", "approved", "running"), CELLS)
def test_who_may_do_what_in_which_state(command: str, who: str, closed: bool, approved: bool, running: bool) -> None:
    actions = comment(command, COMMENTERS[who], state(closed=closed, approved=approved, running=running))
    assert actions, "every comment gets an answer or a reason"
    assert isinstance(actions[0], expected(command, who, closed, approved, running)), (command, who, actions)
    if isinstance(actions[0], CancelPipelines):
        assert actions[0].reason == f"cancelled by {COMMENTERS[who].actor.login}"
    if isinstance(actions[0], RecordApproval):
        assert actions[0].approval.sha == HEAD
        assert actions[0].approval.hardware == ("hardware" in command)
        assert any(isinstance(a, StartPipeline) for a in actions[1:]) or running


def test_a_strangers_cancel_is_refused_with_a_reason() -> None:
    (reply,) = comment("/cancel", COMMENTERS["stranger"], state(closed=False, approved=True, running=True))
    assert isinstance(reply, Reply) and "author" in reply.text and "@mallory" in reply.text


def test_ok_to_test_on_a_closed_change_is_refused_with_a_reply() -> None:
    (reply,) = comment("/ok-to-test", COMMENTERS["approver"], state(closed=True, approved=False, running=False))
    assert isinstance(reply, Reply) and "closed" in reply.text


def test_a_bare_ok_to_test_never_approves_a_head_pushed_after_the_comment() -> None:
    """The race: the commenter saw the old head; a force-push lands before the comment is processed."""
    (reply,) = comment("/ok-to-test", COMMENTERS["approver"], IDLE, at=SEEN - timedelta(seconds=1))
    assert isinstance(reply, Reply) and f"/ok-to-test {HEAD[:12]}" in reply.text
    unknown = ChangeState(author="ada", author_trusted=False, head_sha=HEAD, head_seen_at=None)
    event = CommentEvent(REPO, 5, 99, "/ok-to-test", COMMENTERS["approver"].actor, created_at=LATER)
    (reply,) = decide_comment(event, unknown, POLICY, commenter_permission="write", commenter_trusted=False)
    assert isinstance(reply, Reply) and "changed" in reply.text
    # Naming the SHA binds it explicitly, whatever the timing.
    actions = comment(f"/ok-to-test {HEAD[:12]}", COMMENTERS["approver"], IDLE, at=SEEN - timedelta(seconds=1))
    assert isinstance(actions[0], RecordApproval)


def test_a_comment_without_a_command_is_ignored() -> None:
    assert isinstance(comment("LGTM, thanks!", COMMENTERS["approver"], IDLE)[0], Ignore)


def _change_event(action: str, *, draft: bool = False) -> ChangeEvent:
    actor = Actor("ada")
    return ChangeEvent(action, REPO, 5, HEAD, "topic", "octo-org/hello", "main", "b" * 40, "t", actor, actor,  # type: ignore[arg-type]
                       draft=draft)  # fmt: skip


def test_change_events_start_wait_cancel_and_close() -> None:
    idle = ChangeState(author="ada", author_trusted=False, head_sha=HEAD)
    assert isinstance(decide_change(_change_event("opened"), idle, POLICY, test_drafts=False)[0], AwaitApproval)
    trusted = ChangeState(author="ada", author_trusted=True, head_sha=HEAD)
    (start,) = decide_change(_change_event("opened"), trusted, POLICY, test_drafts=False)
    assert isinstance(start, StartPipeline) and start.plan_from == "head" and start.tier == "hardware"
    running = ChangeState(author="ada", author_trusted=True, head_sha="a" * 40, active_pipelines=(3,))
    cancel, start = decide_change(_change_event("updated"), running, POLICY, test_drafts=False)
    assert isinstance(cancel, CancelPipelines) and cancel.reason == f"superseded by {HEAD}"
    (closing,) = decide_change(_change_event("closed"), running, POLICY, test_drafts=False)
    assert isinstance(closing, CancelPipelines) and closing.reason == "the change was closed"
    assert isinstance(decide_change(_change_event("opened", draft=True), trusted, POLICY, test_drafts=False)[0],
                      Ignore)  # fmt: skip
