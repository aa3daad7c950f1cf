"""Rows a transaction inserts at its end, many to a statement, each one that conflicts with a row already
there left as it is (INSERT ... ON CONFLICT DO NOTHING).

For records that are idempotent by a unique key (a delivery, a series' first record): instead of a
select and then an insert per record, one statement per table for a whole transaction. `Store.session()`
inserts what is pending before it commits and forgets it when it rolls back; a caller that works in
savepoints calls `flush_pending` / `discard_pending` itself where a savepoint ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Insert, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.store.models import Base

PENDING = "labgate.pending_inserts"  # the key in Session.info


def insert_later(session: Session, model: type[Base], row: dict[str, Any]) -> None:
    """Insert `row` into the model's table when the session's pending rows are flushed, unless it conflicts."""
    pending: dict[Table, list[dict[str, Any]]] = session.info.setdefault(PENDING, {})
    pending.setdefault(cast(Table, model.__table__), []).append(row)


def pending_rows(session: Session) -> int:
    return sum(len(rows) for rows in session.info.get(PENDING, {}).values())


def flush_pending(session: Session) -> None:
    """Insert every pending row now, in the session's transaction: one executemany per table."""
    pending: dict[Table, list[dict[str, Any]]] = session.info.pop(PENDING, {})
    if not pending:
        return
    connection = session.connection()
    for table, rows in pending.items():
        connection.execute(_ignoring_conflicts(table, connection.dialect.name), rows)


def discard_pending(session: Session) -> None:
    """Forget the pending rows (their transaction or savepoint rolled back)."""
    session.info.pop(PENDING, None)


def _ignoring_conflicts(table: Table, dialect: str) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no INSERT ... ON CONFLICT DO NOTHING for {dialect}")


@contextmanager
def dropped_on_error(session: Session) -> Iterator[None]:
    """Rows made pending inside the block are forgotten if it raises (as the savepoint around it is
    rolled back); those pending from before it stay."""
    pending: dict[Table, list[dict[str, Any]]] = session.info.setdefault(PENDING, {})
    before = {table: len(rows) for table, rows in pending.items()}
    try:
        yield
    except BaseException:
        for table in list(pending):
            del pending[table][before.get(table, 0) :]
        raise
