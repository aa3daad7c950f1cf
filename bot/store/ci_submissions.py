"""CI submissions stored on the hot path (POST /api/v1/submissions): one statement, keyed by (issuer, jti).

The unique (issuer, jti) makes a token sent twice, even twice at once, one submission: the insert that
loses the race finds the winner's row instead of making a second (no check-then-insert). Each answer
hands out a read token of its own, stored as its sha256 with the submission, in the same transaction,
up to MAX_READ_TOKENS a submission: a token replayed beyond stores nothing (the answer is 429)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import orjson
import psycopg
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from bot.store.db import Store
from bot.store.models import CiSubmission, CiSubmissionReader, utcnow
from workers.errors import ConfigError

CONNECT_TIMEOUT_S = 5
# Inserted, or found when the jti was stored before: the submission's id either way, with one more reader
# unless it has MAX_READ_TOKENS already. When another transaction inserts the same jti at the same moment,
# ON CONFLICT waits for it and skips, but this statement's snapshot predates that row: no row comes back,
# and the statement runs again. The count is the snapshot's: one process sends one statement at a time
# (PostgresSubmissionLog's lock), so only other web processes' replays at the very same moment can pass
# the cap, one each.
_PG_STORE = """
WITH new AS (
    INSERT INTO ci_submission (issuer, jti, identity, tree, tier, base_branch, request, claims, created_at,
                               expires_at)
    VALUES (%(issuer)s, %(jti)s, %(identity)s, %(tree)s, %(tier)s, %(base_branch)s, %(request)s::json,
            %(claims)s::json, %(now)s, %(expires_at)s)
    ON CONFLICT (issuer, jti) DO NOTHING
    RETURNING id, pipeline_id
), found AS (
    SELECT id, pipeline_id, true AS fresh FROM new
    UNION ALL
    SELECT id, pipeline_id, false FROM ci_submission WHERE issuer = %(issuer)s AND jti = %(jti)s
), readers AS (
    SELECT count(*) AS before FROM ci_submission_reader WHERE submission_id IN (SELECT id FROM found)
), reader AS (
    INSERT INTO ci_submission_reader (submission_id, token_sha256, created_at)
    SELECT id, %(token_sha256)s, %(now)s FROM found, readers WHERE readers.before < %(max_read_tokens)s
)
SELECT id, pipeline_id, fresh, before FROM found, readers
"""
RACE_ATTEMPTS = 3
# Read tokens a submission hands out: the first answer's and a few replays' (an answer lost on the way).
# Each is a row that every replay of the id-token would otherwise add, for as long as the token lives.
MAX_READ_TOKENS = 16


class NewSubmission(NamedTuple):
    issuer: str
    jti: str
    identity: str
    tree: str
    tier: str
    base_branch: str
    request: Mapping[str, Any]  # what to test (bot/store/models.py CiSubmission.request)
    claims: Mapping[str, Any]
    expires_at: datetime
    token_sha256: str  # of the read token this answer hands out


class Stored(NamedTuple):
    id: int
    fresh: bool  # False: the jti came before (a replay), and this is the first submission's id
    pipeline_id: int | None
    read_tokens_before: int = 0  # the submission's read tokens before this answer's

    @property
    def read_token_stored(self) -> bool:
        """False: the submission had MAX_READ_TOKENS already, and this answer's read token was not stored."""
        return self.read_tokens_before < MAX_READ_TOKENS


class SubmissionLog(Protocol):
    async def store(self, new: NewSubmission) -> Stored:
        """Store the submission and its reader in one committed transaction, or find the one stored
        under the same (issuer, jti) and add the reader to it, unless it has MAX_READ_TOKENS already."""
        ...

    async def close(self) -> None: ...


class PostgresSubmissionLog:
    """One autocommit psycopg connection on the event loop: no thread hop, no ORM, one round trip a submission.

    The statement is idempotent (the jti is its key), so a connection found dead when used (PostgreSQL
    restarted while it sat idle) is replaced and the statement sent once more, instead of a ping per use."""

    def __init__(self, url: str) -> None:
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()  # a psycopg connection runs one statement at a time

    async def store(self, new: NewSubmission) -> Stored:
        params = {**new._asdict(), "request": orjson.dumps(new.request).decode(),
                  "claims": orjson.dumps(new.claims).decode(), "now": utcnow(),
                  "max_read_tokens": MAX_READ_TOKENS}  # fmt: skip
        async with self._lock:
            for _ in range(RACE_ATTEMPTS):
                row = await self._fetch_one(params)
                if row is not None:
                    return Stored(id=row[0], pipeline_id=row[1], fresh=row[2], read_tokens_before=row[3])
        raise RuntimeError(f"submission {new.issuer} {new.jti}: neither stored nor found")  # pragma: no cover

    async def _fetch_one(self, params: dict[str, Any]) -> tuple[Any, ...] | None:
        for attempt in (1, 2):
            reused = self._connection is not None and not self._connection.closed
            connection = await self._connect()
            try:
                cursor = await connection.execute(_PG_STORE, params)
                return await cursor.fetchone()
            except psycopg.OperationalError:
                await self._drop(connection)
                if not reused or attempt == 2:  # a new connection that fails: the database is down
                    raise
            except BaseException:
                # An error or a cancellation leaves the connection in an unknown state: never reuse it.
                await self._drop(connection)
                raise
        return None  # pragma: no cover - the loop returns or raises

    async def _connect(self) -> psycopg.AsyncConnection:
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        return self._connection

    async def _drop(self, connection: psycopg.AsyncConnection) -> None:
        self._connection = None
        await connection.close()

    async def close(self) -> None:
        if self._connection is not None:
            await self._drop(self._connection)


class SqliteSubmissionLog:
    """SQLite (the embedded default): the same in one transaction through the engine, in a thread (a commit
    waits for the disk). SQLite has one writer at a time, so the insert that loses a race waits, then finds."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statement = (sqlite.insert(CiSubmission).on_conflict_do_nothing(index_elements=["issuer", "jti"])
                          .returning(CiSubmission.id))  # fmt: skip

    def _store(self, new: NewSubmission) -> Stored:
        now = utcnow()
        fields = {k: v for k, v in new._asdict().items() if k != "token_sha256"}
        with self.engine.begin() as connection:
            submission_id = connection.execute(self.statement, {**fields, "created_at": now}).scalar()
            stored = Stored(id=submission_id, fresh=True, pipeline_id=None) if submission_id is not None else None
            if stored is None:
                found = connection.execute(
                    select(CiSubmission.id, CiSubmission.pipeline_id)
                    .where(CiSubmission.issuer == new.issuer, CiSubmission.jti == new.jti)
                ).one()  # fmt: skip
                count = select(func.count()).where(CiSubmissionReader.submission_id == found.id)
                readers = connection.execute(count).scalar_one()
                stored = Stored(id=found.id, fresh=False, pipeline_id=found.pipeline_id, read_tokens_before=readers)
            if stored.read_token_stored:
                reader = {"submission_id": stored.id, "token_sha256": new.token_sha256, "created_at": now}
                connection.execute(insert(CiSubmissionReader), reader)
        return stored

    async def store(self, new: NewSubmission) -> Stored:
        return await run_in_threadpool(self._store, new)

    async def close(self) -> None:
        pass


def open_submission_log(store: Store) -> SubmissionLog:
    dialect = store.engine.dialect.name
    if dialect == "postgresql":
        return PostgresSubmissionLog(store.url)
    if dialect == "sqlite":
        return SqliteSubmissionLog(store.engine)
    raise ConfigError(f"database_url: {dialect} is not supported (PostgreSQL or SQLite)")
