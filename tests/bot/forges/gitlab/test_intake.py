"""GitLab intake against forged deliveries that carry the right token (it is sent in clear: whoever read one
delivery holds it): labgate reads back from GitLab what a delivery claims, and acts only on what is true."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.core.events import Actor, ChangeEvent, CommentEvent, PushEvent, RepoRef
from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.intake import handle_event
from bot.host.config import Config, Tree, TreeGitLab
from bot.host.stores import Runtime, open_runtime
from bot.store import models
from tests.fakes.gitlab_api import DEVELOPER, MAINTAINER, FakeGitLab
from workers.app import configure

TRUSTED_HEAD = "1" * 40  # alice's merge request !1
FORK_HEAD = "2" * 40  # eve's merge request !2, from her fork, not approved
STAGING = "3" * 40


@dataclass
class World:
    fake: FakeGitLab
    runtime: Runtime
    client: GitLabClient
    target: int
    repo: RepoRef

    def pipelines(self) -> int:
        with self.runtime.store.session() as session:
            return int(session.scalar(select(func.count()).select_from(models.Pipeline)) or 0)

    def approvals(self) -> int:
        with self.runtime.store.session() as session:
            return int(session.scalar(select(func.count()).select_from(models.Approval)) or 0)

    def change(self, iid: int, head: str, action: str = "updated", author: str = "alice") -> ChangeEvent:
        return ChangeEvent(action, self.repo, iid, head, f"topic-{iid}", "octo-group/hello", "main", "", "x",  # type: ignore[arg-type]
                           Actor(author), Actor(author), updated_at=datetime.now(UTC))  # fmt: skip

    def note(self, iid: int, body: str, by: str, seen: str, note_id: int) -> CommentEvent:
        return CommentEvent(self.repo, iid, note_id, body, Actor(by), datetime.now(UTC), seen_head_sha=seen)


@pytest.fixture
def world(tmp_path: Path, redis_db_url: str) -> Iterator[World]:
    configure(redis_db_url, longest_job_s=60)
    with FakeGitLab() as fake:
        for name in ("labgate", "alice", "maint", "eve"):
            fake.add_user(name)
        target = fake.add_project("octo-group/hello")
        fork = fake.add_project("eve/hello", forked_from=target)
        fake.add_member("labgate", DEVELOPER, project=target)
        fake.add_member("alice", DEVELOPER, project=target)
        fake.add_member("maint", MAINTAINER, project=target)
        fake.add_merge_request(target, 1, head_sha=TRUSTED_HEAD, author="alice")
        fake.add_merge_request(target, 2, head_sha=FORK_HEAD, author="eve", source_project=fork)
        fake.push_commit(target, STAGING, "staging")
        tree = Tree(name="hello", url="https://gitlab.example.org/octo-group/hello.git", staging_branches=["staging"],
                    gitlab=TreeGitLab(project_id=target, project="octo-group/hello"))  # fmt: skip
        runtime = open_runtime(Config(data_dir=tmp_path / "data", trees=[tree]),
                               database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")  # fmt: skip
        repo = RepoRef("gitlab", "octo-group/hello", tree.url, "main", target)
        yield World(fake, runtime, GitLabClient(fake.base_url, fake.add_token("labgate")), target, repo)
        runtime.store.engine.dispose()


def test_a_genuine_delivery_starts_a_pipeline(world: World) -> None:
    done = handle_event(world.runtime, world.client, world.change(1, TRUSTED_HEAD, "opened"), "d-1")
    assert any(line.startswith("pipeline ") for line in done), done
    assert world.pipelines() == 1


def test_a_trusted_change_naming_an_untrusted_head_is_ignored(world: World) -> None:
    # Alice's merge request, with eve's unapproved fork head: tested as alice's, it would run eve's code
    # with alice's trust and eve's own plan.
    done = handle_event(world.runtime, world.client, world.change(1, FORK_HEAD), "d-2")
    assert done == [f"ignored: !1 is open at {TRUSTED_HEAD[:12]} now, not as delivered (updated at "
                    f"{FORK_HEAD[:12]}); a later event tells of it"]  # fmt: skip
    assert world.pipelines() == 0


def test_a_forged_close_cancels_nothing(world: World) -> None:
    done = handle_event(world.runtime, world.client, world.change(1, TRUSTED_HEAD, "closed"), "d-3")
    assert done[0].startswith("ignored: !1 is open") and world.pipelines() == 0


def test_an_approval_nobody_wrote_approves_nothing(world: World) -> None:
    forged = world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id=4242)
    done = handle_event(world.runtime, world.client, forged, "d-4")
    assert done == ["ignored: note 4242 is not on !2 as delivered (by maint, with this text)"]
    assert world.approvals() == 0 and world.pipelines() == 0


def test_a_note_is_read_back_for_its_author_and_text(world: World) -> None:
    by_eve = world.fake.add_note(world.target, 2, "eve", "/ok-to-test")
    said_by_maint = world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id=by_eve)
    assert handle_event(world.runtime, world.client, said_by_maint, "d-5")[0].startswith("ignored: note")
    harmless = world.fake.add_note(world.target, 2, "maint", "looks fine")
    rewritten = world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id=harmless)
    assert handle_event(world.runtime, world.client, rewritten, "d-6")[0].startswith("ignored: note")
    # GitLab's own notes ("added 1 commit: ... /ok-to-test") are written under the pusher's name.
    system = world.fake.add_note(world.target, 2, "maint", "/ok-to-test", system=True)
    assert handle_event(world.runtime, world.client, world.note(2, "/ok-to-test", "maint", FORK_HEAD, system),
                        "d-7")[0].startswith("ignored: note")  # fmt: skip
    assert world.approvals() == 0 and world.pipelines() == 0


def test_a_real_approval_is_carried_out(world: World) -> None:
    note_id = world.fake.add_note(world.target, 2, "maint", "/ok-to-test")
    done = handle_event(world.runtime, world.client, world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id), "d-8")
    assert any("approval of" in line for line in done) and world.approvals() == 1 and world.pipelines() == 1


def test_a_push_naming_another_commit_than_the_branch_holds_is_ignored(world: World) -> None:
    forged = PushEvent(world.repo, "refs/heads/staging", STAGING, FORK_HEAD, False, False, False, Actor("maint"))
    done = handle_event(world.runtime, world.client, forged, "d-9")
    assert done == [f"ignored: staging is at {STAGING[:12]} now, not {FORK_HEAD[:12]}"]
    genuine = PushEvent(world.repo, "refs/heads/staging", "0" * 40, STAGING, True, False, False, Actor("maint"))
    assert handle_event(world.runtime, world.client, genuine, "d-10")[0].startswith("post-merge pipeline")
    assert world.pipelines() == 1


EVIL = "e" * 40


def checkout_specs(world: World) -> list[tuple[str, dict[str, object]]]:
    with world.runtime.store.session() as session:
        return [(p.revision.head_sha or "", dict(next(j for j in p.jobs if j.kind == "checkout").spec))
                for p in session.scalars(select(models.Pipeline).order_by(models.Pipeline.id))]  # fmt: skip


def test_an_old_approval_sent_again_naming_a_newer_head_approves_nothing(world: World) -> None:
    note_id = world.fake.add_note(world.target, 2, "maint", "/ok-to-test")
    handle_event(world.runtime, world.client, world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id), "d-11")
    assert world.pipelines() == 1
    fork = world.fake._mrs[(world.target, 2)].source_project_id  # eve pushes code nobody read
    world.fake.add_merge_request(world.target, 2, head_sha=EVIL, author="eve", source_project=fork)
    waits = handle_event(world.runtime, world.client, world.change(2, EVIL, author="eve"), "d-12")
    assert waits[-1] == f"waiting for approval of {EVIL[:12]}"
    # The maintainer's old note, its real id, author and text, with the new head as the one "seen".
    replayed = world.note(2, "/ok-to-test", "maint", EVIL, note_id)
    done = handle_event(world.runtime, world.client, replayed, "d-13 (a new Idempotency-Key)")
    assert done == [f"ignored: note {note_id} was written before {EVIL[:12]} was pushed to !2; it cannot approve it"]
    assert [head for head, _ in checkout_specs(world)] == [FORK_HEAD]
    # A note written after the push does approve it.
    fresh = world.fake.add_note(world.target, 2, "maint", "/ok-to-test")
    handle_event(world.runtime, world.client, world.note(2, "/ok-to-test", "maint", EVIL, fresh), "d-14")
    assert [head for head, _ in checkout_specs(world)] == [FORK_HEAD, EVIL]


def test_the_same_note_sent_twice_does_its_work_once(world: World) -> None:
    note_id = world.fake.add_note(world.target, 2, "maint", "/ok-to-test")
    for delivery in ("d-15", "d-16"):
        handle_event(world.runtime, world.client, world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id), delivery)
    assert world.pipelines() == 1 and world.approvals() == 1


def test_a_forged_retarget_cannot_choose_the_base(world: World) -> None:
    note_id = world.fake.add_note(world.target, 2, "maint", "/ok-to-test")
    handle_event(world.runtime, world.client, world.note(2, "/ok-to-test", "maint", FORK_HEAD, note_id), "d-17")
    forged = replace(world.change(2, FORK_HEAD, "retargeted", author="eve"), base_ref="merge-requests/3/head",
                     title="evil\ntitle", draft=False)  # fmt: skip
    handle_event(world.runtime, world.client, forged, "d-18")
    specs = checkout_specs(world)
    # Whatever the delivery says, the base is the merge request's target branch as GitLab holds it.
    assert {spec["base_ref"] for _, spec in specs} == {"main"}
    with world.runtime.store.session() as session:
        assert {c.title for c in session.scalars(select(models.Change))} == {"Merge request 2"}


def test_a_forged_push_cannot_choose_what_it_is_compared_with_nor_run_twice(world: World) -> None:
    for n in range(3):  # the same push under three delivery ids, naming a fork's head as `before`
        forged = PushEvent(world.repo, "refs/heads/staging", FORK_HEAD, STAGING, False, False, False, Actor("maint"))
        handle_event(world.runtime, world.client, forged, f"d-push-{n}")
    specs = checkout_specs(world)
    assert len(specs) == 1, "one pipeline per push, however many deliveries tell of it"
    later = "4" * 40
    world.fake.push_commit(world.target, later, "staging")
    pushed = PushEvent(world.repo, "refs/heads/staging", FORK_HEAD, later, False, False, False, Actor("maint"))
    handle_event(world.runtime, world.client, pushed, "d-push-4")
    # Compared with the head labgate tested last on the branch, not with the delivery's `before`.
    assert checkout_specs(world)[-1][1]["base_ref"] == STAGING
