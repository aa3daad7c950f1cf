"""GitLab merge request scenarios, webhook to final commit status: real workers, real git and QEMU, and
FakeGitLab (driven through python-gitlab) recording what labgate asked of it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bot.host.bring_up import Services
from bot.web.app import create_app
from tests.conftest import EXAMPLES, make_git_repo
from tests.fakes.gitlab_api import FakeGitLab
from tests.samples.gitlab import Project, User, merge_request_hook, note_hook, push_hook
from tests.scenarios.running import git, push_change_head, running_labgate, wait_for

HOOK_TOKEN = "glwt-scenario-0d9c8b7a"
PATCHES = EXAMPLES / "hello" / "patches"
PIPELINE_STATUSES = {"labgate / checkout", "labgate / build x86_64", "labgate / qemu-x86_64 unit"}
APPROVAL = "labgate / approval"
DEVELOPER, MAINTAINER, REPORTER = 30, 40, 20



@dataclass
class World:
    fake: FakeGitLab
    services: Services
    client: TestClient
    origin: Path  # stands for the target project's repository
    base_sha: str
    target: Project
    fork: Project
    users: dict[str, User]

    def push_head(self, iid: int, patch: Path | None, *, on: str | None = None) -> str:
        """Make refs/merge-requests/IID/head in the origin (GitLab keeps one per merge request, forks'
        too, in the target project); its SHA."""
        return push_change_head(self.origin, f"refs/merge-requests/{iid}/head", patch, on=on or self.base_sha)

    def open_mr(self, iid: int, sha: str, *, author: str = "alice", from_fork: bool = False,
                action: str = "open", oldrev: str | None = None, **hook: Any) -> Any:  # fmt: skip
        source = self.fork if from_fork else self.target
        self.fake.add_merge_request(self.target.id, iid, head_sha=sha, author=author, source_project=source.id,
                                    source_branch=f"topic-{iid}", draft=hook.get("draft", False))  # fmt: skip
        body = merge_request_hook(action, target=self.target, source=source, iid=iid, head_sha=sha,
                                  author=self.users[author], source_branch=f"topic-{iid}", oldrev=oldrev,
                                  **hook)  # fmt: skip
        return self.post("Merge Request Hook", body)

    def note(self, iid: int, text: str, *, by: str = "maint", seen: str, action: str = "create") -> Any:
        """`by` writes a note on the merge request, and GitLab's Note Hook tells of it."""
        note_id = self.fake.add_note(self.target.id, iid, by, text)
        return self.post("Note Hook", note_hook(text, target=self.target, iid=iid, seen_head_sha=seen,
                                                by=self.users[by], action=action, note_id=note_id))  # fmt: skip

    def post(self, event: str, payload: dict[str, Any], *, token: str = HOOK_TOKEN, uuid_: str | None = None) -> Any:
        headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "Content-Type": "application/json",
                   "X-Gitlab-Event-UUID": uuid_ or str(uuid.uuid4())}  # fmt: skip
        return self.client.post("/hooks/gitlab", content=json.dumps(payload).encode(), headers=headers)

    def statuses(self, sha: str) -> dict[str, dict[str, Any]]:
        """The newest status of each name on a commit, in the target project."""
        newest: dict[str, dict[str, Any]] = {}
        for status in self.fake.statuses_of(self.target.id, sha):
            newest[status["name"]] = status
        return newest

    def notes(self, iid: int) -> list[dict[str, Any]]:
        """labgate's notes on the merge request (people's are there too)."""
        return [n for n in self.fake.notes_of(self.target.id, iid) if n["author"]["username"] == "labgate"]

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 150) -> None:
        wait_for(predicate, what, timeout_s, poll_s=0.2)

    def wait_finished(self, sha: str, names: set[str], timeout_s: float = 150) -> dict[str, dict[str, Any]]:
        def done() -> bool:
            found = self.statuses(sha)
            return names <= set(found) and all(found[n]["status"] not in ("pending", "running") for n in names)

        self.wait(done, f"statuses {names} finished on {sha[:12]}", timeout_s)
        return self.statuses(sha)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gitlab")
    origin = make_git_repo(EXAMPLES / "hello", root / "origin")
    with FakeGitLab() as fake:
        ids = {name: fake.add_user(name, bot=name == "labgate")
               for name in ("labgate", "alice", "maint", "eve", "mallory")}  # fmt: skip
        group = fake.add_group("octo-group")
        target_id = fake.add_project("octo-group/hello", group=group)
        fork_id = fake.add_project("eve/hello", forked_from=target_id)
        fake.add_member("alice", DEVELOPER, group=group)  # inherited by the project
        fake.add_member("maint", MAINTAINER, project=target_id)
        fake.add_member("mallory", REPORTER, project=target_id)
        fake.add_member("labgate", DEVELOPER, project=target_id)
        fake.add_member("eve", MAINTAINER, project=fork_id)  # her fork: no role on the target
        fake.push_commit(target_id, git(origin, "rev-parse", "HEAD"))
        (root / "api-token").write_text(fake.add_token("labgate"))
        (root / "hook-token").write_text(HOOK_TOKEN)
        (root / "labgate.yaml").write_text(
            f"data_dir: {root / 'data'}\n"
            f"web: {{public_url: 'https://ci.example.org'}}\n"
            f"retries: {{base_s: 0.2, max_s: 1}}\n"
            f"gitlab: {{url: '{fake.base_url}', token_file: {root / 'api-token'}, "
            f"webhook_token_file: {root / 'hook-token'}, write_interval_s: 0}}\n"
            f"trees:\n  - name: hello\n    url: {origin}\n"
            f"    staging_branches: [staging]\n    gitlab: {{project_id: {target_id}, project: octo-group/hello}}\n"
        )
        with running_labgate(root / "labgate.yaml") as services:
            yield World(fake, services, TestClient(create_app(services.runtime)), origin,
                        git(origin, "rev-parse", "HEAD"), Project(target_id, "octo-group/hello"),
                        Project(fork_id, "eve/hello"), {n: User(i, n) for n, i in ids.items()})  # fmt: skip


def test_a_forged_token_gets_401_and_nothing_is_stored(world: World) -> None:
    sha = world.push_head(90, PATCHES / "pass.patch")
    body = merge_request_hook("open", target=world.target, source=world.target, iid=90, head_sha=sha,
                              author=world.users["alice"])  # fmt: skip
    for token in ("not the token", HOOK_TOKEN[:-1], ""):
        answer = world.post("Merge Request Hook", body, token=token)
        assert answer.status_code == 401, token
    assert world.client.post("/hooks/gitlab", content=b"{}", headers={"X-Gitlab-Event": "Push Hook"}).status_code == 401
    time.sleep(1)
    assert world.fake.requests == [] or all("/merge_requests/90" not in r.path for r in world.fake.requests)
    assert world.statuses(sha) == {}


def test_a_trusted_merge_request_passes(world: World) -> None:
    sha = world.push_head(1, PATCHES / "pass.patch")
    answer = world.open_mr(1, sha)
    assert answer.status_code == 202 and answer.json()["status"] == "accepted", answer.json()
    found = world.wait_finished(sha, PIPELINE_STATUSES)
    assert {found[n]["status"] for n in PIPELINE_STATUSES} == {"success"}
    unit = found["labgate / qemu-x86_64 unit"]
    assert unit["ref"] == "refs/merge-requests/1/head"
    assert unit["target_url"].startswith("https://ci.example.org/jobs/")
    # Each status went pending -> running -> success, never back from a finished state.
    posts = [r for r in world.fake.requests_to("POST", rf"/api/v4/projects/{world.target.id}/statuses/{sha}")
             if r.json and r.json.get("name") == "labgate / qemu-x86_64 unit"]  # fmt: skip
    states = [r.json["state"] for r in posts]
    assert states == sorted(states, key=["pending", "running", "success"].index), states
    assert not [s for s in world.fake.statuses_of(world.target.id, sha) if s["retried"]]
    world.wait(lambda: any("labgate: pass" in n["body"] for n in world.notes(1)), "the summary note")
    assert len(world.notes(1)) == 1, "one note, edited in place"


def test_fail_patch_names_the_test_and_retest_repeats_only_it(world: World) -> None:
    sha = world.push_head(2, PATCHES / "fail.patch")
    world.open_mr(2, sha)
    found = world.wait_finished(sha, PIPELINE_STATUSES)
    unit = found["labgate / qemu-x86_64 unit"]
    assert unit["status"] == "failed" and "math.mul" in unit["description"]
    assert found["labgate / build x86_64"]["status"] == "success"
    world.wait(lambda: any("math.mul" in n["body"] and "done" not in n["body"][:0] for n in world.notes(2)
                           if "labgate: fail" in n["body"]), "the note naming math.mul")  # fmt: skip
    [note] = world.notes(2)
    body = note["body"]
    assert body.index("math.mul") < body.index("| job | result |"), "what is broken comes first"

    build_posts = len([r for r in world.fake.requests_to("POST", rf"/api/v4/projects/{world.target.id}/statuses/{sha}")
                       if r.json and r.json.get("name") == "labgate / build x86_64"])  # fmt: skip
    world.note(2, "/retest", by="alice", seen=sha)  # the author may re-run their change
    world.wait(lambda: len([s for s in world.fake.statuses_of(world.target.id, sha)
                            if s["name"] == "labgate / qemu-x86_64 unit"]) == 2
               and world.statuses(sha)["labgate / qemu-x86_64 unit"]["status"] == "failed", "the re-run")  # fmt: skip
    assert len([r for r in world.fake.requests_to("POST", rf"/api/v4/projects/{world.target.id}/statuses/{sha}")
                if r.json and r.json.get("name") == "labgate / build x86_64"]) == build_posts  # fmt: skip
    assert len(world.notes(2)) == 1


def test_a_fork_merge_request_waits_and_is_approved_by_sha(world: World) -> None:
    sha = world.push_head(3, PATCHES / "pass.patch")
    world.open_mr(3, sha, author="eve", from_fork=True)
    world.wait(lambda: APPROVAL in world.statuses(sha), "the approval status")
    assert world.statuses(sha)[APPROVAL]["status"] == "pending"
    assert world.statuses(sha)[APPROVAL]["ref"] == "refs/merge-requests/3/head"
    world.wait(lambda: any("/ok-to-test" in n["body"] for n in world.notes(3)), "the note saying how to approve")
    assert not (PIPELINE_STATUSES & set(world.statuses(sha)))  # nothing ran
    # Nothing was ever posted to the fork, where labgate has no role.
    assert not world.fake.requests_to("POST", rf"/api/v4/projects/{world.fork.id}/.*")

    # A reporter cannot approve; an edited note runs nothing.
    world.note(3, "/ok-to-test", by="mallory", seen=sha)
    world.wait(lambda: any("only users with" in n["body"] for n in world.notes(3)), "the refusal")
    world.note(3, "/ok-to-test", by="maint", seen=sha, action="update")
    time.sleep(2)
    assert not (PIPELINE_STATUSES & set(world.statuses(sha)))

    world.note(3, "/ok-to-test", by="maint", seen=sha)
    found = world.wait_finished(sha, PIPELINE_STATUSES)
    assert {found[n]["status"] for n in PIPELINE_STATUSES} == {"success"}
    assert world.statuses(sha)[APPROVAL]["status"] == "success"

    # A new push needs a new approval; a note written while the old head was shown approves nothing.
    new_sha = world.push_head(3, None, on=sha)
    world.open_mr(3, new_sha, author="eve", from_fork=True, action="update", oldrev=sha)
    world.wait(lambda: APPROVAL in world.statuses(new_sha), "the approval status of the new push")
    world.note(3, "/ok-to-test", by="maint", seen=sha)
    world.wait(lambda: any(f"`{sha[:12]}` is not the current head" in n["body"] for n in world.notes(3)),
               "the refusal of the stale approval")  # fmt: skip
    assert not (PIPELINE_STATUSES & set(world.statuses(new_sha)))


def test_a_new_push_supersedes_the_running_pipeline(world: World) -> None:
    first = world.push_head(4, PATCHES / "pass.patch")
    world.open_mr(4, first)
    world.wait(lambda: "labgate / checkout" in world.statuses(first), "the first pipeline to start")
    second = world.push_head(4, None, on=first)
    world.open_mr(4, second, action="update", oldrev=first)
    world.wait(lambda: any(s["status"] == "canceled" for s in world.statuses(first).values()),
               "a status of the first pipeline to say it was cancelled", timeout_s=60)  # fmt: skip
    world.wait_finished(first, set(world.statuses(first)))  # nothing of the first is left pending
    again = world.wait_finished(second, PIPELINE_STATUSES)
    assert {again[n]["status"] for n in PIPELINE_STATUSES} == {"success"}
    # One note for the merge request, showing the latest pipeline.
    world.wait(lambda: any(second[:12] in n["body"] or "labgate: pass" in n["body"] for n in world.notes(4)), "note")
    assert len(world.notes(4)) == 1


def test_an_update_without_new_commits_is_ignored_and_draft_to_ready_tests(world: World) -> None:
    sha = world.push_head(5, PATCHES / "pass.patch")
    drafted = world.open_mr(5, sha, draft=True)
    assert drafted.json()["status"] == "accepted"
    retitled = world.open_mr(5, sha, action="update", draft=True)  # a title edit: no oldrev
    assert retitled.json()["status"] == "ignored" and "nothing to test" in retitled.json()["reason"]
    time.sleep(2)
    assert world.statuses(sha) == {}  # a draft is not tested
    ready = world.open_mr(5, sha, action="update", changes={"draft": {"previous": True, "current": False}})
    assert ready.json()["status"] == "accepted", ready.json()
    found = world.wait_finished(sha, PIPELINE_STATUSES)
    assert {found[n]["status"] for n in PIPELINE_STATUSES} == {"success"}


def test_a_409_storm_is_retried_and_no_status_goes_back(world: World) -> None:
    world.fake.fail_statuses_with_409(12)
    sha = world.push_head(6, PATCHES / "pass.patch")
    world.open_mr(6, sha)
    found = world.wait_finished(sha, PIPELINE_STATUSES)
    assert {found[n]["status"] for n in PIPELINE_STATUSES} == {"success"}
    answered = [r.status for r in world.fake.requests_to("POST", rf"/api/v4/projects/{world.target.id}/statuses/{sha}")]
    assert answered.count(409) == 12 and 201 in answered
    assert not [s for s in world.fake.statuses_of(world.target.id, sha) if s["retried"]], "none reopened"


def test_a_staging_push_lists_new_failures_first(world: World) -> None:
    maint = world.users["maint"]
    good = world.push_head(10, PATCHES / "pass.patch")
    git(world.origin, "update-ref", "refs/heads/staging", good)
    world.fake.push_commit(world.target.id, good, "staging")
    world.post("Push Hook", push_hook(project=world.target, ref="refs/heads/staging", before="0" * 40, after=good,
                                      by=maint))  # fmt: skip
    world.wait_finished(good, PIPELINE_STATUSES)
    world.wait(lambda: bool(world.fake.commit_comments_of(world.target.id, good)), "the first push's comment")

    bad = world.push_head(11, PATCHES / "fail.patch", on=good)
    git(world.origin, "update-ref", "refs/heads/staging", bad)
    world.fake.push_commit(world.target.id, bad, "staging")
    world.post("Push Hook", push_hook(project=world.target, ref="refs/heads/staging", before=good, after=bad, by=maint))
    world.wait_finished(bad, PIPELINE_STATUSES)
    world.wait(lambda: bool(world.fake.commit_comments_of(world.target.id, bad)), "the second push's comment")
    [comment] = world.fake.commit_comments_of(world.target.id, bad)
    text = comment["note"]
    assert text.index(f"**New failures since `{good[:12]}`") < text.index("| job | result |")
    assert text.index("math.mul") < text.index("| job | result |")
    assert world.post("Push Hook", push_hook(project=world.target, ref="refs/heads/topic", before=good, after=bad,
                                             by=maint)).json()["status"] == "accepted"  # fmt: skip


def test_no_token_reaches_the_store_or_the_logs(world: World) -> None:
    token = (world.services.runtime.data_dir.parent / "api-token").read_text()
    data_dir = world.services.runtime.data_dir
    for path in [*data_dir.glob("*.sqlite3*"), *(data_dir / "logs").glob("*.log")]:
        assert token.encode() not in path.read_bytes(), path
        assert HOOK_TOKEN.encode() not in path.read_bytes(), path
