"""GitLab events in: each names a configured tree's project by id; bot/intake does the rest, reaching the
merge request through a MergeRequestDesk with the tree's policy in GitLab's access levels."""

from __future__ import annotations

from dataclasses import replace

from bot.core.events import ChangeEvent, CommentEvent, Event, PushEvent
from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.desk import SOURCE, MergeRequestDesk, policy_for
from bot.host.stores import Runtime
from bot.intake.handlers import on_change, on_comment, on_push
from bot.store.once import OnceKeys

__all__ = ["SOURCE", "handle_event"]


def handle_event(runtime: Runtime, client: GitLabClient, event: Event, delivery_id: str | None = None) -> list[str]:
    """Carry out what the event calls for; one line per action, for the log. Run again for the same
    delivery (a retry), it does nothing twice (bot/store/once.py)."""
    if not isinstance(event, ChangeEvent | CommentEvent | PushEvent):
        return [f"ignored: {type(event).__name__}"]
    project_id = event.repo.installation_id
    found = runtime.config.tree_for_gitlab_project(project_id) if project_id is not None else None
    if found is None or found.gitlab is None:
        return [f"ignored: project {event.repo.full_name} (id {project_id}) is not a configured tree"]
    tree = found.model_copy(update={"trust": policy_for(found, found.gitlab)})
    once = OnceKeys(SOURCE, delivery_id) if delivery_id is not None else None
    if isinstance(event, PushEvent):
        return on_push(runtime, SOURCE, tree, event, once)
    if isinstance(event, CommentEvent) and event.commenter.login.lower() == client.own_username().lower():
        # labgate's own notes come back as Note Hooks; GitLab's payload has no bot flag to tell them by.
        return ["ignored: a note of labgate's own"]
    desk = MergeRequestDesk(client, found.gitlab.project_id, event.number)
    if isinstance(event, ChangeEvent):
        # The hook names the author by id only, and no one's role: both come from the API.
        return on_change(runtime, desk, tree, replace(event, author=desk.author()), once)
    return on_comment(runtime, desk, tree, event, once)
