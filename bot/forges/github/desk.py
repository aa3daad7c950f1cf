"""A pull request as intake reaches it (bot/intake/desk.py's ForgeDesk), in GitHub's words."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from github.PullRequest import PullRequest

from bot.core.events import Actor
from bot.forges.github.client import GitHubApp
from bot.forges.github.reporter import post_approval_check
from bot.intake.desk import Head

SOURCE = "github"


class PullRequestDesk:
    """One pull request. Without an App installation (a delivery that names none) it can look nothing
    up and say nothing: every write is skipped, every look-up answers "nobody"."""

    source = SOURCE

    def __init__(self, github: GitHubApp, installation: int | None, repo: str, number: int) -> None:
        self.github, self.installation, self.repo, self.number = github, installation, repo, number

    def permission(self, login: str) -> str | None:
        if self.installation is None:
            return None
        return self.github.permission(self.installation, self.repo, login)

    def teams_of(self, login: str, teams: Sequence[str]) -> frozenset[str]:
        if not teams or self.installation is None:
            return frozenset()
        installation = self.installation
        return frozenset(t for t in teams if self.github.is_team_member(installation, t, login))

    def current_head(self) -> Head:
        pull = self._pull
        author = Actor(pull.user.login, pull.raw_data.get("author_association"), pull.user.type == "Bot")
        return Head(pull.head.sha, author, pull.base.ref, pull.title, pull.state == "closed")

    @cached_property
    def _pull(self) -> PullRequest:
        if self.installation is None:
            raise LookupError("a pull request is read through the App's installation, and none was named")
        return self.github.pull(self.installation, self.repo, self.number)

    def revision(self, head_sha: str) -> dict[str, Any]:
        # GitHub keeps refs/pull/N/head; the head is fetched by its SHA and merged onto the current base.
        return {"ref": head_sha, "head_sha": head_sha, "merge": True}

    def reply(self, text: str) -> None:
        if self.installation is not None:
            self.github.comment(self.installation, self.repo, self.number, text)

    def show_waiting(self, head_sha: str, text: str) -> None:
        if self.installation is not None:
            post_approval_check(self.github, self.installation, self.repo, head_sha, waiting=True, text=text)

    def show_approved(self, head_sha: str, text: str) -> None:
        if self.installation is not None:
            post_approval_check(self.github, self.installation, self.repo, head_sha, waiting=False, text=text)
