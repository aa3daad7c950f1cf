"""MergeRequestDesk against FakeGitLab: trust from the member list in the tree's access levels, and what
intake says on a merge request (a note, the approval status on the target project)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.core.events import Actor, CommentEvent, RepoRef
from bot.core.trust import is_trusted, may_approve
from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.desk import APPROVAL_STATUS, MergeRequestDesk, level_name, policy_for
from bot.forges.gitlab.intake import handle_event
from bot.host.config import Config, Tree, TreeGitLab
from bot.host.stores import open_runtime
from tests.fakes.gitlab_api import DEVELOPER, MAINTAINER, REPORTER, FakeGitLab

HEAD = "d" * 40


@dataclass
class World:
    fake: FakeGitLab
    target: int
    fork: int
    desk: MergeRequestDesk


@pytest.fixture
def world() -> Iterator[World]:
    with FakeGitLab() as fake:
        for name in ("labgate", "alice", "maint", "rita", "eve"):
            fake.add_user(name)
        fake.add_user("project_7_bot_x", bot=True)
        group = fake.add_group("octo-group")
        target = fake.add_project("octo-group/hello", group=group)
        fork = fake.add_project("eve/hello", forked_from=target)
        fake.add_member("labgate", DEVELOPER, project=target)
        fake.add_member("alice", DEVELOPER, group=group)
        fake.add_member("maint", MAINTAINER, project=target)
        fake.add_member("rita", REPORTER, project=target)
        fake.add_member("project_7_bot_x", MAINTAINER, project=target)
        fake.add_member("eve", MAINTAINER, project=fork)
        fake.add_merge_request(target, 3, head_sha=HEAD, author="eve", source_project=fork, title="fix")
        client = GitLabClient(fake.base_url, fake.add_token("labgate"))
        yield World(fake, target, fork, MergeRequestDesk(client, target, 3))


def tree(**levels: str) -> Tree:
    return Tree(name="hello", url="https://gitlab.example.org/octo-group/hello.git",
                gitlab=TreeGitLab(project_id=1, project="octo-group/hello", **levels))  # fmt: skip


def test_level_names() -> None:
    assert [level_name(n) for n in (0, 10, 20, 30, 35, 40, 50, 60)] == [
        "none", "guest", "reporter", "developer", "developer", "maintainer", "owner", "owner"]  # fmt: skip


def test_policy_in_access_levels() -> None:
    default = tree()
    assert default.gitlab is not None
    policy = policy_for(default, default.gitlab)
    assert policy.trusted_associations == ("DEVELOPER", "MAINTAINER", "OWNER")
    assert policy.approvers_may_be == ("maintainer", "owner")
    assert is_trusted(Actor("alice", "DEVELOPER"), policy) and not is_trusted(Actor("rita", "REPORTER"), policy)
    assert may_approve("maintainer", policy) and not may_approve("developer", policy)
    strict = tree(trusted_access_level="maintainer", approver_access_level="owner")
    assert strict.gitlab is not None
    stricter = policy_for(strict, strict.gitlab)
    assert not is_trusted(Actor("alice", "DEVELOPER"), stricter) and not may_approve("maintainer", stricter)


def test_allowlists_stand_and_bots_need_their_own() -> None:
    listed = tree().model_copy(update={"trust": tree().trust.model_copy(update={"trusted_users": ("eve",)})})
    assert listed.gitlab is not None
    policy = policy_for(listed, listed.gitlab)
    assert is_trusted(Actor("eve"), policy)
    # A bot user (a project access token) with the Maintainer role is still a bot: only trusted_bots.
    assert not is_trusted(Actor("project_7_bot_x", "MAINTAINER", True), policy)


def test_the_author_is_read_with_their_access_level(world: World) -> None:
    assert world.desk.author() == Actor("eve")  # a maintainer of her fork, nothing on the target
    head = world.desk.current_head()
    assert (head.sha, head.base_ref, head.title, head.closed) == (HEAD, "main", "fix", False)
    assert world.desk.actor("alice") == Actor("alice", "DEVELOPER")  # inherited from the group
    assert world.desk.actor("project_7_bot_x") == Actor("project_7_bot_x", "MAINTAINER", True)
    assert world.desk.permission("maint") == "maintainer" and world.desk.permission("eve") is None


def test_waiting_and_approval_are_said_on_the_target_project(world: World) -> None:
    world.desk.show_waiting(HEAD, "eve is not a trusted contributor ...\n- `/ok-to-test` approves")
    [status] = world.fake.statuses_of(world.target, HEAD)
    assert (status["name"], status["status"], status["ref"]) == (APPROVAL_STATUS, "pending",
                                                                 "refs/merge-requests/3/head")  # fmt: skip
    [note] = world.fake.notes_of(world.target, 3)
    assert "/ok-to-test" in note["body"]
    world.desk.show_approved(HEAD, "Approved for `dddddddddddd` by @maint.")
    assert world.fake.statuses_of(world.target, HEAD)[-1]["status"] == "success"
    assert not world.fake.requests_to("POST", rf"/api/v4/projects/{world.fork}/.*")


def test_labgates_own_notes_are_no_ones_commands(world: World, tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", trees=[tree().model_copy(update={
        "gitlab": TreeGitLab(project_id=world.target, project="octo-group/hello")})])  # fmt: skip
    runtime = open_runtime(config)
    repo = RepoRef("gitlab", "octo-group/hello", "https://gitlab.example.org/g/hello.git", "main", world.target)
    own = CommentEvent(repo, 3, 1, "/ok-to-test", Actor("LabGate"), seen_head_sha=HEAD)
    assert handle_event(runtime, world.desk.client, own, "d-1") == ["ignored: a note of labgate's own"]
    assert world.fake.statuses_of(world.target, HEAD) == [] and world.fake.notes_of(world.target, 3) == []
    runtime.store.engine.dispose()
