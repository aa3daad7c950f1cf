"""GitLabClient against FakeGitLab: every call, membership look-ups that cannot be fooled, retries and pacing."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from gitlab.exceptions import GitlabCreateError, GitlabError, GitlabGetError

from bot.forges.gitlab.client import ACCESS_LEVELS, GitLabClient, Member, MergeRequestView, classify_error
from bot.host.retrying import Verdict, is_transient
from tests.fakes.gitlab_api import DEVELOPER, MAINTAINER, REPORTER, FakeGitLab

HEAD = "a" * 40
MAIN = "b" * 40
MR_REF = "refs/merge-requests/1/head"


@dataclass
class World:
    fake: FakeGitLab
    target: int  # kernel/drivers/net: private, in subgroup kernel/drivers of group kernel
    fork: int  # mallory/net, forked from it, where labgate has no role
    token: str  # labgate's

    def client(self, **kwargs: Any) -> GitLabClient:
        return GitLabClient(self.fake.base_url, self.token, **kwargs)


@pytest.fixture
def world() -> Iterator[World]:
    with FakeGitLab() as fake:
        fake.add_user("labgate")
        for name in ("alice", "bob", "bobby", "mallory", "carol", "dave"):
            fake.add_user(name)
        fake.add_user("project_42_bot_1a2b", bot=True)  # a project access token's user
        fake.add_user("eve", state="blocked")
        kernel = fake.add_group("kernel")
        drivers = fake.add_group("kernel/drivers", parent=kernel)
        target = fake.add_project("kernel/drivers/net", group=drivers)
        fork = fake.add_project("mallory/net", forked_from=target, visibility="public")
        fake.add_member("labgate", DEVELOPER, project=target)
        fake.add_member("alice", MAINTAINER, group=kernel)  # two levels up
        fake.add_member("bobby", DEVELOPER, project=target)  # "bob" is only a substring of his name
        fake.add_member("carol", REPORTER, group=drivers)
        fake.add_member("dave", DEVELOPER, project=target, membership_state="awaiting")
        fake.add_member("eve", MAINTAINER, project=target)
        fake.add_member("project_42_bot_1a2b", MAINTAINER, project=target)
        fake.add_member("mallory", MAINTAINER, project=fork)
        fake.push_commit(target, MAIN)
        fake.add_merge_request(target, 1, head_sha=HEAD, author="mallory", source_project=fork, title="net: fix")
        yield World(fake, target, fork, fake.add_token("labgate"))


# ---- look-ups ----------------------------------------------------------------------------------------------


def test_member_counts_inherited_memberships_and_matches_the_username_exactly(world: World) -> None:
    client = world.client()
    assert client.member(world.target, "alice") == Member("alice", ACCESS_LEVELS["maintainer"], False)
    assert client.member(world.target, "ALICE") == Member("alice", 40, False)  # usernames are case-blind
    assert client.member(world.target, "carol") == Member("carol", ACCESS_LEVELS["reporter"], False)
    # GitLab's `query` finds "bobby" for "bob": bob is not a member and must not borrow bobby's level.
    assert client.member(world.target, "bob") is None
    assert [r.query["query"] for r in world.fake.requests_to("GET", r".*/members/all")][-1] == "bob"
    assert client.member(world.target, "bobby") == Member("bobby", DEVELOPER, False)
    assert client.member(world.target, "mallory") is None
    assert client.member(world.target, "") is None


def test_member_refuses_blocked_users_and_memberships_awaiting_a_seat(world: World) -> None:
    client = world.client()
    assert client.member(world.target, "eve") is None
    assert client.member(world.target, "dave") is None


def test_member_says_when_the_user_is_a_bot(world: World) -> None:
    member = world.client().member(world.target, "project_42_bot_1a2b")
    assert member == Member("project_42_bot_1a2b", MAINTAINER, True)
    assert world.fake.requests_to("GET", r"/api/v4/users/\d+")[-1].status == 200


def test_merge_request_of_a_fork(world: World) -> None:
    view = world.client().merge_request(world.target, 1)
    assert view == MergeRequestView(iid=1, title="net: fix", state="opened", head_sha=HEAD, target_branch="main",
                                    source_project_id=world.fork, target_project_id=world.target, author="mallory",
                                    author_id=view.author_id, draft=False)  # fmt: skip
    assert view.author_id > 0
    with pytest.raises(GitlabGetError) as missing:
        world.client().merge_request(world.target, 99)
    assert classify_error(missing.value) == Verdict(False)


def test_open_merge_requests_reads_every_page(world: World) -> None:
    for iid in range(2, 132):
        state = "merged" if iid % 10 == 0 else "opened"
        world.fake.add_merge_request(world.target, iid, head_sha=f"{iid:040x}", author="alice", state=state,
                                     source_branch=f"topic-{iid}", draft=iid == 3)  # fmt: skip
    views = world.client().open_merge_requests(world.target)
    assert sorted(v.iid for v in views) == [1] + [i for i in range(2, 132) if i % 10]
    assert {v.state for v in views} == {"opened"} and [v.draft for v in views if v.iid == 3] == [True]
    pages = world.fake.requests_to("GET", rf"/api/v4/projects/{world.target}/merge_requests")
    assert [(r.query["state"], r.query.get("page", "1")) for r in pages] == [("opened", "1"), ("opened", "2")]


def test_reads_are_retried_by_the_library_on_5xx(world: World) -> None:
    world.fake.fail_next("GET", rf"/api/v4/projects/{world.target}/merge_requests/1", 502, body="<html>502</html>")
    assert world.client().merge_request(world.target, 1).head_sha == HEAD
    assert [r.status for r in world.fake.requests_to("GET", r".*/merge_requests/1")] == [502, 200]


# ---- notes and comments ------------------------------------------------------------------------------------


def test_notes_are_created_and_edited(world: World) -> None:
    client = world.client()
    note_id = client.create_note(world.target, 1, "labgate: waiting for approval")
    client.edit_note(world.target, 1, note_id, "labgate: building")
    notes = world.fake.notes_of(world.target, 1)
    assert [(n["id"], n["body"], n["author"]["username"]) for n in notes] == [(note_id, "labgate: building", "labgate")]
    edit = world.fake.requests_to("PUT", rf"/api/v4/projects/{world.target}/merge_requests/1/notes/{note_id}")
    assert [(r.json, r.user) for r in edit] == [({"body": "labgate: building"}, "labgate")]


def test_editing_someone_elses_note_is_refused_and_final(world: World) -> None:
    other = GitLabClient(world.fake.base_url, world.fake.add_token("alice"))
    note_id = other.create_note(world.target, 1, "LGTM")
    with pytest.raises(GitlabError) as refused:
        world.client().edit_note(world.target, 1, note_id, "labgate was here")
    assert refused.value.response_code == 403 and classify_error(refused.value) == Verdict(False)
    assert [n["body"] for n in world.fake.notes_of(world.target, 1)] == ["LGTM"]


def test_commit_comment(world: World) -> None:
    world.client().commit_comment(world.target, MAIN, "labgate: build failed on arm64")
    comments = world.fake.commit_comments_of(world.target, MAIN)
    assert [(c["note"], c["author"]["username"]) for c in comments] == [("labgate: build failed on arm64", "labgate")]


def test_a_post_answered_502_is_not_repeated_by_the_library(world: World) -> None:
    world.fake.lose_answer_next("POST", r".*/merge_requests/1/notes")
    with pytest.raises(GitlabCreateError) as lost:
        world.client().create_note(world.target, 1, "labgate: building")
    assert lost.value.response_code == 502 and classify_error(lost.value) == Verdict(True)
    assert len(world.fake.requests_to("POST", r".*/merge_requests/1/notes")) == 1
    assert len(world.fake.notes_of(world.target, 1)) == 1  # GitLab made it; only the answer was lost


# ---- commit statuses ---------------------------------------------------------------------------------------


def test_set_status_moves_one_status_along(world: World) -> None:
    client = world.client()
    first = client.set_status(world.target, HEAD, state="pending", name="labgate/build", target_url=None,
                              description="queued", ref=MR_REF)  # fmt: skip
    done = client.set_status(world.target, HEAD, state="success", name="labgate/build",
                             target_url="https://labgate.example/p/1", description="built", ref=MR_REF)  # fmt: skip
    assert done == first
    [status] = client.statuses(world.target, HEAD, name="labgate/build")
    assert (status["id"], status["status"], status["ref"], status["target_url"]) == (
        first, "success", MR_REF, "https://labgate.example/p/1"
    )  # fmt: skip
    assert client.statuses(world.target, HEAD, name="other") == []
    posted = world.fake.requests_to("POST", rf"/api/v4/projects/{world.target}/statuses/{HEAD}")
    assert posted[0].json == {"state": "pending", "name": "labgate/build", "description": "queued", "ref": MR_REF}


def test_a_fork_merge_request_reports_on_its_target_project_not_on_the_fork(world: World) -> None:
    client = world.client()
    with pytest.raises(GitlabCreateError) as refused:
        client.set_status(world.fork, HEAD, state="pending", name="labgate", target_url=None, description="",
                          ref="feature")  # fmt: skip
    assert refused.value.response_code == 403 and classify_error(refused.value) == Verdict(False)
    status_id = client.set_status(world.target, HEAD, state="pending", name="labgate", target_url=None,
                                  description="waiting", ref=MR_REF)  # fmt: skip
    assert [s["id"] for s in world.fake.statuses_of(world.target, HEAD)] == [status_id]
    assert world.fake.statuses_of(world.fork, HEAD) == []


def test_description_is_cut_to_255_and_a_long_target_url_refused_before_sending(world: World) -> None:
    client = world.client()
    client.set_status(world.target, MAIN, state="running", name="labgate", target_url=None, description="é" * 300)
    assert world.fake.statuses_of(world.target, MAIN)[0]["description"] == "é" * 255
    with pytest.raises(ValueError, match="target_url"):
        client.set_status(world.target, MAIN, state="success", name="labgate", description="",
                          target_url="https://labgate.example/" + "x" * 240)  # fmt: skip
    assert len(world.fake.requests_to("POST", r".*/statuses/.*")) == 1


def test_409_is_retried_then_succeeds(world: World) -> None:
    world.fake.fail_statuses_with_409(3)
    status_id = world.client(conflict_retries=5).set_status(world.target, MAIN, state="pending", name="labgate",
                                                            target_url=None, description="")  # fmt: skip
    assert [r.status for r in world.fake.requests_to("POST", r".*/statuses/.*")] == [409, 409, 409, 201]
    assert [s["id"] for s in world.fake.statuses_of(world.target, MAIN)] == [status_id]


def test_a_409_storm_is_raised_after_the_retries_and_classified_transient(world: World) -> None:
    world.fake.fail_statuses_with_409(50)
    with pytest.raises(GitlabCreateError) as storm:
        world.client(conflict_retries=2).set_status(world.target, MAIN, state="pending", name="labgate",
                                                    target_url=None, description="")  # fmt: skip
    assert storm.value.response_code == 409
    assert classify_error(storm.value) == Verdict(True) and is_transient(storm.value, [classify_error])
    assert len(world.fake.requests_to("POST", r".*/statuses/.*")) == 3


def test_a_status_post_whose_answer_was_lost_is_found_again_when_retried(world: World) -> None:
    client = world.client()
    world.fake.lose_answer_next("POST", r".*/statuses/.*")
    with pytest.raises(GitlabCreateError) as lost:
        client.set_status(world.target, HEAD, state="running", name="labgate", target_url=None, description="",
                          ref=MR_REF)  # fmt: skip
    assert classify_error(lost.value) == Verdict(True)
    assert len(world.fake.requests_to("POST", r".*/statuses/.*")) == 1  # the library did not repeat it
    # The task's retry meets GitLab's "Cannot transition status via :run from :running": the status is there.
    again = client.set_status(world.target, HEAD, state="running", name="labgate", target_url=None, description="",
                              ref=MR_REF)  # fmt: skip
    [status] = world.fake.statuses_of(world.target, HEAD)
    assert again == status["id"] and status["status"] == "running"
    assert [r.status for r in world.fake.requests_to("POST", r".*/statuses/.*")] == [502, 400]


def test_a_real_backwards_move_is_still_refused(world: World) -> None:
    client = world.client()
    client.set_status(world.target, MAIN, state="running", name="labgate", target_url=None, description="")
    with pytest.raises(GitlabCreateError) as back:
        client.set_status(world.target, MAIN, state="pending", name="labgate", target_url=None, description="")
    assert back.value.response_code == 400 and classify_error(back.value) == Verdict(False)


# ---- errors, rate limits, pacing, secrets ------------------------------------------------------------------


def test_429_is_not_slept_out_in_the_library_and_its_wait_is_classified(world: World) -> None:
    world.fake.fail_next("GET", r".*/merge_requests/1", 429, headers={"Retry-After": "7"})
    with pytest.raises(GitlabError) as limited:
        world.client().merge_request(world.target, 1)
    assert classify_error(limited.value) == Verdict(True, 7.0)
    assert len(world.fake.requests_to("GET", r".*/merge_requests/1")) == 1
    reset = int(time.time()) + 30
    world.fake.fail_next("POST", r".*/notes", 429, headers={"RateLimit-Reset": str(reset)})
    with pytest.raises(GitlabError) as on_post:
        world.client().create_note(world.target, 1, "hello")
    verdict = classify_error(on_post.value)
    assert verdict is not None and verdict.transient and verdict.wait_s is not None and 25 <= verdict.wait_s <= 31
    assert world.fake.notes_of(world.target, 1) == []


def test_classify_error_reads_only_gitlabs_errors(world: World) -> None:
    with pytest.raises(GitlabGetError) as hidden:  # a project labgate cannot see does not exist for it
        world.client().merge_request(world.target + 100, 1)
    assert hidden.value.response_code == 404 and classify_error(hidden.value) == Verdict(False)
    world.fake.fail_next("GET", r".*/members/all", 503, times=10)
    with pytest.raises(GitlabError) as down:
        world.client().member(world.target, "alice")
    assert classify_error(down.value) == Verdict(True)
    assert len(world.fake.requests_to("GET", r".*/members/all")) == 4  # the first try and the library's 3
    assert classify_error(ValueError("x")) is None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as refused:
        GitLabClient(f"http://127.0.0.1:{port}", "t").create_note(1, 1, "x")
    assert classify_error(refused.value) is None and is_transient(refused.value, [classify_error])


def test_writes_are_paced(world: World) -> None:
    client = world.client(write_interval_s=0.3)
    started = time.monotonic()
    client.create_note(world.target, 1, "one")
    client.create_note(world.target, 1, "two")
    client.merge_request(world.target, 1)  # reads are not paced
    assert 0.3 <= time.monotonic() - started < 2


def test_the_token_is_never_logged_nor_shown(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = world.client()
    world.fake.fail_next("GET", r".*/merge_requests/1", 500, times=2)
    world.fake.fail_next("POST", r".*/notes", 429, headers={"Retry-After": "1"})
    wrong = GitLabClient(world.fake.base_url, f"{world.token}x")
    shown = [repr(client), repr(wrong)]
    client.member(world.target, "alice")
    client.merge_request(world.target, 1)
    for call in (lambda: client.create_note(world.target, 1, "x"),
                 lambda: client.set_status(world.fork, HEAD, state="pending", name="n", target_url=None,
                                           description=""),
                 lambda: wrong.merge_request(world.target, 1)):  # fmt: skip
        with pytest.raises(GitlabError) as failed:
            call()
        shown += [str(failed.value), repr(failed.value), str(failed.value.response_body)]
    assert world.token not in caplog.text and "PRIVATE-TOKEN" not in caplog.text
    assert caplog.records  # urllib3 did log each request, without headers
    assert not [text for text in shown if world.token in text]
    assert all(r.headers["private-token"] == world.token for r in world.fake.requests if r.user == "labgate")
