"""GitLab events in: each names a configured tree's project by id; bot/intake does the rest, reaching the
merge request through a MergeRequestDesk with the tree's policy in GitLab's access levels."""

from __future__ import annotations

from dataclasses import replace

from bot.core.commands import parse_commands
from bot.core.events import ChangeEvent, CommentEvent, Event, PushEvent
from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.desk import SOURCE, MergeRequestDesk, policy_for
from bot.host.config import Tree
from bot.host.stores import Runtime
from bot.intake.handlers import on_change, on_comment, on_push
from bot.store.once import OnceKeys

__all__ = ["SOURCE", "handle_event"]


def handle_event(runtime: Runtime, client: GitLabClient, event: Event, delivery_id: str | None = None) -> list[str]:
    """Carry out what the event calls for; one line per action, for the log. Run again for the same
    delivery (a retry), it does nothing twice (bot/store/once.py).

    GitLab's webhook token is sent in clear, so a delivery's word is taken for nothing that grants
    anything: the merge request (its head, state, target branch, title, draft, author and their role),
    a note (its author, text, kind and time, against when the head it approves was pushed) and a
    branch's head are read back from GitLab, and names come from the config; a delivery that disagrees
    is ignored with the reason. Side effects are done once per merge request head, note or push, not
    per delivery, so the same event sent again under a new delivery id repeats nothing."""
    if not isinstance(event, ChangeEvent | CommentEvent | PushEvent):
        return [f"ignored: {type(event).__name__}"]
    project_id = event.repo.installation_id
    found = runtime.config.tree_for_gitlab_project(project_id) if project_id is not None else None
    if found is None or found.gitlab is None or project_id is None:
        return [f"ignored: project {event.repo.full_name} (id {project_id}) is not a configured tree"]
    tree = found.model_copy(update={"trust": policy_for(found, found.gitlab)})
    repo = replace(event.repo, full_name=found.gitlab.project, clone_url=found.url)
    if isinstance(event, PushEvent):
        return _push(runtime, client, tree, replace(event, repo=repo), project_id)
    desk = MergeRequestDesk(client, project_id, event.number)
    if isinstance(event, ChangeEvent):
        head = desk.current_head()
        if head.sha != event.head_sha or head.closed != (event.action == "closed"):
            state = "closed" if head.closed else "open"
            return [f"ignored: !{event.number} is {state} at {head.sha[:12]} now, not as delivered "
                    f"({event.action} at {event.head_sha[:12]}); a later event tells of it"]  # fmt: skip
        # The hook names the author by id only, and no one's role; the rest is read back too.
        change = replace(event, repo=repo, author=desk.author(), base_ref=head.base_ref, title=head.title,
                         draft=head.draft)  # fmt: skip
        once = OnceKeys(SOURCE, f"mr:{project_id}!{event.number}:{event.action}:{head.sha}:{head.base_ref}")
        return on_change(runtime, desk, tree, change, once)
    return _note(runtime, client, desk, tree, replace(event, repo=repo), project_id)


def _note(runtime: Runtime, client: GitLabClient, desk: MergeRequestDesk, tree: Tree, event: CommentEvent,
          project_id: int) -> list[str]:  # fmt: skip
    commands = parse_commands(event.body)
    if not commands:
        return ["ignored: no command"]  # decided before any forge call is made
    if event.commenter.login.lower() == client.own_username().lower():
        # labgate's own notes come back as Note Hooks; GitLab's payload has no bot flag to tell them by.
        return ["ignored: a note of labgate's own"]
    note = client.note(project_id, event.number, event.comment_id)
    if note is None or note.system or note.author.lower() != event.commenter.login.lower() or note.body != event.body:
        return [f"ignored: note {event.comment_id} is not on !{event.number} as delivered (by "
                f"{event.commenter.login}, with this text)"]  # fmt: skip
    seen = event.seen_head_sha
    if seen is not None and any(command.name == "ok-to-test" for command in commands):
        # The head the note's page showed is the delivery's word: it approves only a head GitLab had
        # made before the note was written (an old note sent again naming a newer head approves nothing).
        pushed = client.head_pushed_at(project_id, event.number, seen)
        if pushed is None or note.created_at <= pushed:
            return [f"ignored: note {event.comment_id} was written before {seen[:12]} was pushed to "
                    f"!{event.number}; it cannot approve it"]  # fmt: skip
    once = OnceKeys(SOURCE, f"note:{project_id}!{event.number}:{event.comment_id}")
    return on_comment(runtime, desk, tree, replace(event, created_at=note.created_at), once)


def _push(runtime: Runtime, client: GitLabClient, tree: Tree, event: PushEvent, project_id: int) -> list[str]:
    branch = event.ref.removeprefix("refs/heads/")
    if event.deleted or not event.ref.startswith("refs/heads/") or branch not in tree.staging_branches:
        return on_push(runtime, SOURCE, tree, event, None)  # says why it is ignored
    now = client.branch_head(project_id, branch)
    if now != event.after:
        return [f"ignored: {branch} is at {(now or 'nothing')[:12]} now, not {event.after[:12]}"]
    return on_push(runtime, SOURCE, tree, event, OnceKeys(SOURCE, f"push:{project_id}:{branch}:{event.after}"))
