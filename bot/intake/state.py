"""A change's state as core.decide reads it, from the store."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.decide import ChangeState
from bot.core.events import ChangeEvent, as_utc
from bot.core.trust import Approval as CoreApproval
from bot.store.models import Change, Pipeline, Revision
from bot.store.once import OnceKeys


def find_change(session: Session, source: str, external_id: str) -> Change | None:
    return session.scalar(select(Change).where(Change.source == source, Change.external_id == external_id))


def change_state(session: Session, change: Change | None, author: str, author_trusted: bool, head_sha: str,
                 *, closed: bool | None = None, once: OnceKeys | None = None) -> ChangeState:  # fmt: skip
    """What the store knows of `change` with `head_sha` as its head. With `once` (a retried event), the
    pipelines this event's first attempt started are not counted as running ones to supersede."""
    if change is None:
        return ChangeState(author=author, author_trusted=author_trusted, head_sha=head_sha, closed=bool(closed))
    approvals = tuple(CoreApproval(a.sha, a.approver, a.hardware) for a in change.approvals)
    active = session.scalars(
        select(Pipeline.id).join(Revision).where(Revision.change_id == change.id, Pipeline.state != "done")
    ).all()
    if once is not None:
        own = {int(p) for p in once.outcomes(session, "start")}
        active = [p for p in active if p not in own]
    return ChangeState(
        author=author, author_trusted=author_trusted, head_sha=head_sha, approvals=approvals,
        active_pipelines=tuple(active), closed=change.state == "closed" if closed is None else closed,
        head_seen_at=change.head_seen_at if change.head_sha == head_sha else None,
    )  # fmt: skip


def is_stale(change: Change, event: ChangeEvent) -> bool:
    """A delivery that arrives after a newer one (forges do not order them, and a resync may have heard
    the newer head first) must not bring back an older head."""
    if change.head_sha in (None, event.head_sha) or change.head_seen_at is None or event.updated_at is None:
        return False
    # To the second: forges stamp events to the second, and a head labgate stamped itself (no forge
    # time given) must not make a forge's event of the same second look older.
    return as_utc(event.updated_at).replace(microsecond=0) < as_utc(change.head_seen_at).replace(microsecond=0)
