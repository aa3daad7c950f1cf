"""Engines, sessions and schema migration for the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from bot.store.pending import discard_pending, flush_pending

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def database_url_for(database_url: str | None, data_dir: Path) -> str:
    """The configured URL, or SQLite in the data dir (the embedded default)."""
    if database_url:
        return database_url
    return f"sqlite:///{data_dir / 'labgate.sqlite3'}"


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Several processes (CLI, control worker, web) share the file: WAL lets
    # readers proceed during a write, and the busy timeout rides out the rest.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 10})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    command.upgrade(alembic_config(url), "head")


class Store:
    """One database: an engine and a session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success (with the rows bot/store/pending.py holds back), rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                flush_pending(session)
                session.commit()
            except BaseException:
                discard_pending(session)
                session.rollback()
                raise

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session that will write after reading, under savepoints: on SQLite it takes the write lock
        as it begins (BEGIN IMMEDIATE), waiting out other writers with the busy timeout.

        A SAVEPOINT opens a deferred transaction whose first read fixes its snapshot; a write after
        another process has committed then fails at once with "database is locked", which no busy
        timeout rides out. PostgreSQL needs nothing of the kind: this is `session()` there."""
        with self.session() as session:
            if self.engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
