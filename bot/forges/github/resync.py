"""Catch up on pull requests whose webhook never arrived.

GitHub does not redeliver a failed delivery by itself (an operator may, by hand, within three
days), so a delivery lost to an outage of ours is a pull request never tested. Every few minutes
this lists the open pull requests of each configured repository and handles each head labgate has
not heard of, as if its `synchronize` delivery had arrived. Exactly once: each head is a delivery
of its own (`resync:<repo>#<number>@<sha>`), skipped once handled; a webhook that turns up later
for a head already heard of is ignored by the intake.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from bot.forges.github.client import GitHubApp
from bot.forges.github.intake import SOURCE, handle_event
from bot.forges.github.sansio import MalformedPayload, change_event_from_pull
from bot.host.stores import Runtime
from bot.intake.desk import external_id
from bot.pipelines.lifecycle import delivery_status, mark_delivery, record_delivery
from bot.store.models import Change

log = logging.getLogger(__name__)


def resync_open_pulls(runtime: Runtime, github: GitHubApp) -> list[str]:
    """Handle every open pull request head of every configured repository not heard of yet; one
    line per head handled or per repository that could not be listed."""
    done: list[str] = []
    for tree in runtime.config.trees:
        if tree.github is None:
            continue
        repo = tree.github.repo
        installation = github.installation_for(repo)
        if installation is None:
            done.append(f"{repo}: the App is not installed there")
            continue
        known = _known_heads(runtime, repo)
        for listed in github.open_pulls(installation, repo):
            if known.get(listed.number) == listed.head.sha:
                continue
            done += _catch_up(runtime, github, repo, installation, listed.number)
    return done


def _known_heads(runtime: Runtime, repo: str) -> dict[int, str | None]:
    with runtime.store.session() as session:
        rows = session.execute(
            select(Change.number, Change.head_sha).where(Change.source == SOURCE, Change.forge_repo == repo)
        ).all()
    return {number: head for number, head in rows if number is not None}


def _catch_up(runtime: Runtime, github: GitHubApp, repo: str, installation: int, number: int) -> list[str]:
    # The listing's items lack fields the event needs (merged, the author's association): one GET each,
    # only for heads labgate missed.
    pull = github.pull(installation, repo, number)
    try:
        event = change_event_from_pull(pull.raw_data, installation)
    except MalformedPayload as exc:
        return [f"{external_id(repo, number)}: GitHub's pull request is unusable: {exc}"]
    delivery_id = f"resync:{external_id(repo, number)}@{event.head_sha}"
    with runtime.store.session() as session:
        record_delivery(session, SOURCE, delivery_id, "resync")
    if delivery_status(runtime, SOURCE, delivery_id) == "handled":
        return []
    outcome = handle_event(runtime, github, event, delivery_id)
    mark_delivery(runtime, SOURCE, delivery_id, "handled", "\n".join(outcome))
    log.info("resync %s: %s", delivery_id, "; ".join(outcome))
    return [f"{delivery_id}: {'; '.join(outcome)}"]
