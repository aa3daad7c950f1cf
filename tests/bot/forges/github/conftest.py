"""A control worker's desk for the GitHub adapter: real store (SQLite) and broker (Redis), FakeGitHub
through PyGithub, the Celery tasks applied eagerly with the environment a worker has."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from bot import tasks
from bot.core.events import Actor, ChangeEvent, CommentEvent, Event, RepoRef, event_to_json
from bot.host.config import load_config
from bot.host.stores import Runtime, open_runtime, runtime_from_env
from bot.pipelines.lifecycle import record_delivery
from bot.store import models
from tests.fakes.github_api import FakeGitHub
from workers.app import CONTROL_QUEUE, configure

REPO = "octo-org/hello"
INSTALLATION = 77
HEAD, BASE = "a" * 40, "b" * 40


@dataclass
class Desk:
    fake: FakeGitHub
    runtime: Runtime
    broker: redis.Redis

    def deliver(self, event: Event, delivery_id: str) -> None:
        """What the web intake does before it enqueues: the delivery is stored as accepted."""
        with self.runtime.store.session() as session:
            record_delivery(session, "github", delivery_id, "test")
        tasks.github_event.apply(args=[event_to_json(event), delivery_id])

    def count(self, model: type[models.Base]) -> int:
        with self.runtime.store.session() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)

    def pipelines(self) -> list[tuple[int, str, str | None]]:
        with self.runtime.store.session() as session:
            return [(p.id, p.state, p.error_message) for p in session.scalars(select(models.Pipeline))]

    def starts_queued(self) -> int:
        return sum(1 for m in self.broker.lrange(CONTROL_QUEUE, 0, -1) if b"start_pipeline" in m)


@pytest.fixture
def desk(tmp_path: Path, redis_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Desk]:
    with FakeGitHub() as fake:
        fake.add_repo(REPO)
        fake.add_installation(INSTALLATION, [REPO])
        fake.set_permission(REPO, "maint", "write")
        fake.add_pull(REPO, 5, HEAD, "topic", "main", BASE, "mallory", "CONTRIBUTOR")
        (tmp_path / "app.pem").write_text(fake.private_key_pem)
        (tmp_path / "secret").write_text("s3cret")
        config_path = tmp_path / "labgate.yaml"
        config_path.write_text(
            f"data_dir: {tmp_path / 'data'}\n"
            f"github: {{app_id: {fake.app_id}, private_key_file: {tmp_path / 'app.pem'}, "
            f"webhook_secret_file: {tmp_path / 'secret'}, api_url: '{fake.base_url}', write_interval_s: 0}}\n"
            "retries: {attempts: 3, base_s: 0.01, max_s: 0.05}\n"
            f"trees:\n  - name: hello\n    url: https://example.org/hello.git\n    github: {{repo: {REPO}}}\n"
        )
        database = f"sqlite:///{tmp_path / 'db.sqlite3'}"
        monkeypatch.setenv("LABGATE_CONFIG", str(config_path))
        monkeypatch.setenv("LABGATE_DATABASE_URL", database)
        monkeypatch.delenv("LABGATE_DATA_DIR", raising=False)
        runtime = open_runtime(load_config(config_path), database_url=database)
        configure(redis_db_url, longest_job_s=60)
        runtime_from_env.cache_clear()
        tasks.github_app.cache_clear()
        yield Desk(fake, runtime, redis.Redis.from_url(redis_db_url))
        runtime_from_env.cache_clear()
        tasks.github_app.cache_clear()
        runtime.store.engine.dispose()


def repo_ref() -> RepoRef:
    return RepoRef("github", REPO, "https://example.org/hello.git", installation_id=INSTALLATION)


def comment(body: str, *, login: str = "maint", number: int = 5) -> CommentEvent:
    return CommentEvent(repo_ref(), number, 901, body, Actor(login, "MEMBER"), created_at=datetime.now(UTC))


def pushed(head: str, *, author: str = "alice", at: datetime | None = None, number: int = 6) -> ChangeEvent:
    who = Actor(author, "MEMBER")
    return ChangeEvent("updated", repo_ref(), number, head, "topic", REPO, "main", BASE, "t", who, who,
                       updated_at=at or datetime.now(UTC))  # fmt: skip
