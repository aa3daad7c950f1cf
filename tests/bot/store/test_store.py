"""The store on SQLite and on PostgreSQL: migrations build what the models describe."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bot.pipelines.lifecycle import record_delivery
from bot.store.db import Store, database_url_for, migrate
from bot.store.models import Base, Change, Job, Pipeline, Revision, TestResult, Tree


def _exercise(url: str) -> None:
    migrate(url)
    migrate(url)  # a second run is a no-op
    store = Store(url)
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    assert {"tree", "change", "revision", "pipeline", "job", "test_result", "delivery"} <= set(
        inspect(store.engine).get_table_names()
    )
    with store.session() as session:
        tree = Tree(name="netdev/net-next", url="https://example.org/net-next.git")
        change = Change(tree=tree, source="try", external_id="1", title="t")
        revision = Revision(change=change, base_ref="main", patches=[{"name": "p", "digest": "0" * 64}])
        pipeline = Pipeline(revision=revision)
        job = Job(pipeline=pipeline, kind="build", name="x86_64", queue="build", spec={"script": "make"})
        session.add_all([tree, job, TestResult(job=job, path="math.add", status="pass")])
        assert record_delivery(session, "github", "d-1", "pull_request") is True
        assert record_delivery(session, "github", "d-1", "pull_request") is False  # redelivery
    with store.session() as session:
        loaded = session.scalars(select(Job)).one()
        assert loaded.spec == {"script": "make"}
        assert loaded.pipeline.revision.patches[0]["name"] == "p"
        assert [t.path for t in loaded.tests] == ["math.add"]
    store.engine.dispose()


def test_sqlite_store_is_the_embedded_default(tmp_path: Path) -> None:
    url = database_url_for(None, tmp_path)
    assert url == f"sqlite:///{tmp_path}/labgate.sqlite3"
    _exercise(url)


def test_postgresql_store(postgres_url: str) -> None:
    _exercise(postgres_url)


def test_configured_url_wins(tmp_path: Path) -> None:
    assert database_url_for("postgresql+psycopg://x@h/db", tmp_path) == "postgresql+psycopg://x@h/db"


def test_a_write_after_a_read_under_a_savepoint_survives_another_process_writing(tmp_path: Path) -> None:
    """On SQLite a deferred transaction that read first cannot write once another connection committed
    ("database is locked" at once, past any busy timeout). `writing()` takes the lock first instead."""
    url = database_url_for(None, tmp_path)
    migrate(url)
    ours, theirs = Store(url), Store(url)  # two engines: two processes' connections to the file

    def read_then_write(session_of: Callable[[], AbstractContextManager[Session]], name: str) -> None:
        with session_of() as session, session.begin_nested():
            session.scalars(select(Tree)).all()  # the snapshot is taken here
            other = threading.Thread(target=_add_tree, args=(theirs, f"{name}-other"))
            other.start()
            other.join(timeout=0.5)  # blocked by our lock with writing(); done at once without
            session.add(Tree(name=name, url=f"file:///{name}"))
            session.flush()
        other.join(timeout=15)
        assert not other.is_alive()

    with pytest.raises(OperationalError, match="database is locked"):
        read_then_write(ours.session, "deferred")
    read_then_write(ours.writing, "immediate")
    with ours.session() as session:
        names = set(session.scalars(select(Tree.name)).all())
    assert names == {"deferred-other", "immediate", "immediate-other"}


def _add_tree(store: Store, name: str) -> None:
    with store.session() as session:
        session.add(Tree(name=name, url=f"file:///{name}"))
