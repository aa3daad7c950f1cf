"""GitHub events in: gather the change's state, ask core.decide, carry out its actions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from github.PullRequest import PullRequest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.config import Tree
from bot.core.commands import parse_commands
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
    decide_rerun,
)
from bot.core.events import Actor, ChangeEvent, CommentEvent, Event, PushEvent, RerunEvent, as_utc
from bot.core.trust import Approval as CoreApproval
from bot.core.trust import TrustPolicy, is_trusted
from bot.forges.github.client import GitHubApp
from bot.forges.github.reporter import post_approval_check
from bot.pipeline import Submission, change_for, submit
from bot.runtime import Runtime
from bot.steering import cancel_pipelines, retest_failed
from bot.store.models import Approval, Change, Pipeline, Revision, utcnow
from bot.store.once import OnceKeys, once_done, record_once

log = logging.getLogger(__name__)
SOURCE = "github"


@dataclass(frozen=True)
class ChangeContext:
    """The pull request an action is about, as the actions need it."""

    tree: Tree
    repo: str
    number: int
    installation: int | None
    base_ref: str
    title: str
    author: str
    author_trusted: bool

    def submission(self, **revision: Any) -> Submission:
        """This pull request as the pipeline layer takes it; `revision` names what to test."""
        return Submission(
            tree_name=self.tree.name, tree_url=self.tree.url, source=SOURCE,
            external_id=external_id(self.repo, self.number), base_ref=self.base_ref, title=self.title,
            submitter=self.author, forge_repo=self.repo, number=self.number, installation_id=self.installation,
            author_trusted=self.author_trusted, **revision,
        )  # fmt: skip


def external_id(repo: str, number: int) -> str:
    return f"{repo}#{number}"


def _change(session: Session, repo: str, number: int) -> Change | None:
    return session.scalar(
        select(Change).where(Change.source == SOURCE, Change.external_id == external_id(repo, number))
    )


def _state(session: Session, change: Change | None, author: str, author_trusted: bool, head_sha: str,
           *, closed: bool | None = None, once: OnceKeys | None = None) -> ChangeState:  # fmt: skip
    if change is None:
        return ChangeState(author=author, author_trusted=author_trusted, head_sha=head_sha, closed=bool(closed))
    approvals = tuple(CoreApproval(a.sha, a.approver, a.hardware) for a in change.approvals)
    active = session.scalars(
        select(Pipeline.id).join(Revision).where(Revision.change_id == change.id, Pipeline.state != "done")
    ).all()
    if once is not None:
        # A retried event must not take the pipeline its own first attempt started for a superseded one.
        own = {int(p) for p in once.outcomes(session, "start")}
        active = [p for p in active if p not in own]
    return ChangeState(
        author=author,
        author_trusted=author_trusted,
        head_sha=head_sha,
        approvals=approvals,
        active_pipelines=tuple(active),
        closed=change.state == "closed" if closed is None else closed,
        head_seen_at=change.head_seen_at if change.head_sha == head_sha else None,
    )


def _teams_of(github: GitHubApp, installation_id: int | None, login: str, policy: TrustPolicy) -> frozenset[str]:
    if not policy.trusted_teams or installation_id is None:
        return frozenset()
    return frozenset(t for t in policy.trusted_teams if github.is_team_member(installation_id, t, login))


def handle_event(runtime: Runtime, github: GitHubApp, event: Event, delivery_id: str | None = None) -> list[str]:
    """Carry out what the event calls for; one line per action, for the log. Run again for the same
    delivery (a retry), it does nothing twice (bot/store/once.py)."""
    once = OnceKeys(SOURCE, delivery_id) if delivery_id is not None else None
    if isinstance(event, ChangeEvent | CommentEvent | RerunEvent | PushEvent):
        tree = runtime.config.tree_for_github_repo(event.repo.full_name)
        if tree is None or tree.github is None:
            return [f"ignored: {event.repo.full_name} is not a configured tree"]
    else:
        return [f"ignored: {type(event).__name__}"]
    policy = tree.github.trust
    if isinstance(event, ChangeEvent):
        return _on_change(runtime, github, tree, event, policy, once)
    if isinstance(event, CommentEvent):
        return _on_comment(runtime, github, tree, event, policy, once)
    if isinstance(event, RerunEvent):
        return _on_rerun(runtime, github, tree, event, policy, once)
    return _on_push(runtime, tree, event, once)


def _on_change(runtime: Runtime, github: GitHubApp, tree: Tree, event: ChangeEvent, policy: TrustPolicy,
               once: OnceKeys | None) -> list[str]:  # fmt: skip
    assert tree.github is not None
    installation = event.repo.installation_id
    trusted = is_trusted(event.author, policy, _teams_of(github, installation, event.author.login, policy))
    context = ChangeContext(
        tree, event.repo.full_name, event.number, installation, event.base_ref, event.title, event.author.login, trusted
    )
    with runtime.store.session() as session:
        change = change_for(session, context.submission())
        if _is_stale(change, event):
            return [f"ignored: {event.head_sha[:12]} is older than the head already known, "
                    f"{(change.head_sha or '')[:12]}"]  # fmt: skip
        if event.action in ("opened", "updated") and change.head_sha == event.head_sha:
            # A resync heard of it first, or the same push came twice under two delivery ids.
            return [f"ignored: head {event.head_sha[:12]} was handled when labgate first heard of it"]
        change.state = "closed" if event.action == "closed" else "open"
        if change.head_sha != event.head_sha:
            # Stamped on the forge's clock, the one the comments that may approve it carry.
            change.head_sha, change.head_seen_at = event.head_sha, event.updated_at or utcnow()
        state = _state(session, change, event.author.login, trusted, event.head_sha, once=once)
    actions = decide_change(event, state, policy, test_drafts=tree.github.test_drafts)
    return _carry_out(runtime, github, context, actions, once)


def _is_stale(change: Change, event: ChangeEvent) -> bool:
    """A delivery that arrives after a newer one (GitHub does not order them, and a resync may
    have heard the newer head first) must not bring back an older head."""
    if change.head_sha in (None, event.head_sha) or change.head_seen_at is None or event.updated_at is None:
        return False
    return as_utc(event.updated_at) < as_utc(change.head_seen_at)


def _on_comment(runtime: Runtime, github: GitHubApp, tree: Tree, event: CommentEvent, policy: TrustPolicy,
                once: OnceKeys | None) -> list[str]:  # fmt: skip
    installation = event.repo.installation_id
    if installation is None:
        return ["ignored: comment delivered without an App installation"]
    if event.commenter.is_bot:
        return ["ignored: comment by a bot"]
    if not parse_commands(event.body):
        return ["ignored: no command"]  # decided before any token is minted or API call made
    # The comment payload has no head SHA, and a push may be in flight: ask for the current one.
    pull = github.pull(installation, event.repo.full_name, event.number)
    author = pull.user.login
    author_trusted = is_trusted(_actor_from_pull(pull), policy, _teams_of(github, installation, author, policy))
    permission = github.permission(installation, event.repo.full_name, event.commenter.login)
    commenter_trusted = is_trusted(event.commenter, policy)
    with runtime.store.session() as session:
        state = _state(session, _change(session, event.repo.full_name, event.number), author, author_trusted,
                       pull.head.sha, closed=pull.state == "closed", once=once)  # fmt: skip
    actions = decide_comment(event, state, policy, commenter_permission=permission, commenter_trusted=commenter_trusted)
    context = ChangeContext(
        tree, event.repo.full_name, event.number, installation, pull.base.ref, pull.title, author, author_trusted
    )
    return _carry_out(runtime, github, context, actions, once)


def _actor_from_pull(pull: PullRequest) -> Actor:
    return Actor(pull.user.login, pull.raw_data.get("author_association"), pull.user.type == "Bot")


def _on_rerun(runtime: Runtime, github: GitHubApp, tree: Tree, event: RerunEvent, policy: TrustPolicy,
              once: OnceKeys | None) -> list[str]:  # fmt: skip
    with runtime.store.session() as session:
        change = session.scalar(
            select(Change)
            .join(Revision)
            .where(
                Change.source == SOURCE, Change.forge_repo == event.repo.full_name, Revision.head_sha == event.head_sha
            )
            .order_by(Change.id.desc())
        )
        state = None
        if change is not None and change.number is not None:
            state = _state(session, change, change.submitter, change.author_trusted, event.head_sha)
            number, base_ref, title, author = (
                change.number,
                change.revisions[-1].base_ref,
                change.title,
                change.submitter,
            )
    actions = decide_rerun(event, state, policy)
    if state is None:
        return [f"ignored: {a.reason}" for a in actions if isinstance(a, Ignore)]
    context = ChangeContext(
        tree, event.repo.full_name, number, event.repo.installation_id, base_ref, title, author, state.author_trusted
    )
    return _carry_out(runtime, github, context, actions, once)


def _on_push(runtime: Runtime, tree: Tree, event: PushEvent, once: OnceKeys | None) -> list[str]:
    assert tree.github is not None
    branch = event.ref.removeprefix("refs/heads/")
    if event.deleted or not event.ref.startswith("refs/heads/") or branch not in tree.github.staging_branches:
        return [f"ignored: push to {event.ref} is not to a staging branch"]
    pipeline_id = submit(
        runtime,
        Submission(
            tree_name=tree.name,
            tree_url=tree.url,
            source="github-push",
            external_id=f"{event.repo.full_name}@{branch}",
            base_ref=event.before if not event.created else event.after,
            ref=event.after,
            head_sha=event.after,
            title=f"push to {branch}",
            submitter=event.pusher.login,
            forge_repo=event.repo.full_name,
            installation_id=event.repo.installation_id,
            kind="post-merge",
        ),
        once_key=once.key("start", event.after) if once else None,
    )
    return [f"post-merge pipeline {pipeline_id} for {branch}@{event.after[:12]}"]


def _carry_out(runtime: Runtime, github: GitHubApp, context: ChangeContext, actions: list[Action],
               once: OnceKeys | None = None) -> list[str]:  # fmt: skip
    repo, number, installation = context.repo, context.number, context.installation
    done: list[str] = []

    def key(kind: str, *parts: str) -> str | None:
        return once.key(kind, *parts) if once is not None else None

    for action in actions:
        if isinstance(action, CancelPipelines):
            cancel_pipelines(runtime, action.pipeline_ids, action.reason)
            done.append(f"cancelled {list(action.pipeline_ids)}: {action.reason}")
        elif isinstance(action, RecordApproval):
            _record_approval(runtime, context, action)
            done.append(f"approval of {action.approval.sha[:12]} by {action.approval.approver}")
        elif isinstance(action, StartPipeline):
            if not context.author_trusted and installation is not None:
                approvers = _approvers(runtime, repo, number, action.head_sha)
                _forge_write_once(runtime, key("approved", action.head_sha), partial(
                    post_approval_check, github, installation, repo, action.head_sha, waiting=False,
                    text=f"Approved for `{action.head_sha[:12]}` by {approvers}."))  # fmt: skip
            pipeline_id = submit(
                runtime,
                context.submission(
                    ref=action.head_sha, head_sha=action.head_sha, merge=True, plan_from=action.plan_from,
                    tier=action.tier,
                ),
                once_key=key("start", action.head_sha),
            )  # fmt: skip
            done.append(f"pipeline {pipeline_id} for {action.head_sha[:12]} ({action.reason}, tier {action.tier})")
        elif isinstance(action, AwaitApproval):
            if installation is not None:
                _forge_write_once(runtime, key("await", action.head_sha), partial(
                    post_approval_check, github, installation, repo, action.head_sha, waiting=True,
                    text=action.text))  # fmt: skip
            done.append(f"waiting for approval of {action.head_sha[:12]}")
        elif isinstance(action, Retest):
            with runtime.store.session() as session:
                last = session.scalar(
                    select(Pipeline.id)
                    .join(Revision)
                    .join(Change)
                    .where(
                        Change.source == SOURCE,
                        Change.external_id == external_id(repo, number),
                        Revision.head_sha == action.head_sha,
                        Pipeline.state == "done",
                        Pipeline.id.not_in(_started_by(runtime, once)),
                    )
                    .order_by(Pipeline.id.desc())
                )
            retest_key = key("start", "retest", action.head_sha, action.job_name or "")
            new = None
            if last:
                new = retest_failed(runtime, last, action.job_name, action.requested_by, once_key=retest_key)
            done.append(f"re-run of pipeline {last} as {new}" if new else "nothing to re-run")
        elif isinstance(action, Reply):
            if installation is not None:
                _forge_write_once(runtime, key("reply", action.text),
                                  partial(github.comment, installation, repo, number, action.text))  # fmt: skip
            done.append("replied")
        else:
            done.append(f"ignored: {action.reason}")
    return done


def _record_approval(runtime: Runtime, context: ChangeContext, action: RecordApproval) -> None:
    """Once: a retried /ok-to-test finds its approval already there."""
    wanted = action.approval
    with runtime.store.session() as session:
        change = change_for(session, context.submission())
        if any((a.sha, a.approver, a.hardware) == (wanted.sha, wanted.approver, wanted.hardware)
               for a in change.approvals):  # fmt: skip
            return
        session.add(Approval(change=change, sha=wanted.sha, approver=wanted.approver, hardware=wanted.hardware))


def _forge_write_once(runtime: Runtime, key: str | None, write: Callable[[], object]) -> None:
    """A forge write a retry must not repeat, recorded once it succeeded. It is repeated only if
    the task dies between the forge's answer and this record (the forge has no idempotency key)."""
    if key is not None:
        with runtime.store.session() as session:
            if once_done(session, key) is not None:
                return
    write()
    if key is not None:
        with contextlib.suppress(IntegrityError), runtime.store.session() as session:
            record_once(session, key)


def _started_by(runtime: Runtime, once: OnceKeys | None) -> list[int]:
    """Pipelines this delivery already started (a retry must not re-run its own re-run)."""
    if once is None:
        return []
    with runtime.store.session() as session:
        return [int(p) for p in once.outcomes(session, "start")]


def _approvers(runtime: Runtime, repo: str, number: int, sha: str) -> str:
    with runtime.store.session() as session:
        change = _change(session, repo, number)
        names = sorted({f"@{a.approver}" for a in (change.approvals if change else []) if a.sha == sha})
    return ", ".join(names) or "a maintainer"
