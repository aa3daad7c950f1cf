"""GitHub events in: each names a configured tree's repository; bot/intake does the rest, reaching the
pull request through a PullRequestDesk."""

from __future__ import annotations

import logging

from bot.core.events import ChangeEvent, CommentEvent, Event, PushEvent, RerunEvent
from bot.forges.github.client import GitHubApp
from bot.forges.github.desk import SOURCE, PullRequestDesk
from bot.host.stores import Runtime
from bot.intake.desk import external_id
from bot.intake.handlers import on_change, on_comment, on_push, on_rerun
from bot.store.once import OnceKeys

log = logging.getLogger(__name__)
__all__ = ["SOURCE", "external_id", "handle_event"]


def handle_event(runtime: Runtime, github: GitHubApp, event: Event, delivery_id: str | None = None) -> list[str]:
    """Carry out what the event calls for; one line per action, for the log. Run again for the same
    delivery (a retry), it does nothing twice (bot/store/once.py)."""
    if not isinstance(event, ChangeEvent | CommentEvent | RerunEvent | PushEvent):
        return [f"ignored: {type(event).__name__}"]
    tree = runtime.config.tree_for_github_repo(event.repo.full_name)
    if tree is None:
        return [f"ignored: {event.repo.full_name} is not a configured tree"]
    once = OnceKeys(SOURCE, delivery_id) if delivery_id is not None else None
    repo, installation = event.repo.full_name, event.repo.installation_id

    def desk(number: int) -> PullRequestDesk:
        return PullRequestDesk(github, installation, repo, number)

    if isinstance(event, ChangeEvent):
        return on_change(runtime, desk(event.number), tree, event, once)
    if isinstance(event, CommentEvent):
        if installation is None:
            return ["ignored: comment delivered without an App installation"]
        return on_comment(runtime, desk(event.number), tree, event, once)
    if isinstance(event, RerunEvent):
        return on_rerun(runtime, desk, SOURCE, tree, event, once)
    return on_push(runtime, SOURCE, tree, event, once)
