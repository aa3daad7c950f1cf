"""Side effects done once per key, for tasks that may run again.

A forge event's task is retried after a forge or database error, and Celery may deliver its
message twice (acks_late: a worker that dies mid-task leaves it for another). Whatever the first
attempt already did (a pipeline started, a comment posted) is recorded under a key made of the
delivery and the effect; the next attempt finds it and does not do it again. Keys live in the
delivery table (source "once"), whose unique (source, delivery_id) makes the record itself
exactly-once under concurrent attempts.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.store.models import Delivery

ONCE_SOURCE = "once"


class OnceKeys:
    """The keys of one delivery's side effects: `scope:kind:digest`, bounded in length whatever
    the forge put in its delivery id."""

    def __init__(self, source: str, delivery_id: str) -> None:
        self.scope = hashlib.sha256(f"{source}\0{delivery_id}".encode()).hexdigest()[:32]

    def key(self, kind: str, *parts: str) -> str:
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]
        return f"{self.scope}:{kind}:{digest}"

    def outcomes(self, session: Session, kind: str) -> list[str]:
        """The outcomes of every effect of `kind` done under this scope so far."""
        prefix = f"{self.scope}:{kind}:"
        return list(
            session.scalars(
                select(Delivery.detail).where(
                    Delivery.source == ONCE_SOURCE, Delivery.delivery_id.startswith(prefix, autoescape=True)
                )
            )
        )


def once_done(session: Session, key: str) -> str | None:
    """The recorded outcome of `key` (e.g. a pipeline id), or None if it was not done."""
    return session.scalar(
        select(Delivery.detail).where(Delivery.source == ONCE_SOURCE, Delivery.delivery_id == key)
    )


def record_once(session: Session, key: str, detail: str = "") -> None:
    """Record `key` in the caller's transaction: commit it with the effect it stands for, where
    that effect is in the store too (a second concurrent attempt then fails on the unique key)."""
    session.add(Delivery(**once_row(key, detail)))


def once_row(key: str, detail: str = "") -> dict[str, str]:
    """The delivery row that records `key` (for an insert that leaves an existing record as it is)."""
    return {"source": ONCE_SOURCE, "delivery_id": key, "event": key.split(":")[1], "detail": detail}


def update_once(session: Session, key: str, detail: str) -> None:
    """Change the recorded outcome of `key` (e.g. the id of the forge object it made, once known)."""
    row = session.scalar(select(Delivery).where(Delivery.source == ONCE_SOURCE, Delivery.delivery_id == key))
    if row is not None:
        row.detail = detail


def forget_once(session: Session, key: str) -> None:
    """Drop the record of `key`: the effect it claimed was not done after all, and may be tried again."""
    row = session.scalar(select(Delivery).where(Delivery.source == ONCE_SOURCE, Delivery.delivery_id == key))
    if row is not None:
        session.delete(row)
