"""A merge request as intake reaches it (bot/intake/desk.py's ForgeDesk), in GitLab's words.

GitLab's payloads name no one's role: trust comes from the project's member list (inherited
memberships included), as an access level. The tree's policy says it in the same words
(`trees[].gitlab.trusted_access_level`, `approver_access_level`); `policy_for` turns them into the
forge-neutral TrustPolicy the brain reads: an author's association is their access level's name."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from bot.core.events import Actor
from bot.core.trust import TrustPolicy
from bot.forges.gitlab.client import ACCESS_LEVELS, GitLabClient, MergeRequestView
from bot.host.config import Tree, TreeGitLab
from bot.intake.desk import Head

SOURCE = "gitlab"
APPROVAL_STATUS = "labgate / approval"


def level_name(level: int) -> str:
    """The name of the highest documented access level at or under `level` (GitLab has custom roles
    whose level is a base role's)."""
    named = [name for name, value in ACCESS_LEVELS.items() if value <= level]
    return max(named, key=ACCESS_LEVELS.__getitem__) if named else "none"


def policy_for(tree: Tree, gitlab: TreeGitLab) -> TrustPolicy:
    """The tree's policy with GitLab's access levels as the roles that trust and approve; its allowlists
    (trusted_users, trusted_bots) stand as written."""
    at_least = ACCESS_LEVELS[gitlab.trusted_access_level]
    approve = ACCESS_LEVELS[gitlab.approver_access_level]
    return tree.trust.model_copy(update={
        "trusted_associations": tuple(name.upper() for name, value in ACCESS_LEVELS.items() if value >= at_least),
        "trusted_teams": (),  # GitLab's groups are in the member list already (members/all)
        "approvers_may_be": tuple(name for name, value in ACCESS_LEVELS.items() if value >= approve),
    })  # fmt: skip


class MergeRequestDesk:
    """One merge request of a tree's project. Look-ups are made as labgate's GitLab user."""

    source = SOURCE

    def __init__(self, client: GitLabClient, project_id: int, iid: int) -> None:
        self.client, self.project_id, self.iid = client, project_id, iid

    def permission(self, login: str) -> str | None:
        """The user's access level on the project, by name (developer, maintainer, ...); None if none."""
        member = self.client.member(self.project_id, login)
        return level_name(member.access_level) if member is not None else None

    def teams_of(self, login: str, teams: Sequence[str]) -> frozenset[str]:
        return frozenset()  # group memberships count through members/all: see policy_for

    def actor(self, login: str) -> Actor:
        """Someone as the trust rules read them: their access level as their association."""
        member = self.client.member(self.project_id, login) if login else None
        if member is None:
            return Actor(login)
        return Actor(login, level_name(member.access_level).upper(), member.is_bot)

    def current_head(self) -> Head:
        view = self._merge_request
        return Head(view.head_sha, self.actor(view.author), view.target_branch, view.title, view.state != "opened",
                    view.draft)  # fmt: skip

    @cached_property
    def _merge_request(self) -> MergeRequestView:
        return self.client.merge_request(self.project_id, self.iid)

    def author(self) -> Actor:
        """The merge request's author (a webhook names them only by id)."""
        return self.actor(self._merge_request.author)

    def revision(self, head_sha: str) -> dict[str, Any]:
        # GitLab keeps every merge request's head in the target project (refs/merge-requests/IID/head),
        # forks' too; the mirror fetches those refs, the head is checked out by its SHA and merged.
        return {"ref": head_sha, "head_sha": head_sha, "merge": True}

    def reply(self, text: str) -> None:
        self.client.create_note(self.project_id, self.iid, text)

    def show_waiting(self, head_sha: str, text: str) -> None:
        self._approval_status(head_sha, "pending", "waiting for a maintainer's /ok-to-test of this commit")
        self.client.create_note(self.project_id, self.iid, text)

    def show_approved(self, head_sha: str, text: str) -> None:
        self._approval_status(head_sha, "success", text.splitlines()[0] if text else "approved")

    def _approval_status(self, head_sha: str, state: str, description: str) -> None:
        self.client.set_status(self.project_id, head_sha, state=state, name=APPROVAL_STATUS, target_url=None,
                               description=description, ref=merge_request_ref(self.iid))  # fmt: skip


def merge_request_ref(iid: int) -> str:
    """The ref statuses of a merge request's head are posted under, in the target project: a fork's
    commit is on no branch there, and GitLab attaches a status without a ref to a branch holding it."""
    return f"refs/merge-requests/{iid}/head"
