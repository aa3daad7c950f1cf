"""The one brain: a forge-neutral event, the tree's policy and the change's state in, actions out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from bot.core.commands import Command, parse_commands, render_help
from bot.core.events import ChangeEvent, CommentEvent, RerunEvent, as_utc
from bot.core.trust import Approval, Tier, TrustPolicy, approval_matches, may_approve, render_waiting_text, tier_for


@dataclass(frozen=True)
class ChangeState:
    """What the store knows of a change when an event about it arrives."""

    author: str
    author_trusted: bool
    head_sha: str
    approvals: tuple[Approval, ...] = ()
    active_pipelines: tuple[int, ...] = ()  # queued or running, any revision
    closed: bool = False
    # When labgate first heard of head_sha (None: not yet). A bare /ok-to-test written before
    # then cannot have been about this head.
    head_seen_at: datetime | None = None


@dataclass(frozen=True)
class StartPipeline:
    head_sha: str
    tier: Tier
    # A change must never rewrite the rules it is judged by: untrusted ones use the base's plan.
    plan_from: str
    reason: str


@dataclass(frozen=True)
class AwaitApproval:
    head_sha: str
    text: str


@dataclass(frozen=True)
class CancelPipelines:
    pipeline_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class RecordApproval:
    approval: Approval


@dataclass(frozen=True)
class Retest:
    head_sha: str
    job_name: str | None = None  # None: every failed job
    requested_by: str = ""


@dataclass(frozen=True)
class Reply:
    text: str


@dataclass(frozen=True)
class Ignore:
    reason: str


Action = StartPipeline | AwaitApproval | CancelPipelines | RecordApproval | Retest | Reply | Ignore


def _start_or_wait(head_sha: str, state: ChangeState, policy: TrustPolicy, reason: str) -> list[Action]:
    tier = tier_for(state.author_trusted, head_sha, state.approvals, policy)
    if tier == "none":
        previous = state.approvals[-1] if state.approvals else None
        return [AwaitApproval(head_sha, render_waiting_text(policy, state.author, head_sha, previous))]
    plan_from = "head" if state.author_trusted else "base"
    return [StartPipeline(head_sha, tier, plan_from, reason)]


def decide_change(event: ChangeEvent, state: ChangeState, policy: TrustPolicy, *, test_drafts: bool) -> list[Action]:
    """Opened, updated, reopened, ready, drafted or closed."""
    superseded = None
    if state.active_pipelines:
        superseded = CancelPipelines(state.active_pipelines, f"superseded by {event.head_sha}")
    if event.action == "closed":
        closing = CancelPipelines(state.active_pipelines, "the change was closed")
        return [closing] if state.active_pipelines else [Ignore("closed; nothing running")]
    if event.draft and not test_drafts:
        actions: list[Action] = [superseded] if superseded else []
        return actions + [Ignore("draft: not tested unless the tree's config says so")]
    actions = [superseded] if superseded else []
    return actions + _start_or_wait(event.head_sha, state, policy, f"change {event.action}")


def decide_comment(
    event: CommentEvent, state: ChangeState, policy: TrustPolicy, *, commenter_permission: str | None,
    commenter_trusted: bool,
) -> list[Action]:  # fmt: skip
    """Commands in a new comment. Bots are never obeyed, whatever they write."""
    if event.commenter.is_bot:
        return [Ignore("comment by a bot")]
    commands = parse_commands(event.body)
    if not commands:
        return [Ignore("no command")]
    actions: list[Action] = []
    for command in commands:
        actions += _command_actions(command, event, state, policy, commenter_permission, commenter_trusted)
    return actions


def _command_actions(
    command: Command, event: CommentEvent, state: ChangeState, policy: TrustPolicy,
    permission: str | None, commenter_trusted: bool,
) -> list[Action]:  # fmt: skip
    who = event.commenter.login
    maintainer = may_approve(permission, policy)
    if command.name == "help":
        return [Reply(render_help())]
    if command.name == "ok-to-test":
        return _approve(command, event, state, policy, maintainer)
    # Steering (retest, cancel) is for the change's author, its approvers and trusted users: a
    # stranger must not stop someone else's pipeline or spend the lab on it.
    is_author = who.lower() == state.author.lower()
    if not (is_author or maintainer or commenter_trusted):
        return [Reply(f"@{who}: `/{command.name}` is for the change's author, users with "
                      f"{', '.join(policy.approvers_may_be)} permission, and trusted users.")]  # fmt: skip
    if state.closed:
        return [Reply(f"@{who}: this change is closed; there is nothing to `/{command.name}`.")]
    if command.name == "retest":
        if tier_for(state.author_trusted, state.head_sha, state.approvals, policy) == "none":
            return [Reply(f"@{who}: the head `{state.head_sha[:12]}` is not approved, so it has not run; "
                          "nothing to retest.")]  # fmt: skip
        return [Retest(state.head_sha, " ".join(command.args) or None, requested_by=who)]
    if state.active_pipelines:
        return [CancelPipelines(state.active_pipelines, f"cancelled by {who}")]
    return [Reply(f"@{who}: nothing is running.")]


def _approve(command: Command, event: CommentEvent, state: ChangeState, policy: TrustPolicy,
             maintainer: bool) -> list[Action]:  # fmt: skip
    """/ok-to-test [sha] [hardware]: binds to one head, the one the approver saw."""
    who = event.commenter.login
    if not maintainer:
        return [Reply(f"@{who}: only users with {', '.join(policy.approvers_may_be)} permission may approve.")]
    if state.closed:
        return [Reply(f"@{who}: this change is closed; nothing approved.")]
    head = state.head_sha
    sha_prefix = next((a for a in command.args if a != "hardware"), None) or event.seen_head_sha
    if sha_prefix is None and not _saw_head(event, state):
        # The comment names no SHA and may predate the current head (a force-push just before it was
        # processed): approving "whatever is current" would approve code nobody looked at.
        return [Reply(f"@{who}: the head changed to `{head[:12]}` after your comment, or labgate has not "
                      f"heard of it yet; to approve that head, comment `/ok-to-test {head[:12]}`.")]  # fmt: skip
    if not approval_matches(sha_prefix, head):
        return [Reply(f"@{who}: `{sha_prefix[:12] if sha_prefix else ''}` is not the current head `{head[:12]}`; "
                      "nothing approved.")]  # fmt: skip
    approval = Approval(sha=head, approver=who, hardware="hardware" in command.args)
    new_state = replace(state, approvals=(*state.approvals, approval))
    return [RecordApproval(approval), *_start_or_wait(head, new_state, policy, f"approved by {who}")]


def _saw_head(event: CommentEvent, state: ChangeState) -> bool:
    """Whether the head was known before the comment was written (labgate heard of it after the
    push, so if it heard before the comment, the commenter could have seen it). Strictly before:
    forges stamp comments to the second, so one written in the second of the push is refused."""
    if event.created_at is None or state.head_seen_at is None:
        return False
    return as_utc(state.head_seen_at) < as_utc(event.created_at)


def decide_rerun(event: RerunEvent, state: ChangeState | None, policy: TrustPolicy) -> list[Action]:
    """The forge's Re-run button repeats the failed jobs of that head, if it may run at all."""
    if state is None:
        return [Ignore(f"no change of ours has head {event.head_sha}")]
    if tier_for(state.author_trusted, event.head_sha, state.approvals, policy) == "none":
        return [Ignore("re-run of an unapproved head")]
    return [Retest(event.head_sha, None, requested_by=event.requester.login)]
