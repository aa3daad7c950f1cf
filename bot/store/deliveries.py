"""Webhook deliveries stored once, in batches, on the hot path: one INSERT ... ON CONFLICT DO NOTHING, no ORM.

Once means once per delivery id and, for a delivery that carries one, once per body digest: a signed
body replayed under a new X-GitHub-Delivery conflicts on (source, body_digest) in the same statement,
so the replay check costs no round trip of its own."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol, cast

import orjson
import psycopg
from sqlalchemy import Engine, String, delete
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from bot.store.db import Store
from bot.store.models import Delivery, utcnow
from workers.errors import ConfigError

# One statement text whatever the batch size, so psycopg prepares it once. The rows go as one JSON
# text (orjson): psycopg's array dumpers, one per column, cost more than the rest of the insert.
# ON CONFLICT without a target: a row is skipped on either unique key, delivery id or body digest.
_PG_INSERT = (
    "INSERT INTO delivery (source, delivery_id, event, received_at, status, detail, body_digest) "
    "SELECT r.source, r.delivery_id, r.event, %s::timestamptz, r.status, r.detail, r.body_digest "
    "FROM json_to_recordset(%s::json) AS r(source text, delivery_id text, event text, status text, detail text, "
    "body_digest text) ON CONFLICT DO NOTHING RETURNING source, delivery_id"
)
# Rows that carry a digest are forge deliveries (other sources share the table and are never pruned).
_PG_PRUNE = "DELETE FROM delivery WHERE source = %s AND body_digest IS NOT NULL AND received_at < %s"
# The connection is pinged after being idle this long (PostgreSQL may have restarted meanwhile);
# a busy one is not: a round trip per batch is what this module exists to save.
PING_AFTER_IDLE_S = 10.0


def _length(column: str) -> int:
    length = cast(String, Delivery.__table__.c[column].type).length
    assert length is not None
    return length


DELIVERY_ID_MAX = _length("delivery_id")
EVENT_NAME_MAX = _length("event")
CONNECT_TIMEOUT_S = 5


class DeliveryRow(NamedTuple):
    source: str
    delivery_id: str
    event: str
    status: str
    detail: str
    body_digest: str | None = None  # sha256 hex of the raw body; None: deduplicated on the id alone


class DeliveryLog(Protocol):
    async def insert(self, rows: Sequence[DeliveryRow]) -> list[bool]:
        """Store the rows in one committed transaction; per row, False when it was stored before
        (a redelivery or a replay: the same (source, delivery_id) or (source, body_digest) stored
        already or earlier in `rows`)."""
        ...

    async def prune(self, source: str, received_before: datetime) -> int:
        """Forget `source`'s deliveries (and so their digests) received before the time; how many."""
        ...

    async def close(self) -> None: ...


def _first_seen(rows: Sequence[DeliveryRow]) -> list[bool]:
    seen: set[tuple[str, str, str]] = set()
    first = []
    for row in rows:
        keys = {("id", row.source, row.delivery_id)}
        if row.body_digest is not None:
            keys.add(("digest", row.source, row.body_digest))
        first.append(not keys & seen)
        seen |= keys
    return first


class PostgresDeliveryLog:
    """One autocommit psycopg connection on the event loop: no thread hop, no ORM, one round trip a batch.
    Callers write one batch at a time (bot.web.hooks batches); a second concurrent insert would wait."""

    def __init__(self, url: str) -> None:
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: psycopg.AsyncConnection | None = None
        self._used = 0.0

    async def insert(self, rows: Sequence[DeliveryRow]) -> list[bool]:
        first = _first_seen(rows)
        fresh = [row for row, is_first in zip(rows, first, strict=True) if is_first]
        records = orjson.dumps([row._asdict() for row in fresh]).decode()
        connection = await self._connect()
        try:
            cursor = await connection.execute(_PG_INSERT, (utcnow(), records))
            stored = {(source, delivery_id) for source, delivery_id in await cursor.fetchall()}
        except BaseException:
            # An error or a cancellation leaves the connection in an unknown state: never reuse it.
            self._connection = None
            await connection.close()
            raise
        self._used = time.monotonic()
        return [is_first and (row.source, row.delivery_id) in stored for row, is_first in zip(rows, first, strict=True)]

    async def prune(self, source: str, received_before: datetime) -> int:
        connection = await self._connect()
        try:
            cursor = await connection.execute(_PG_PRUNE, (source, received_before))
        except BaseException:
            self._connection = None
            await connection.close()
            raise
        self._used = time.monotonic()
        return cursor.rowcount

    async def _connect(self) -> psycopg.AsyncConnection:
        connection = self._connection
        if connection is not None and not connection.closed:
            if time.monotonic() - self._used < PING_AFTER_IDLE_S:
                return connection
            try:
                await connection.execute("SELECT 1")
                return connection
            except psycopg.Error:
                await connection.close()
        self._connection = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )
        return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class SqliteDeliveryLog:
    """SQLite (the embedded default): the same INSERT through the engine, in a thread (a commit waits for the disk)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # No conflict target: either unique key (delivery id, body digest) makes the row a duplicate.
        self.statement = sqlite.insert(Delivery).on_conflict_do_nothing().returning(Delivery.id)

    def _insert(self, rows: Sequence[DeliveryRow]) -> list[bool]:
        now = utcnow()
        with self.engine.begin() as connection:
            # One row at a time: SQLite's RETURNING does not say which row of a multi-row insert it reports.
            return [connection.execute(self.statement, {**row._asdict(), "received_at": now}).first() is not None
                    for row in rows]  # fmt: skip

    async def insert(self, rows: Sequence[DeliveryRow]) -> list[bool]:
        return await run_in_threadpool(self._insert, rows)

    def _prune(self, source: str, received_before: datetime) -> int:
        statement = delete(Delivery).where(Delivery.source == source, Delivery.body_digest.is_not(None),
                                           Delivery.received_at < received_before)  # fmt: skip
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount

    async def prune(self, source: str, received_before: datetime) -> int:
        return await run_in_threadpool(self._prune, source, received_before)

    async def close(self) -> None:
        pass


def open_delivery_log(store: Store) -> DeliveryLog:
    dialect = store.engine.dialect.name
    if dialect == "postgresql":
        return PostgresDeliveryLog(store.url)
    if dialect == "sqlite":
        return SqliteDeliveryLog(store.engine)
    raise ConfigError(f"database_url: {dialect} is not supported (PostgreSQL or SQLite)")
