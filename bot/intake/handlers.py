"""One handler per forge-neutral event: the change's state gathered, core.decide asked, its actions done."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from bot.core.commands import parse_commands
from bot.core.decide import Ignore, decide_change, decide_comment, decide_rerun
from bot.core.events import ChangeEvent, CommentEvent, PushEvent, RerunEvent
from bot.core.trust import is_trusted
from bot.host.config import Tree
from bot.host.stores import Runtime
from bot.intake.actions import carry_out
from bot.intake.desk import ChangeContext, ForgeDesk
from bot.intake.state import change_state, find_change, is_stale
from bot.pipelines.lifecycle import Submission, change_for, submit
from bot.store.models import Change, Revision, utcnow
from bot.store.once import OnceKeys


def on_change(runtime: Runtime, desk: ForgeDesk, tree: Tree, event: ChangeEvent, once: OnceKeys | None) -> list[str]:
    """Opened, updated, reopened, ready, drafted or closed."""
    policy = tree.trust
    trusted = is_trusted(event.author, policy, desk.teams_of(event.author.login, policy.trusted_teams))
    context = ChangeContext(tree, desk.source, event.repo.full_name, event.number, event.repo.installation_id,
                            event.base_ref, event.title, event.author.login, trusted)  # fmt: skip
    with runtime.store.session() as session:
        change = change_for(session, context.submission())
        if is_stale(change, event):
            return [f"ignored: {event.head_sha[:12]} is older than the head already known, "
                    f"{(change.head_sha or '')[:12]}"]  # fmt: skip
        if event.action in ("opened", "updated") and change.head_sha == event.head_sha:
            # A resync heard of it first, or the same push came twice under two delivery ids.
            return [f"ignored: head {event.head_sha[:12]} was handled when labgate first heard of it"]
        change.state = "closed" if event.action == "closed" else "open"
        if change.head_sha != event.head_sha:
            # Stamped on the forge's clock, the one the comments that may approve it carry.
            change.head_sha, change.head_seen_at = event.head_sha, event.updated_at or utcnow()
        state = change_state(session, change, event.author.login, trusted, event.head_sha, once=once)
    actions = decide_change(event, state, policy, test_drafts=tree.test_drafts)
    return carry_out(runtime, desk, context, actions, once)


def on_comment(runtime: Runtime, desk: ForgeDesk, tree: Tree, event: CommentEvent, once: OnceKeys | None) -> list[str]:
    """A new comment; its commands, if it has any, from the people allowed to give them."""
    if event.commenter.is_bot:
        return ["ignored: comment by a bot"]
    if not parse_commands(event.body):
        return ["ignored: no command"]  # decided before any forge call is made
    policy = tree.trust
    head = desk.current_head()
    author_trusted = is_trusted(head.author, policy, desk.teams_of(head.author.login, policy.trusted_teams))
    permission = desk.permission(event.commenter.login)
    commenter_trusted = is_trusted(event.commenter, policy)
    context = ChangeContext(tree, desk.source, event.repo.full_name, event.number, event.repo.installation_id,
                            head.base_ref, head.title, head.author.login, author_trusted)  # fmt: skip
    with runtime.store.session() as session:
        change = find_change(session, desk.source, context.external_id)
        state = change_state(session, change, head.author.login, author_trusted, head.sha, closed=head.closed,
                             once=once)  # fmt: skip
    actions = decide_comment(event, state, policy, commenter_permission=permission, commenter_trusted=commenter_trusted)
    return carry_out(runtime, desk, context, actions, once)


def on_rerun(runtime: Runtime, desk_for: Callable[[int], ForgeDesk], source: str, tree: Tree, event: RerunEvent,
             once: OnceKeys | None) -> list[str]:  # fmt: skip
    """The forge's own re-run button on a head of one of our changes (`desk_for(number)` reaches it)."""
    with runtime.store.session() as session:
        change = session.scalar(
            select(Change).join(Revision)
            .where(Change.source == source, Change.forge_repo == event.repo.full_name,
                   Revision.head_sha == event.head_sha)
            .order_by(Change.id.desc())
        )  # fmt: skip
        state = context = None
        if change is not None and change.number is not None:
            state = change_state(session, change, change.submitter, change.author_trusted, event.head_sha)
            context = ChangeContext(tree, source, event.repo.full_name, change.number, event.repo.installation_id,
                                    change.revisions[-1].base_ref, change.title, change.submitter,
                                    change.author_trusted)  # fmt: skip
    actions = decide_rerun(event, state, tree.trust)
    if context is None:
        return [f"ignored: {a.reason}" for a in actions if isinstance(a, Ignore)]
    return carry_out(runtime, desk_for(context.number), context, actions, once)


def on_push(runtime: Runtime, source: str, tree: Tree, event: PushEvent, once: OnceKeys | None) -> list[str]:
    """A push to one of the tree's staging branches: a post-merge pipeline against the previous head."""
    branch = event.ref.removeprefix("refs/heads/")
    if event.deleted or not event.ref.startswith("refs/heads/") or branch not in tree.staging_branches:
        return [f"ignored: push to {event.ref} is not to a staging branch"]
    external = f"{event.repo.full_name}@{branch}"
    # Compared with the head labgate last tested on the branch, not the delivery's `before`: what the
    # comparison and the test selection start from is then labgate's own record, whatever a delivery says.
    with runtime.store.session() as session:
        previous = session.scalar(
            select(Revision.head_sha).join(Change)
            .where(Change.source == f"{source}-push", Change.external_id == external, Revision.head_sha.is_not(None))
            .order_by(Revision.id.desc())
        )  # fmt: skip
    before = previous or (event.before if not event.created else event.after)
    pipeline_id = submit(
        runtime,
        Submission(
            tree_name=tree.name, tree_url=tree.url, source=f"{source}-push", external_id=external,
            base_ref=before, ref=event.after, head_sha=event.after,
            title=f"push to {branch}", submitter=event.pusher.login, forge_repo=event.repo.full_name,
            installation_id=event.repo.installation_id, kind="post-merge",
        ),
        once_key=once.key("start", event.after) if once else None,
    )  # fmt: skip
    return [f"post-merge pipeline {pipeline_id} for {branch}@{event.after[:12]}"]
