"""Patchwork events poller: new series-completed and patch-delegated events of a project, each handed over once.

Patchwork has no webhooks; its events list is the feed. What it promises shapes the loop:

- dates are the server's naive local time (USE_TZ=False), so across a DST change they go back an hour,
  and a server clock a little off ours, or an event committed late, lands before the newest we saw;
- `since` is inclusive and the list is newest first, by date only.

So each poll asks from the cursor (the newest event date seen) minus an overlap of at least an hour
plus clock skew, reads every `Link: next` page to the end, and de-duplicates by event id against the
seen-event table. The cursor moves only after the last page was read and every event on it handled:
a poll stopped between pages (an error, a restart) leaves the cursor where it was, and the next poll
reads the same window again, skipping what it already handled.

Exactly once: an event is recorded seen in the same transaction as the handler's own records, so a
handled event is never handed over again, and an event whose transaction did not commit is. Events are
fetched and recorded in batches, one transaction a batch with a savepoint per event, so a handler's
error undoes only its own event's records and the batch's earlier events still commit. A
handler that does something outside that transaction (enqueues a task, posts to a forge) must be
idempotent per event id: a crash after its side effect and before the commit hands it the same event
again. Events go to handlers oldest first (by id: ids grow with time even where naive dates do not).

What a handler references outside the store (a series' mbox in the artifact store) is staged before its
transaction, on a thread of its own (`stage_series`): stored and on disk before any row names it. A
transaction that then does not commit leaves it unreferenced, which must be harmless (content-addressed:
the event handed over again finds the same blob).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.forges.patchwork.client import PatchworkClient, PatchworkError
from bot.store.db import Store
from bot.store.models import PatchworkCursor, PatchworkSeenEvent, utcnow
from bot.store.pending import dropped_on_error, flush_pending

log = logging.getLogger(__name__)

SERIES_COMPLETED = "series-completed"
PATCH_DELEGATED = "patch-delegated"
DST_SHIFT_S = 3600.0  # the most a DST change moves naive server dates back


@dataclass(frozen=True)
class PatchworkEvent:
    """One event from GET /api/events/, with the configured project it was polled for."""

    id: int
    category: str
    project: str  # the project's link name, as configured
    date: str  # naive server-local time, as Patchwork wrote it
    actor: dict[str, Any] | None  # who caused it (for patch-delegated: who delegated)
    payload: dict[str, Any]


# An event with its outcome ("handled", or "skipped: why") and what was fetched for it (None: skipped).
Fetched = tuple[PatchworkEvent, str, tuple[Any, ...] | None]
# A batch's events fetched, and the error that stopped the poll before the rest (None: all fetched).
FetchedBatch = tuple[list[Fetched], Exception | None]
FETCH_AHEAD = 2  # batches fetched or staged while one is recorded


class SeriesHandler(Protocol):
    def __call__(self, session: Session, event: PatchworkEvent, series: dict[str, Any], mbox: bytes) -> None:
        """Record what the series starts (in `session`: committed with the event's seen mark).
        Idempotent per `event.id`: after a crash before the commit, the same event comes again."""
        ...


class DelegationHandler(Protocol):
    def __call__(self, session: Session, event: PatchworkEvent, patch: dict[str, Any],
                 delegate: dict[str, Any] | None) -> None:  # fmt: skip
        """Record the patch's new delegate (None: undelegated); `event.actor` is who delegated.
        Idempotent per `event.id`, as for SeriesHandler."""
        ...


# On the fetching thread, before the transaction: the batch's mboxes (of the series to be handled), stored
# where the handler will reference them, and durable, so that the transaction need not wait for a disk.
# What a rolled-back transaction leaves staged must be harmless (content-addressed: found again).
SeriesStager = Callable[[Sequence[bytes]], None]


@dataclass(frozen=True)
class PollSettings:
    """How far back each poll looks, and how it pages."""

    clock_skew_s: float = 300.0  # our idea of how far the server's clock, or a late commit, may lag
    per_page: int = 100  # Patchwork allows up to 250
    keep_seen_days: float = 7.0  # seen marks older than this are dropped (far past any overlap)
    batch: int = 50  # events fetched, then recorded in one transaction (a crash refetches at most these)

    @property
    def overlap(self) -> timedelta:
        return timedelta(seconds=DST_SHIFT_S + self.clock_skew_s)


@dataclass
class PollReport:
    """What one poll of one project did, per category summed."""

    pages: int = 0
    events: int = 0  # listed, the overlap's repeats included
    handled: int = 0
    already_seen: int = 0
    skipped: int = 0  # gone from Patchwork or refused by the client (too large, ...): recorded, not handled


def _naive(date: str) -> datetime:
    return datetime.fromisoformat(date).replace(tzinfo=None)


class PatchworkPoller:
    """Polls one Patchwork server for configured projects; `server` keys its cursors and seen marks."""

    def __init__(self, store: Store, client: PatchworkClient, *, on_series: SeriesHandler,
                 on_delegated: DelegationHandler, settings: PollSettings | None = None,
                 categories: Sequence[str] = (SERIES_COMPLETED, PATCH_DELEGATED),
                 stage_series: SeriesStager | None = None) -> None:  # fmt: skip
        self.store, self.client = store, client
        self.stage_series = stage_series
        self.server = client.url
        self.on_series, self.on_delegated = on_series, on_delegated
        self.settings = settings or PollSettings()
        self.categories = tuple(categories)

    def poll(self, project: str) -> PollReport:
        """Read every new event of the project's categories and hand each to its handler."""
        report = PollReport()
        for category in self.categories:
            self.poll_category(project, category, report)
        return report

    def poll_category(self, project: str, category: str, report: PollReport | None = None) -> PollReport:
        report = report if report is not None else PollReport()
        cursor = self._cursor(project, category) or self._newest_date(project, category)
        if cursor is None:
            return report  # no event of this category yet: nothing to start from
        since = (_naive(cursor) - self.settings.overlap).isoformat(timespec="microseconds")
        # Only what handlers need is kept of each listed event (not its project's object, repeated in
        # every event): a backlog is held whole until its last page is read.
        listed: dict[int, PatchworkEvent] = {}
        newest = cursor
        for page in self.client.event_pages(project=project, category=category, since=since,
                                            per_page=self.settings.per_page):  # fmt: skip
            report.pages += 1
            for raw in page.events:
                listed[raw["id"]] = PatchworkEvent(raw["id"], category, project, raw["date"], raw.get("actor"),
                                                   raw["payload"])  # fmt: skip
                if _naive(raw["date"]) > _naive(newest):
                    newest = raw["date"]
        report.events += len(listed)
        # The last page is read: now hand over, oldest first, and only then move the cursor.
        events = [listed[event_id] for event_id in sorted(listed)]
        with self.store.session() as session:
            seen = self._seen_among(session, [event.id for event in events])
        report.already_seen += len(seen)
        fresh = [event for event in events if event.id not in seen]
        size = max(1, self.settings.batch)
        self._deliver([fresh[start : start + size] for start in range(0, len(fresh), size)], report)
        self._save_cursor(project, category, newest)
        self._forget_old_marks(project, category)
        return report

    # ---- batches of events ---------------------------------------------------------------------------------

    def _deliver(self, batches: Sequence[Sequence[PatchworkEvent]], report: PollReport) -> None:
        """Each batch's objects are fetched (network first, outside any transaction), its mboxes staged,
        then it is recorded in one transaction with a savepoint per event: one commit a batch, not one an
        event, and still each event all or nothing. Three threads make a pipeline, so that the network's
        time, the disk's and the store's overlap: while this one records a batch, a second stages the next
        one's mboxes and a third fetches the ones after it (FETCH_AHEAD batches in all, so it never
        waits); the poller's requests still go out one at a time, in order."""
        if not batches:
            return
        cancel = threading.Event()
        fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchwork-fetch")
        stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchwork-stage")
        with fetcher, stager:
            ahead: deque[Future[FetchedBatch]] = deque()

            def fetch(batch: Sequence[PatchworkEvent]) -> None:
                ahead.append(stager.submit(self._staged, fetcher.submit(self._fetch_objects, batch, cancel), cancel))

            try:
                for batch in batches[:FETCH_AHEAD]:
                    fetch(batch)
                for index in range(len(batches)):
                    fetched, stop = ahead.popleft().result()
                    if stop is None and index + FETCH_AHEAD < len(batches):
                        fetch(batches[index + FETCH_AHEAD])
                    self._mark(fetched, report)
                    if stop is not None:
                        raise stop  # after recording what was fetched before it; the cursor stays
            finally:
                cancel.set()  # a batch being fetched for nothing stops at its next event

    def _staged(self, fetching: Future[FetchedBatch], cancel: threading.Event) -> FetchedBatch:
        """The batch's objects once fetched, its series' mboxes staged. A batch whose mboxes cannot be
        staged is not recorded at all: the poll stops there, and the batches after it are not fetched."""
        fetched, stop = fetching.result()
        try:
            self._stage(fetched)
        except Exception as exc:
            cancel.set()
            return [], exc
        return fetched, stop

    def _fetch_objects(self, batch: Sequence[PatchworkEvent], cancel: threading.Event) -> FetchedBatch:
        """The batch's objects, up to the first error that stops the poll (a transient one: the next poll
        comes back to the event), which is returned with them; the batches after it are not fetched."""
        fetched: list[Fetched] = []
        for event in batch:
            if cancel.is_set():
                break
            try:
                fetched.append((event, "handled", self._fetch(event)))
            except PatchworkError as exc:
                if not exc.transient:
                    log.warning("patchwork %s event %d of %s skipped: %s", event.category, event.id,
                                event.project, exc)  # fmt: skip
                    fetched.append((event, f"skipped: {exc}"[:2000], None))
                    continue
                cancel.set()
                return fetched, exc
            except Exception as exc:  # a bug: the events fetched before it are still recorded, then it goes on
                cancel.set()
                return fetched, exc
        return fetched, None

    def _stage(self, fetched: Sequence[Fetched]) -> None:
        mboxes = [objects[1] for event, _, objects in fetched
                  if objects is not None and event.category == SERIES_COMPLETED]  # fmt: skip
        if self.stage_series is not None and mboxes:
            self.stage_series(mboxes)

    def _fetch(self, event: PatchworkEvent) -> tuple[Any, ...]:
        if event.category == SERIES_COMPLETED:
            series = self.client.series(int(_ref(event, "series")["id"]))
            self._check_project(event, series)
            return (series, self.client.mbox(str(series["mbox"])))
        if event.category == PATCH_DELEGATED:
            patch = self.client.patch(int(_ref(event, "patch")["id"]))
            self._check_project(event, patch)
            delegate = event.payload.get("current_delegate")
            return (patch, delegate if isinstance(delegate, dict) else None)
        raise PatchworkError("events", None, f"category {event.category!r} has no handler", transient=False)

    def _check_project(self, event: PatchworkEvent, found: dict[str, Any]) -> None:
        # The events were filtered by project; what they point at must be of that project too, or a
        # series of another project (another tree's rules, another maintainer set) would run as this one.
        listed = found.get("project")
        project: dict[str, Any] = listed if isinstance(listed, dict) else {}
        if project.get("link_name") != event.project:
            raise PatchworkError(event.category, None, f"{found.get('url')} belongs to project "
                                 f"{project.get('link_name')!r}, not {event.project!r}", transient=False)  # fmt: skip

    def _mark(self, fetched: Sequence[Fetched], report: PollReport) -> None:
        """Each event's handler records and its seen mark in a savepoint of one transaction. A handler that
        raises loses only its own event's records: the events before it commit, then the error goes on.

        The batch's rows are inserted at its end, many to a statement (bot/store/pending.py), the seen
        marks too; only if that fails (a concurrent poll committed one of the marks meanwhile) is the
        batch recorded again, its rows inserted event by event inside each savepoint, so that the
        event another poll has handled is told apart and the others still commit."""
        try:
            self._mark_batch(fetched, report, each=False)
        except IntegrityError:
            log.info("patchwork: a batch of %d events met a concurrent poll's marks: recorded event by event",
                     len(fetched))  # fmt: skip
            self._mark_batch(fetched, report, each=True)

    def _mark_batch(self, fetched: Sequence[Fetched], report: PollReport, *, each: bool) -> None:
        failure: Exception | None = None
        tally = PollReport()  # added to the report only once the transaction has committed
        with self.store.writing() as session:
            seen = self._seen_among(session, [event.id for event, _, _ in fetched])  # a concurrent poll's
            marks: list[dict[str, Any]] = []
            for event, outcome, objects in fetched:
                if event.id in seen:
                    tally.already_seen += 1
                    continue
                try:
                    marks.append(self._record_one(session, event, outcome, objects, each=each))
                except IntegrityError as exc:
                    if not each:
                        raise  # the whole batch rolls back and is recorded event by event (_mark)
                    # A concurrent poll committed the same event's mark: its handler's records stand, ours
                    # rolled back with the savepoint.
                    if self._seen_among(session, [event.id]):
                        tally.already_seen += 1
                        continue
                    failure = exc
                    break
                except Exception as exc:  # stops the poll once the batch's earlier events are committed
                    failure = exc
                    break
                if objects is None:
                    tally.skipped += 1
                else:
                    tally.handled += 1
            if not each:
                self._insert_marks(session, marks)
        report.already_seen += tally.already_seen
        report.skipped += tally.skipped
        report.handled += tally.handled
        if failure is not None:
            raise failure

    def _record_one(self, session: Session, event: PatchworkEvent, outcome: str, objects: tuple[Any, ...] | None,
                    *, each: bool) -> dict[str, Any]:  # fmt: skip
        """The event's records in a savepoint of their own; its seen mark, inserted here if `each`, else
        returned to be inserted with the batch's."""
        with session.begin_nested(), dropped_on_error(session):
            mark = self._record(session, event, outcome, objects)
            if each:
                self._insert_marks(session, [mark])
        return mark

    def _record(self, session: Session, event: PatchworkEvent, outcome: str,
                objects: tuple[Any, ...] | None) -> dict[str, Any]:  # fmt: skip
        """The handler's records (its ORM objects flushed here, in its savepoint: a conflict fails this
        event only), and the event's seen mark to insert."""
        if objects is not None and event.category == SERIES_COMPLETED:
            self.on_series(session, event, objects[0], objects[1])
        elif objects is not None:
            self.on_delegated(session, event, objects[0], objects[1])
        session.flush()
        return {"server": self.server, "event_id": event.id, "project": event.project, "category": event.category,
                "event_date": event.date[:40], "outcome": outcome}  # fmt: skip

    def _insert_marks(self, session: Session, marks: Sequence[dict[str, Any]]) -> None:
        """The handlers' pending rows, then the seen marks: plain inserts, a mark already there fails them."""
        flush_pending(session)
        if marks:
            session.connection().execute(insert(PatchworkSeenEvent), list(marks))

    # ---- the store -----------------------------------------------------------------------------------------

    def _seen_among(self, session: Session, event_ids: Sequence[int]) -> set[int]:
        """Which of these events have a seen mark (asked in chunks: one query per thousand, not per event)."""
        seen: set[int] = set()
        for start in range(0, len(event_ids), 1000):
            chunk = event_ids[start : start + 1000]
            seen.update(session.scalars(select(PatchworkSeenEvent.event_id).where(
                PatchworkSeenEvent.server == self.server, PatchworkSeenEvent.event_id.in_(chunk))))  # fmt: skip
        return seen

    def _cursor(self, project: str, category: str) -> str | None:
        with self.store.session() as session:
            row = self._cursor_row(session, project, category)
            return row.since if row is not None else None

    def _cursor_row(self, session: Session, project: str, category: str) -> PatchworkCursor | None:
        return session.scalar(select(PatchworkCursor).where(
            PatchworkCursor.server == self.server, PatchworkCursor.project == project,
            PatchworkCursor.category == category))  # fmt: skip

    def _save_cursor(self, project: str, category: str, since: str) -> None:
        with self.store.session() as session:
            row = self._cursor_row(session, project, category)
            if row is None:
                session.add(PatchworkCursor(server=self.server, project=project, category=category, since=since))
            elif _naive(since) > _naive(row.since):  # never backwards, whatever a slower concurrent poll read
                row.since, row.updated_at = since, utcnow()

    def _newest_date(self, project: str, category: str) -> str | None:
        """A first poll starts from the newest event there is (minus the overlap), not from all history."""
        first = next(iter(self.client.event_pages(project=project, category=category, per_page=1)), None)
        return first.events[0]["date"] if first is not None and first.events else None

    def _forget_old_marks(self, project: str, category: str) -> None:
        cutoff = utcnow() - timedelta(days=self.settings.keep_seen_days)
        with self.store.session() as session:
            session.execute(delete(PatchworkSeenEvent).where(
                PatchworkSeenEvent.server == self.server, PatchworkSeenEvent.project == project,
                PatchworkSeenEvent.category == category, PatchworkSeenEvent.seen_at < cutoff))  # fmt: skip


def _ref(event: PatchworkEvent, key: str) -> dict[str, Any]:
    ref = event.payload.get(key)
    if not isinstance(ref, dict) or not isinstance(ref.get("id"), int):
        raise PatchworkError(event.category, None, f"event {event.id} has no {key} id", transient=False)
    return ref
