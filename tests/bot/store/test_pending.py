"""Rows held back to the end of a transaction (bot/store/pending.py): inserted at the commit, a conflicting one
left as it is, forgotten on a rollback, and those of a failed block forgotten while the others stay."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.store.db import Store, migrate
from bot.store.models import Delivery
from bot.store.pending import dropped_on_error, flush_pending, insert_later, pending_rows


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'labgate.sqlite3'}"
    migrate(url)
    return Store(url)


def row(delivery_id: str, detail: str) -> dict[str, str]:
    return {"source": "test", "delivery_id": delivery_id, "event": "e", "detail": detail}


def details(store: Store) -> dict[str, str]:
    with store.session() as session:
        found = session.execute(select(Delivery.delivery_id, Delivery.detail).where(Delivery.source == "test"))
        return {delivery_id: detail for delivery_id, detail in found}


def test_pending_rows_go_in_at_the_commit_and_a_conflicting_one_keeps_the_first(store: Store) -> None:
    with store.session() as session:
        insert_later(session, Delivery, row("a", "first"))
        assert details(store) == {}  # not before the commit
    with store.session() as session:
        insert_later(session, Delivery, row("a", "second"))  # a repeat: left as it is, no error
        insert_later(session, Delivery, row("b", "first"))
    assert details(store) == {"a": "first", "b": "first"}
    with store.session() as session:
        assert session.scalar(select(Delivery.status).where(Delivery.delivery_id == "b")) == "accepted"  # defaults


def test_a_rollback_forgets_the_pending_rows(store: Store) -> None:
    with pytest.raises(RuntimeError), store.session() as session:
        insert_later(session, Delivery, row("a", "x"))
        raise RuntimeError("the transaction fails")
    assert details(store) == {}


def test_a_failed_block_forgets_only_its_own_rows(store: Store) -> None:
    with store.session() as session:
        insert_later(session, Delivery, row("before", "x"))
        with pytest.raises(RuntimeError), session.begin_nested(), dropped_on_error(session):
            insert_later(session, Delivery, row("inside", "x"))
            raise RuntimeError("this event's handler fails")
        assert pending_rows(session) == 1
        with session.begin_nested(), dropped_on_error(session):
            insert_later(session, Delivery, row("after", "x"))
            flush_pending(session)  # inside the savepoint: both go in now
        assert pending_rows(session) == 0
    assert set(details(store)) == {"before", "after"}
