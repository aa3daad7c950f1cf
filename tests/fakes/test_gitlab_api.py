"""FakeGitLab against python-gitlab: the documented shapes, who may do what, the status state machine, 409s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import gitlab
import pytest
import requests
from gitlab.exceptions import GitlabAuthenticationError, GitlabCreateError, GitlabGetError, GitlabUpdateError

from tests.fakes.gitlab_api import DEVELOPER, GUEST, MAINTAINER, REPORTER, FakeGitLab
from tests.shared_fixtures import shared_fixture

HEAD = "a" * 40
OTHER = "b" * 40


@dataclass
class World:
    fake: FakeGitLab
    target: int  # kernel/linux, private, in group kernel
    fork: int  # mallory/linux, forked from it
    bot_token: str  # labgate's user: Developer on the target project
    mallory_token: str
    guest_token: str

    def as_(self, token: str | None) -> gitlab.Gitlab:
        return gitlab.Gitlab(self.fake.base_url, private_token=token)


@pytest.fixture
def world() -> Iterator[World]:
    with FakeGitLab() as fake:
        for name in ("labgate", "alice", "mallory", "gus"):
            fake.add_user(name, bot=name == "labgate")
        kernel = fake.add_group("kernel")
        target = fake.add_project("kernel/linux", group=kernel)
        fork = fake.add_project("mallory/linux", forked_from=target, visibility="public")
        fake.add_member("alice", MAINTAINER, group=kernel)
        fake.add_member("labgate", DEVELOPER, project=target)
        fake.add_member("gus", GUEST, project=target)
        fake.add_member("mallory", MAINTAINER, project=fork)
        fake.push_commit(target, OTHER)
        fake.add_merge_request(target, 1, head_sha=HEAD, author="mallory", source_project=fork, title="Fix it")
        yield World(fake, target, fork, fake.add_token("labgate"), fake.add_token("mallory"), fake.add_token("gus"))


def test_merge_request_and_project_carry_the_fields_the_webhook_fixtures_name(world: World) -> None:
    hook = json.loads(shared_fixture("gitlab/go-gitlab/merge_request.json").read_text())
    project = world.as_(world.bot_token).projects.get(world.target)
    mr = project.mergerequests.get(1).asdict()
    # The REST object and the webhook's object_attributes share these names, with the same kinds of values.
    shared = ["id", "iid", "title", "description", "state", "target_branch", "source_branch", "source_project_id",
              "target_project_id", "work_in_progress", "merge_status", "detailed_merge_status", "labels",
              "blocking_discussions_resolved", "created_at", "updated_at"]  # fmt: skip
    for key in shared:
        assert type(mr[key]) is type(hook["object_attributes"][key]), key
    assert mr["state"] == hook["object_attributes"]["state"] == "opened"
    assert mr["sha"] == HEAD and len(hook["object_attributes"]["last_commit"]["id"]) == 40
    assert (mr["source_project_id"], mr["target_project_id"]) == (world.fork, world.target)
    assert mr["author"]["username"] == "mallory" and mr["draft"] is False and mr["diff_refs"]["head_sha"] == HEAD
    for key in ("id", "name", "description", "web_url", "avatar_url", "path_with_namespace", "default_branch"):
        assert key in project.asdict() and key in hook["project"], key
    assert project.path_with_namespace == "kernel/linux"
    fork = world.as_(world.bot_token).projects.get(world.fork)
    assert fork.forked_from_project["id"] == world.target


def test_tokens_are_checked_and_private_projects_hidden(world: World) -> None:
    with pytest.raises(GitlabAuthenticationError):
        world.as_("glpat-not-a-token").projects.get(world.target)
    with pytest.raises(GitlabGetError) as anonymous:
        world.as_(None).projects.get(world.target)
    assert anonymous.value.response_code == 404
    with pytest.raises(GitlabGetError) as outsider:  # mallory has no role on the target: it does not exist
        world.as_(world.mallory_token).projects.get(world.target)
    assert outsider.value.response_code == 404
    assert world.as_(None).projects.get(world.fork).id == world.fork  # a public project reads without a token
    statuses = world.fake.requests_to("GET", rf"/api/v4/projects/{world.target}")
    assert [(r.user, r.status) for r in statuses] == [(None, 401), (None, 404), ("mallory", 404)]


def test_statuses_need_developer_on_that_project_so_a_fork_merge_request_reports_to_its_target(world: World) -> None:
    bot = world.as_(world.bot_token)
    on_fork = bot.projects.get(world.fork, lazy=True).commits.get(HEAD, lazy=True)
    with pytest.raises(GitlabCreateError) as refused:
        on_fork.statuses.create({"state": "pending", "name": "labgate"})
    assert refused.value.response_code == 403
    on_target = bot.projects.get(world.target, lazy=True).commits.get(HEAD, lazy=True)
    with pytest.raises(GitlabCreateError) as no_branch:  # the head is on no branch of the target project
        on_target.statuses.create({"state": "pending", "name": "labgate"})
    assert no_branch.value.response_code == 404 and "References for commit" in no_branch.value.error_message
    made = on_target.statuses.create({"state": "pending", "name": "labgate", "ref": "refs/merge-requests/1/head"})
    assert (made.status, made.ref, made.sha, made.author["username"]) == ("pending", "refs/merge-requests/1/head",
                                                                           HEAD, "labgate")  # fmt: skip
    with pytest.raises(GitlabCreateError) as guest:
        world.as_(world.guest_token).projects.get(world.target, lazy=True).commits.get(HEAD, lazy=True).statuses.create(
            {"state": "pending", "ref": "refs/merge-requests/1/head"}
        )
    assert guest.value.response_code == 403
    with pytest.raises(GitlabCreateError) as unknown:
        bot.projects.get(world.target, lazy=True).commits.get("c" * 40, lazy=True).statuses.create({"state": "running"})
    assert unknown.value.response_code == 404 and unknown.value.error_message == "404 Commit Not Found"
    assert world.fake.statuses_of(world.fork, HEAD) == []
    assert [s["id"] for s in world.fake.statuses_of(world.target, HEAD)] == [made.id]


def test_status_state_machine_as_gitlab_runs_it(world: World) -> None:
    commit = world.as_(world.bot_token).projects.get(world.target, lazy=True).commits.get(OTHER, lazy=True)
    first = commit.statuses.create({"state": "pending"})
    assert (first.name, first.ref, first.description, first.target_url) == ("default", "main", None, None)
    assert commit.statuses.create({"state": "running"}).id == first.id  # the live status moves on
    with pytest.raises(GitlabCreateError) as again:
        commit.statuses.create({"state": "running"})
    assert again.value.response_code == 400
    assert again.value.error_message == 'Cannot transition status via :run from :running (Reason(s): Status cannot transition via "run")'  # fmt: skip  # noqa: E501
    with pytest.raises(GitlabCreateError) as back:
        commit.statuses.create({"state": "pending"})
    assert "Cannot transition status via :enqueue from :running" in back.value.error_message
    done = commit.statuses.create({"state": "success", "description": "built"})
    assert (done.id, done.status, done.finished_at is not None) == (first.id, "success", True)
    # A finished status is never changed: a new POST of that name starts a new one, the old one is retried.
    again_pending = commit.statuses.create({"state": "pending"})
    assert again_pending.id != first.id
    history = world.fake.statuses_of(world.target, OTHER)
    assert [(s["id"], s["status"], s["retried"]) for s in history] == [
        (first.id, "success", True),
        (again_pending.id, "pending", False),
    ]
    assert [s.id for s in commit.statuses.list(get_all=True)] == [again_pending.id]  # latest only
    assert len(commit.statuses.list(get_all=True, all=True)) == 2
    with pytest.raises(GitlabCreateError) as bad:
        commit.statuses.create({"state": "error"})  # GitHub's word, not GitLab's
    assert bad.value.response_code == 400


def test_409_storm_on_demand_changes_nothing(world: World) -> None:
    commit = world.as_(world.bot_token).projects.get(world.target, lazy=True).commits.get(OTHER, lazy=True)
    world.fake.fail_statuses_with_409(2)
    for _ in range(2):
        with pytest.raises(GitlabCreateError) as conflict:
            commit.statuses.create({"state": "pending"})
        assert conflict.value.response_code == 409
    assert world.fake.statuses_of(world.target, OTHER) == []
    assert commit.statuses.create({"state": "pending"}).status == "pending"
    assert [r.status for r in world.fake.requests_to("POST", r".*/statuses/.*")] == [409, 409, 201]


def test_description_and_target_url_over_255_are_refused(world: World) -> None:
    commit = world.as_(world.bot_token).projects.get(world.target, lazy=True).commits.get(OTHER, lazy=True)
    for field, value in (("description", "d" * 256), ("target_url", "https://ci.example/" + "u" * 240)):
        with pytest.raises(GitlabCreateError) as refused:
            commit.statuses.create({"state": "pending", field: value})
        assert refused.value.response_code == 400 and field in refused.value.error_message
    assert commit.statuses.create({"state": "pending", "description": "d" * 255}).description == "d" * 255
    with pytest.raises(GitlabCreateError):
        commit.statuses.create({"state": "failed", "target_url": "javascript:alert(1)"})


def test_notes_readers_may_write_and_only_authors_edit(world: World) -> None:
    bot_mr = world.as_(world.bot_token).projects.get(world.target, lazy=True).mergerequests.get(1, lazy=True)
    note = bot_mr.notes.create({"body": "labgate: waiting"})
    bot_mr.notes.update(note.id, {"body": "labgate: building"})
    assert [(n["body"], n["author"]["username"]) for n in world.fake.notes_of(world.target, 1)] == [
        ("labgate: building", "labgate")
    ]
    # Alice maintains the group: she sees the note but may not edit labgate's words.
    alice = world.as_(world.fake.add_token("alice"))
    alice_mr = alice.projects.get(world.target, lazy=True).mergerequests.get(1, lazy=True)
    assert [n.body for n in alice_mr.notes.list(get_all=True)] == ["labgate: building"]
    with pytest.raises(GitlabUpdateError) as not_author:
        alice_mr.notes.update(note.id, {"body": "labgate: all green"})
    assert not_author.value.response_code == 403
    with pytest.raises(GitlabCreateError) as guest:  # a Guest does not see a private project's merge requests
        world.as_(world.guest_token).projects.get(world.target, lazy=True).mergerequests.get(1, lazy=True).notes.create(
            {"body": "hi"}
        )
    assert guest.value.response_code == 403
    with pytest.raises(GitlabCreateError):
        bot_mr.notes.create({"body": ""})


def test_members_all_inherits_takes_the_highest_level_and_query_matches_substrings(world: World) -> None:
    world.fake.add_user("alice2")
    world.fake.add_member("alice2", REPORTER, project=world.target)
    world.fake.add_member("alice", DEVELOPER, project=world.target)  # lower than her group's Maintainer
    members = world.as_(world.bot_token).projects.get(world.target, lazy=True).members_all
    found = {m.username: m.access_level for m in members.list(query="alice", get_all=True)}
    assert found == {"alice": MAINTAINER, "alice2": REPORTER}
    everyone = {m.username for m in members.list(get_all=True)}
    assert everyone == {"alice", "alice2", "labgate", "gus"}
    entry = members.list(query="labgate", get_all=True)[0].asdict()
    assert {"id", "username", "name", "state", "access_level", "membership_state", "expires_at"} <= set(entry)


def test_lists_are_paged_as_gitlab_pages_them(world: World) -> None:
    for iid in range(2, 27):
        world.fake.add_merge_request(world.target, iid, head_sha=f"{iid:040x}", author="alice", source_branch=f"b{iid}")
    project = world.as_(world.bot_token).projects.get(world.target, lazy=True)
    assert len(project.mergerequests.list(get_all=True, per_page=10)) == 26
    pages = world.fake.requests_to("GET", rf"/api/v4/projects/{world.target}/merge_requests")
    assert [r.query.get("page", "1") for r in pages] == ["1", "2", "3"]
    answer = requests.get(f"{world.fake.api_url}/projects/{world.target}/merge_requests", params={"per_page": 10},
                          headers={"PRIVATE-TOKEN": world.bot_token}, timeout=10)  # fmt: skip
    assert [answer.headers[h] for h in ("X-Total", "X-Total-Pages", "X-Next-Page")] == ["26", "3", "2"]
    assert answer.links["next"]["url"].endswith("page=2&per_page=10")
    assert [mr["iid"] for mr in answer.json()][:2] == [26, 25]  # newest first
