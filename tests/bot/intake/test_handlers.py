"""The forge-neutral intake against a forge that is not GitHub: a desk that records what intake asked
of it. Real store (SQLite) and broker; what a forge adapter must provide is the ForgeDesk protocol alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.core.events import Actor, ChangeEvent, CommentEvent, RepoRef
from bot.core.trust import TrustPolicy
from bot.host.config import Config, Tree
from bot.host.stores import Runtime, open_runtime
from bot.intake.desk import ForgeDesk, Head
from bot.intake.handlers import on_change, on_comment
from bot.store import models
from bot.store.once import OnceKeys
from workers.app import configure

HEAD = "d" * 40


@dataclass
class RecordingDesk:
    """A forge that answers from fixed data and records every call intake makes."""

    source: str = "forge-x"
    permissions: dict[str, str] = field(default_factory=dict)
    head: Head = Head(HEAD, Actor("stranger"), "main", "a change", closed=False)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def permission(self, login: str) -> str | None:
        self.calls.append(("permission", login))
        return self.permissions.get(login)

    def teams_of(self, login: str, teams: Sequence[str]) -> frozenset[str]:
        self.calls.append(("teams_of", login))
        return frozenset()

    def current_head(self) -> Head:
        self.calls.append(("current_head",))
        return self.head

    def reply(self, text: str) -> None:
        self.calls.append(("reply", text))

    def show_waiting(self, head_sha: str, text: str) -> None:
        self.calls.append(("show_waiting", head_sha))

    def show_approved(self, head_sha: str, text: str) -> None:
        self.calls.append(("show_approved", head_sha))

    def revision(self, head_sha: str) -> dict[str, Any]:
        return {"ref": head_sha, "head_sha": head_sha}


@pytest.fixture
def runtime(tmp_path: Path, redis_db_url: str) -> Iterator[Runtime]:
    configure(redis_db_url, longest_job_s=60)
    config = Config(data_dir=tmp_path / "data", trees=[Tree(name="x", url="https://example.org/x.git",
                                                            trust=TrustPolicy())])  # fmt: skip
    runtime = open_runtime(config, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    yield runtime
    runtime.store.engine.dispose()


def repo() -> RepoRef:
    return RepoRef("forge-x", "group/x", "https://example.org/x.git")


def opened(at: datetime) -> ChangeEvent:
    return ChangeEvent("opened", repo(), 3, HEAD, "topic", "group/x", "main", "b" * 40, "a change",
                       Actor("stranger"), Actor("stranger"), updated_at=at)  # fmt: skip


def test_a_strangers_change_waits_and_a_maintainer_approves_it(runtime: Runtime) -> None:
    desk: ForgeDesk = RecordingDesk(permissions={"maint": "write"})
    tree = runtime.config.trees[0]
    pushed_at = datetime.now(UTC) - timedelta(minutes=1)
    assert on_change(runtime, desk, tree, opened(pushed_at), OnceKeys("forge-x", "e1")) == [
        f"waiting for approval of {HEAD[:12]}"]
    comment = CommentEvent(repo(), 3, 1, "/ok-to-test", Actor("maint"), created_at=datetime.now(UTC))
    done = on_comment(runtime, desk, tree, comment, OnceKeys("forge-x", "e2"))
    assert done[0] == f"approval of {HEAD[:12]} by maint" and done[1].startswith("pipeline ")
    assert isinstance(desk, RecordingDesk)
    assert [c[0] for c in desk.calls] == ["teams_of", "show_waiting", "current_head", "teams_of", "permission",
                                          "show_approved"]  # fmt: skip
    with runtime.store.session() as session:
        change = session.scalar(select(models.Change))
        assert change is not None and (change.source, change.external_id) == ("forge-x", "group/x#3")
        assert [p.revision.head_sha for p in session.scalars(select(models.Pipeline))] == [HEAD]


def test_a_comment_without_a_command_asks_the_forge_nothing(runtime: Runtime) -> None:
    desk = RecordingDesk()
    comment = CommentEvent(repo(), 3, 1, "looks good to me", Actor("maint"), created_at=datetime.now(UTC))
    assert on_comment(runtime, desk, runtime.config.trees[0], comment, None) == ["ignored: no command"]
    assert desk.calls == []


def test_a_retargeted_change_runs_again_on_its_new_base_with_the_same_head(runtime: Runtime) -> None:
    desk = RecordingDesk(permissions={"maint": "write"})
    trusted = runtime.config.trees[0].model_copy(update={"trust": TrustPolicy(trusted_users=("stranger",))})
    at = datetime.now(UTC) - timedelta(minutes=1)
    first = on_change(runtime, desk, trusted, opened(at), OnceKeys("forge-x", "r1"))
    assert first[0].startswith("pipeline ")
    # The same head delivered again as an update is a duplicate; as a new base, it is tested again.
    again = ChangeEvent("updated", repo(), 3, HEAD, "topic", "group/x", "main", "b" * 40, "a change",
                        Actor("stranger"), Actor("stranger"), updated_at=at)  # fmt: skip
    assert on_change(runtime, desk, trusted, again, OnceKeys("forge-x", "r2"))[0].startswith("ignored: head")
    moved = ChangeEvent("retargeted", repo(), 3, HEAD, "topic", "group/x", "next", "c" * 40, "a change",
                        Actor("stranger"), Actor("stranger"), updated_at=at)  # fmt: skip
    done = on_change(runtime, desk, trusted, moved, OnceKeys("forge-x", "r3"))
    assert done[0].startswith("cancelled") and "superseded" in done[0] and done[1].startswith("pipeline ")
    with runtime.store.session() as session:
        bases = [p.revision.base_ref for p in session.scalars(select(models.Pipeline).order_by(models.Pipeline.id))]
    assert bases == ["main", "next"]
