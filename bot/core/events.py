"""Forge-neutral events: what a forge adapter hands the brain (forge words stay in the adapter)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import TypeAdapter

# retargeted: the change now asks to go into another branch (a new base), its head unchanged.
ChangeAction = Literal["opened", "updated", "reopened", "ready", "drafted", "retargeted", "closed"]


def as_utc(moment: datetime) -> datetime:
    """Aware UTC: a store may hand back naive UTC times (SQLite); forges send aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Actor:
    """Someone acting on a forge. `association` is the forge's own view of their role
    (GitHub: OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, FIRST_TIMER, NONE, ...)."""

    login: str
    association: str | None = None
    is_bot: bool = False


@dataclass(frozen=True)
class RepoRef:
    forge: str  # "github", "gitlab", ...
    full_name: str  # "owner/name"
    clone_url: str
    default_branch: str = "main"
    # Where labgate acts on the repository, in the forge's ids: a GitHub App installation that delivered
    # the event; a GitLab project id (the target project of a merge request: paths can be renamed).
    installation_id: int | None = None


@dataclass(frozen=True)
class ChangeEvent:
    """A change (pull request, merge request) was opened, got new commits, closed, ..."""

    action: ChangeAction
    repo: RepoRef
    number: int
    head_sha: str
    head_ref: str
    head_repo: str  # full name of the repository the head lives in (a fork differs)
    base_ref: str
    base_sha: str
    title: str
    author: Actor
    sender: Actor
    draft: bool = False
    merged: bool = False
    # The forge's own time of this state of the change (GitHub: pull_request.updated_at): when the
    # head was stamped, on the forge's clock, the one comments are stamped with too.
    updated_at: datetime | None = None


@dataclass(frozen=True)
class CommentEvent:
    """A new comment on a change; it may carry commands."""

    repo: RepoRef
    number: int
    comment_id: int
    body: str
    commenter: Actor
    created_at: datetime | None = None  # the forge's own time of the comment
    # The head the commenter saw, when the forge says (GitLab's Note Hook does; GitHub's does not).
    seen_head_sha: str | None = None


@dataclass(frozen=True)
class RerunEvent:
    """The forge's own re-run button: one check, a whole suite, or a check's action button."""

    repo: RepoRef
    head_sha: str
    scope: Literal["run", "suite", "action"]
    requester: Actor
    check_id: int | None = None
    external_id: str | None = None  # what labgate put on the check (its job id)
    action: str | None = None  # identifier of the requested action
    numbers: tuple[int, ...] = ()  # changes the head belongs to, when the forge says


@dataclass(frozen=True)
class PushEvent:
    repo: RepoRef
    ref: str  # "refs/heads/staging"
    before: str
    after: str
    created: bool
    deleted: bool
    forced: bool
    pusher: Actor


@dataclass(frozen=True)
class PingEvent:
    repo: RepoRef | None
    hook_id: int | None
    zen: str


@dataclass(frozen=True)
class InstallationEvent:
    action: str  # created, deleted, suspend, ...
    installation_id: int
    account: str
    repositories: tuple[str, ...]


Event = ChangeEvent | CommentEvent | RerunEvent | PushEvent | PingEvent | InstallationEvent


@dataclass(frozen=True)
class ParseOutcome:
    """What a forge's delivery became: an event, or None and the reason it was ignored."""

    event: Event | None
    reason: str
    # The newest time the payload itself carries (None: it carries none): a replay's is old.
    event_time: datetime | None = None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Look a header up case-insensitively (a plain dict from a test or a framework may keep any case)."""
    wanted = name.lower()
    found = headers.get(wanted)  # ASGI servers hand headers over lower-cased: one look-up, not a scan
    if found is not None:
        return found
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


_EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls  # type: ignore[misc]
    for cls in (ChangeEvent, CommentEvent, RerunEvent, PushEvent, PingEvent, InstallationEvent)
}


# Built once: building an adapter costs ~1.7 ms, more than the rest of a webhook delivery.
_ADAPTERS: dict[str, TypeAdapter[Any]] = {name: TypeAdapter(cls) for name, cls in _EVENT_TYPES.items()}


def event_to_json(event: Event) -> str:
    """An event as a task argument (JSON, no secrets: events never hold one)."""
    name = type(event).__name__
    # pydantic-core writes the data's JSON itself, at a third of dump_python + json.dumps' cost (the
    # webhook makes one per delivery); the type name is one of ours, plain ASCII.
    data = _ADAPTERS[name].dump_json(event).decode()
    return f'{{"type": "{name}", "data": {data}}}'


def event_from_json(text: str) -> Event:
    raw = json.loads(text)
    return _ADAPTERS[raw["type"]].validate_python(raw["data"])  # type: ignore[no-any-return]
