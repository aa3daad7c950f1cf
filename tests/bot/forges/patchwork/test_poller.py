"""PatchworkPoller against FakePatchwork and a real store: every event handed over once, across stops between
pages, restarts, a DST change of the server's clock, events arriving mid-poll, and the inclusive `since`."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.forges.patchwork.client import PatchworkClient, PatchworkError
from bot.forges.patchwork.poller import PatchworkEvent, PatchworkPoller, PollSettings
from bot.store.db import Store, migrate
from bot.store.models import Delivery, PatchworkSeenEvent
from bot.store.once import record_once
from tests.bot.forges.patchwork.conftest import PROJECT
from tests.fakes.patchwork_api import FakePatchwork


@dataclass
class Intake:
    """Stands where labgate's intake will: records each handled event in the poll's own transaction."""

    series: list[tuple[int, str, bytes]] = field(default_factory=list)  # (event id, series name, mbox)
    delegations: list[tuple[int, int, str | None, str | None]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)  # series names whose handling crashes after recording
    # series name -> the event whose seen mark its handler writes too, as a concurrent poll would have
    marks_too: dict[str, int] = field(default_factory=dict)
    staged: list[tuple[str, int, list[bytes]]] = field(default_factory=list)  # (thread, marks then, mboxes)
    store: Store | None = None  # set: the poller stages mboxes through `stage`
    fail_staging: set[str] = field(default_factory=set)  # series names whose staging fails, once
    server: str = ""

    def on_series(self, session: Session, event: PatchworkEvent, series: dict[str, Any], mbox: bytes) -> None:
        record_once(session, f"patchwork-event:{event.id}", series["name"])
        if series["name"] in self.marks_too:
            session.add(PatchworkSeenEvent(server=self.server,
                                           event_id=self.marks_too[series["name"]], project=event.project,
                                           category=event.category, event_date=event.date))  # fmt: skip
        if series["name"] in self.fail_on:
            self.fail_on.discard(series["name"])
            raise RuntimeError(f"crash while handling {series['name']}")
        self.series.append((event.id, series["name"], mbox))

    def on_delegated(self, session: Session, event: PatchworkEvent, patch: dict[str, Any],
                     delegate: dict[str, Any] | None) -> None:  # fmt: skip
        record_once(session, f"patchwork-event:{event.id}", str(patch["id"]))
        actor = event.actor["username"] if event.actor else None
        self.delegations.append((event.id, patch["id"], delegate["username"] if delegate else None, actor))

    def stage(self, mboxes: Sequence[bytes]) -> None:
        assert self.store is not None
        with self.store.session() as session:
            marks = session.scalar(select(func.count()).select_from(PatchworkSeenEvent)) or 0
        self.staged.append((threading.current_thread().name, marks, list(mboxes)))
        for name in sorted(self.fail_staging):
            if any(name.encode() in mbox for mbox in mboxes):
                self.fail_staging.discard(name)
                raise OSError("no space left on device")

    def names(self) -> list[str]:
        return [name for _, name, _ in self.series]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'labgate.sqlite3'}"
    migrate(url)
    return Store(url)


def poller(pw: FakePatchwork, store: Store, intake: Intake, **settings: Any) -> PatchworkPoller:
    """A new poller, as after a restart: nothing carried over but the store."""
    return PatchworkPoller(store, PatchworkClient(pw.base_url), on_series=intake.on_series,
                           on_delegated=intake.on_delegated, settings=PollSettings(**settings),
                           stage_series=intake.stage if intake.store is not None else None)  # fmt: skip


def recorded_once(store: Store) -> Counter[str]:
    with store.session() as session:
        return Counter(session.scalars(select(Delivery.delivery_id).where(Delivery.source == "once")))


def test_series_and_delegations_are_handed_over_with_their_mbox(pw: FakePatchwork, store: Store) -> None:
    intake = Intake()
    pw.add_series(PROJECT, "first", ["a", "b"])
    report = poller(pw, store, intake).poll(PROJECT)
    assert intake.names() == ["first"] and b"Subject: [1/2] a" in intake.series[0][2]
    assert report.handled == 1
    pw.add_user("maint")
    pw.add_maintainer(PROJECT, "maint")
    second = pw.add_series(PROJECT, "second", ["c"])
    pw.delegate(pw.series_patches(second)[0], "maint", by="maint")
    poller(pw, store, intake).poll(PROJECT)
    assert intake.names() == ["first", "second"]
    assert intake.delegations == [(intake.delegations[0][0], pw.series_patches(second)[0], "maint", "maint")]


def test_stopped_between_pages_then_restarted_hands_each_event_over_once(pw: FakePatchwork, store: Store) -> None:
    intake = Intake()
    pw.add_series(PROJECT, "before", ["x"])
    poller(pw, store, intake, per_page=2).poll(PROJECT)  # the cursor now exists
    for n in range(7):
        pw.add_series(PROJECT, f"s{n}", ["p"])
    pw.fail_next("GET", "/api/events/", 503, skip=1)  # page 2 of the next listing fails
    with pytest.raises(PatchworkError) as raised:
        poller(pw, store, intake, per_page=2).poll(PROJECT)
    assert raised.value.status == 503 and raised.value.transient
    assert intake.names() == ["before"]  # nothing handed over from a listing not read to its end
    report = poller(pw, store, intake, per_page=2).poll(PROJECT)
    assert intake.names() == ["before", *[f"s{n}" for n in range(7)]]  # oldest first
    assert report.pages >= 4 and report.already_seen == 1
    assert set(recorded_once(store).values()) == {1}


def test_a_crash_while_handling_redelivers_only_what_did_not_commit(pw: FakePatchwork, store: Store) -> None:
    intake = Intake(fail_on={"s2"})
    for n in range(5):
        pw.add_series(PROJECT, f"s{n}", ["p"])
    with pytest.raises(RuntimeError, match="s2"):
        poller(pw, store, intake, per_page=2).poll(PROJECT)
    assert intake.names() == ["s0", "s1"]
    poller(pw, store, intake, per_page=2).poll(PROJECT)
    assert intake.names() == ["s0", "s1", "s2", "s3", "s4"]
    assert set(recorded_once(store).values()) == {1}  # s2's first record rolled back with its crash


def test_a_fetch_failing_in_a_later_batch_keeps_the_earlier_batches(pw: FakePatchwork, store: Store) -> None:
    intake = Intake()
    sids = [pw.add_series(PROJECT, f"s{n}", ["p"]) for n in range(5)]
    pw.fail_next("GET", rf"/api/series/{sids[2]}/", 503)  # batch 2's first series, fetched while batch 1 records
    with pytest.raises(PatchworkError):
        poller(pw, store, intake, batch=2).poll(PROJECT)
    assert intake.names() == ["s0", "s1"]
    report = poller(pw, store, intake, batch=2).poll(PROJECT)
    assert intake.names() == [f"s{n}" for n in range(5)] and (report.handled, report.already_seen) == (3, 2)


def test_dst_change_of_the_servers_clock_loses_nothing(store: Store) -> None:
    # 01:30 BST; 40 minutes later it is 01:10 GMT: the naive dates go back 20 minutes.
    with FakePatchwork(timezone="Europe/London", now=datetime(2026, 10, 25, 0, 30, tzinfo=UTC)) as pw:
        pw.add_project(PROJECT)
        intake = Intake()
        pw.add_series(PROJECT, "summer time", ["a"])
        poller(pw, store, intake, clock_skew_s=0).poll(PROJECT)
        cursor = pw.events()[0]["date"]
        pw.advance(40 * 60)
        pw.add_series(PROJECT, "winter time", ["b"])
        assert pw.events()[-1]["date"] < cursor  # the newer series has the older naive date
        with PatchworkClient(pw.base_url) as client:  # what asking from the cursor alone would miss
            pages = client.event_pages(project=PROJECT, category="series-completed", since=cursor)
            assert [e["payload"]["series"]["name"] for p in pages for e in p.events] == ["summer time"]
        poller(pw, store, intake, clock_skew_s=0).poll(PROJECT)
        pw.advance(3 * 3600)
        pw.add_series(PROJECT, "later", ["c"])
        poller(pw, store, intake, clock_skew_s=0).poll(PROJECT)
        assert intake.names() == ["summer time", "winter time", "later"]


def test_events_arriving_while_polling_are_all_handed_over_once(pw: FakePatchwork, store: Store) -> None:
    intake = Intake()
    pw.add_series(PROJECT, "seed", ["x"])
    poller(pw, store, intake, per_page=2).poll(PROJECT)
    for n in range(5):
        pw.add_series(PROJECT, f"s{n}", ["p"])

    def arrive(fake: FakePatchwork) -> None:  # lands at the top of page 1 once it was read: page 2 repeats it
        for name in ("mid-1", "mid-2", "mid-3"):
            fake.add_series(PROJECT, name, ["q"])

    pw.before_next("GET", "/api/events/", arrive, skip=1)
    during = poller(pw, store, intake, per_page=2).poll(PROJECT)
    # Pages shifted under the poll: repeats, never gaps. Every event there before it is handed over now;
    # of those that arrived, what page 2 onwards showed too (mid-1), the rest next time.
    assert intake.names()[:7] == ["seed", "s0", "s1", "s2", "s3", "s4", "mid-1"] and during.pages == 5
    poller(pw, store, intake, per_page=2).poll(PROJECT)
    assert sorted(intake.names()) == sorted(["seed", *[f"s{n}" for n in range(5)], "mid-1", "mid-2", "mid-3"])
    assert Counter(intake.names()).most_common(1)[0][1] == 1


def test_overlap_with_inclusive_since_repeats_and_equal_dates(store: Store) -> None:
    with FakePatchwork(tick_s=0) as pw:  # every event at the same naive date: only ids tell them apart
        pw.add_project(PROJECT)
        intake = Intake()
        pw.add_series(PROJECT, "one", ["a"])
        poller(pw, store, intake).poll(PROJECT)
        pw.add_series(PROJECT, "two", ["b"])  # same date as the cursor
        report = poller(pw, store, intake).poll(PROJECT)
        assert intake.names() == ["one", "two"] and report.already_seen == 1 and report.handled == 1
        again = poller(pw, store, intake).poll(PROJECT)  # the overlap lists both again; nothing handed over
        assert (again.events, again.handled, again.already_seen) == (2, 0, 2)
        since = {r.query.get("since") for r in pw.requests_to("GET", "/api/events/")} - {None}
        assert since == {"2026-11-22T18:40:00.000000"}  # the cursor 19:45:00 minus 1 h 5 min


def test_attack_a_series_of_another_project_is_not_handled_as_this_one(pw: FakePatchwork, store: Store) -> None:
    pw.add_project("other")
    intake = Intake()
    sid = pw.add_series(PROJECT, "mine", ["a"])
    with PatchworkClient(pw.base_url) as client:
        foreign = client.series(sid)
    foreign["project"] = {**foreign["project"], "link_name": "other"}
    pw.fail_next("GET", rf"/api/series/{sid}/", 200, body=foreign)
    report = poller(pw, store, intake).poll(PROJECT)
    assert intake.names() == [] and report.skipped == 1
    with store.session() as session:
        outcome = session.scalar(select(PatchworkSeenEvent.outcome))
        assert outcome is not None and "belongs to project 'other'" in outcome
        assert session.scalar(select(func.count()).select_from(PatchworkSeenEvent)) == 1


def test_a_series_gone_from_patchwork_is_skipped_not_retried_forever(pw: FakePatchwork, store: Store) -> None:
    intake = Intake()
    sid = pw.add_series(PROJECT, "deleted", ["a"])
    pw.fail_next("GET", rf"/api/series/{sid}/", 404, body={"detail": "No Series matches the given query."})
    assert poller(pw, store, intake).poll(PROJECT).skipped == 1
    pw.add_series(PROJECT, "next", ["b"])
    poller(pw, store, intake).poll(PROJECT)
    assert intake.names() == ["next"]


def seen_events(store: Store) -> Counter[int]:
    with store.session() as session:
        return Counter(session.scalars(select(PatchworkSeenEvent.event_id)))


def test_a_mark_already_there_at_the_batchs_end_records_the_batch_again_event_by_event(
    pw: FakePatchwork, store: Store
) -> None:
    # s1's mark goes in with s0's records (as a concurrent poll's would): the batch's marks then fail
    # together, and the batch is recorded again, each event in its savepoint: s1 is found seen, the rest commit.
    for n in range(4):
        pw.add_series(PROJECT, f"s{n}", ["p"])
    events = sorted(e["id"] for e in pw.events() if e["category"] == "series-completed")
    intake = Intake(marks_too={"s0": events[1]}, server=pw.base_url.rstrip("/"))
    report = poller(pw, store, intake).poll(PROJECT)
    assert (report.handled, report.already_seen) == (3, 1)
    assert seen_events(store) == Counter(events)
    assert sorted(recorded_once(store)) == sorted(f"patchwork-event:{e}" for e in (events[0], *events[2:]))
    assert set(recorded_once(store).values()) == {1}


def test_mboxes_are_staged_on_a_thread_of_their_own_before_their_batchs_transaction(
    pw: FakePatchwork, store: Store
) -> None:
    intake = Intake(store=store)
    for n in range(5):
        pw.add_series(PROJECT, f"s{n}", ["p"])
    poller(pw, store, intake, batch=2).poll(PROJECT)
    assert [thread.startswith("patchwork-stage") for thread, _, _ in intake.staged] == [True, True, True]
    assert [len(mboxes) for _, _, mboxes in intake.staged] == [2, 2, 1]
    assert intake.staged[0][1] == 0  # staged before anything of the batch is recorded
    assert [mbox for _, _, mboxes in intake.staged for mbox in mboxes] == [mbox for _, _, mbox in intake.series]


def test_a_batch_whose_mboxes_cannot_be_staged_is_not_recorded_and_the_cursor_stays(
    pw: FakePatchwork, store: Store
) -> None:
    intake = Intake(store=store, fail_staging={"fail-to-stage"})
    for name in ("s0", "s1", "fail-to-stage", "s3"):
        pw.add_series(PROJECT, name, [name])
    with pytest.raises(OSError, match="no space"):
        poller(pw, store, intake, batch=2).poll(PROJECT)
    assert intake.names() == ["s0", "s1"]  # the first batch committed; nothing of the second
    pw.add_series(PROJECT, "s4", ["s4"])
    report = poller(pw, store, intake, batch=2).poll(PROJECT)  # the same window again, and what is new
    assert report.already_seen == 2 and intake.names() == ["s0", "s1", "fail-to-stage", "s3", "s4"]
