"""What intake needs from the forge a change lives on, and the change an action is about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.core.events import Actor
from bot.host.config import Tree
from bot.pipelines.lifecycle import Submission


@dataclass(frozen=True)
class Head:
    """A change as its forge shows it now (a comment's payload carries no head, and a push may be in flight)."""

    sha: str
    author: Actor
    base_ref: str
    title: str
    closed: bool
    draft: bool = False


class ForgeDesk(Protocol):
    """One change's forge, as intake uses it: identity and permission look-ups, the current head, and the
    three things intake says there. Writes are made at most once per delivery by intake (bot/store/once.py)."""

    source: str  # "github", "gitlab", "patchwork": the store's Change.source

    def permission(self, login: str) -> str | None:
        """The user's permission on the change's repository (admin, maintain, write, ...), None if none."""
        ...

    def teams_of(self, login: str, teams: Sequence[str]) -> frozenset[str]:
        """Which of `teams` the user is an active member of."""
        ...

    def current_head(self) -> Head: ...

    def reply(self, text: str) -> None:
        """Answer on the change (a comment)."""
        ...

    def show_waiting(self, head_sha: str, text: str) -> None:
        """Say that `head_sha` waits for a maintainer's approval, and how to give it."""
        ...

    def show_approved(self, head_sha: str, text: str) -> None: ...

    def revision(self, head_sha: str) -> dict[str, Any]:
        """What to test for `head_sha`, as Submission fields: a pull request's ref to fetch and merge
        (ref=, head_sha=, merge=True), or a series' patches onto its base (patches=, base_ref=)."""
        ...


def external_id(repo: str, number: int) -> str:
    """The store's Change.external_id of change `number` of `repo` on a forge."""
    return f"{repo}#{number}"


@dataclass(frozen=True)
class ChangeContext:
    """The change an action is about, as the actions need it."""

    tree: Tree
    source: str
    repo: str
    number: int
    installation: int | None  # the forge's id of labgate's access to it (a GitHub App installation)
    base_ref: str
    title: str
    author: str
    author_trusted: bool

    @property
    def external_id(self) -> str:
        return external_id(self.repo, self.number)

    def submission(self, **revision: Any) -> Submission:
        """This change as the pipeline layer takes it; `revision` names what to test."""
        return Submission(
            tree_name=self.tree.name, tree_url=self.tree.url, source=self.source, external_id=self.external_id,
            base_ref=self.base_ref, title=self.title, submitter=self.author, forge_repo=self.repo,
            number=self.number, installation_id=self.installation, author_trusted=self.author_trusted, **revision,
        )  # fmt: skip
