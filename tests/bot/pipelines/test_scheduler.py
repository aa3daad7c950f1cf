"""The store-backed test queue through the real result path: windows, priorities, fairness, quotas,
back-pressure, the periodic top-up; and two fillers at once on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text, update

from bot.host.stores import open_runtime
from bot.host.timers import QUEUE_TOP_UP_TASK, periodic_tasks
from bot.pipelines import scheduler
from bot.pipelines.lifecycle import Outbox
from bot.pipelines.steering import cancel_pipelines
from bot.reporting.job_reports import job_report
from bot.reporting.pipeline_views import job_view
from bot.store.models import Job, utcnow
from tests.bot.pipelines.conftest import BIG, SMALL, Lab, lab_config
from workers.app import app, configure, lab_queue


def test_a_class_gets_only_its_window_and_each_result_sends_the_next(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({SMALL: 10, BIG: 3}))
    # small: capacity 2 + margin 1; big: 1 + 1. The rest are rows, not messages.
    assert len(lab.messages(SMALL)) == 3 and len(lab.messages(BIG)) == 2
    assert lab.states(SMALL) == {"queued": 3, "waiting": 7}
    sent = [spec.job_id for spec in lab.messages(SMALL)]
    for _ in range(10):
        spec = lab.take(SMALL)
        assert lab.in_flight(SMALL) <= 3 and len(lab.messages(SMALL)) <= 3
        lab.finish(spec)
        sent += [s.job_id for s in lab.messages(SMALL) if s.job_id not in sent]
    assert lab.states(SMALL) == {"done": 10}
    assert sent == sorted(sent)  # one submitter, one priority: oldest first
    assert len(set(sent)) == 10


def test_priorities_highest_first(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 2}, tree="filler"))  # fills big's window: the rest must wait
    order = {}
    for name, kind, trusted in [("bisection", "bisection", True), ("post-merge", "post-merge", True),
                                ("pre-merge", "pre-merge", False), ("trusted", "pre-merge", True),
                                ("health", "health-check", True)]:  # fmt: skip
        build = lab.pipeline({BIG: 1}, tree=name, kind=kind, trusted=trusted)
        lab.pass_build(build)
        order[build] = name
    dispatched = []
    while lab.messages(BIG):
        spec = lab.take(BIG)
        dispatched.append(spec.tree_name)
        lab.finish(spec)
    assert dispatched == ["filler", "filler", "health", "trusted", "pre-merge", "post-merge", "bisection"]


def test_a_storm_does_not_starve_a_lone_tree(lab: Lab) -> None:
    for _ in range(5):  # five changes of one tree, 8 jobs each
        lab.pass_build(lab.pipeline({SMALL: 8}, tree="storm", submitter="bot"))
    lab.pass_build(lab.pipeline({SMALL: 1}, tree="lone", submitter="carol"))
    taken = []
    while lab.messages(SMALL):
        spec = lab.take(SMALL)
        taken.append(spec.tree_name)
        lab.finish(spec)
    # The window (3) was full of the storm when the lone job came; it is the next one sent.
    assert taken.index("lone") == 3, taken
    assert len(taken) == 41


def test_two_submitters_of_one_tree_take_turns(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 6}, submitter="alice"))
    lab.pass_build(lab.pipeline({BIG: 6}, submitter="bob"))
    with lab.runtime.store.session() as session:
        waiting = session.scalars(select(Job).where(Job.state == "waiting").order_by(Job.fair_seq, Job.id)).all()
        owners = [job.pipeline.revision.change.submitter for job in waiting]
    # alice's first two went at once (the window of 2); then one each in turn.
    assert owners[:6] == ["bob", "alice", "bob", "alice", "bob", "alice"]


def test_a_submitter_under_quota_waits_and_its_report_says_why(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({SMALL: 3, BIG: 2}, source="ci", submitter="ci-bot"))
    # Room for 5 in the two windows; the CI job's submitter may have 2 in flight over all classes.
    assert lab.in_flight(SMALL) + lab.in_flight(BIG) == 2
    with lab.runtime.store.session() as session:
        held = session.scalars(select(Job).where(Job.state == "waiting").order_by(Job.id)).all()
        assert held and all(job.quota_key == "ci:ci-bot" for job in held)
        title = job_report(held[0], job_view(lab.runtime, held[0]), "").title
    assert "(quota: ci-bot has 2 test jobs queued or running, the most a submitter under quota may have)" in title
    spec = lab.take(BIG)
    lab.finish(spec)
    assert lab.in_flight(SMALL) + lab.in_flight(BIG) == 2  # one done, the next of the same submitter went


def test_device_minutes_a_day_hold_an_approved_author(lab: Lab) -> None:
    build = lab.pipeline({BIG: 2}, submitter="mallory", trusted=False)
    with lab.runtime.store.session() as session:
        # 70 minutes of boards used in the last day by the same approved author, on another change.
        job = session.scalars(select(Job).where(Job.depends_on_id == build)).first()
        assert job is not None
        earlier = Job(pipeline=job.pipeline, kind="test", name="earlier", queue=lab_queue(BIG), state="done",
                      result="pass", quota_key="github:mallory", started_at=utcnow() - timedelta(minutes=75),
                      finished_at=utcnow() - timedelta(minutes=5))  # fmt: skip
        session.add(earlier)
    lab.pass_build(build)
    assert lab.in_flight(BIG) == 0
    with lab.runtime.store.session() as session:
        held = session.scalars(select(Job).where(Job.state == "waiting")).first()
        assert held is not None
        assert held.error_message == "quota: mallory used 70 of 60 device-minutes in the last 24 hours"


def test_a_trusted_maintainer_has_no_quota(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({SMALL: 3, BIG: 2}, submitter="maint"))
    assert lab.in_flight(SMALL) + lab.in_flight(BIG) == 5


def test_over_its_waiting_limit_a_class_takes_no_new_job_and_says_so(open_lab: object) -> None:
    lab: Lab = open_lab(max_waiting_per_class=4)  # type: ignore[operator]
    lab.pass_build(lab.pipeline({BIG: 6}))  # 2 sent, 4 waiting: full
    lab.pass_build(lab.pipeline({BIG: 1}, tree="late"))
    lab.pass_build(lab.pipeline({BIG: 1}, tree="health", kind="health-check"))
    with lab.runtime.store.session() as session:
        late = session.scalars(select(Job).where(Job.name == "big t0", Job.state == "done")).one()
        assert (late.result, late.error_code) == ("skip", "back-pressure")
        assert late.error_message == "not run: big has 4 test jobs waiting, its limit is 4; retest when it has drained"
        assert late.pipeline.revision.change.tree.name == "late"
        health = session.scalars(select(Job).where(Job.priority == 50)).one()
        assert health.state == "waiting"  # health checks bypass back-pressure


def test_the_waiting_report_says_how_many_are_ahead_and_about_how_long(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 2}, tree="first"))
    with lab.runtime.store.session() as session:
        # Recent big jobs took 10 and 14 minutes: 12 on average.
        now = utcnow()
        for minutes in (10, 14):
            job = session.scalars(select(Job).where(Job.queue == lab_queue(BIG))).first()
            assert job is not None
            session.add(Job(pipeline=job.pipeline, kind="test", name=f"old {minutes}", queue=lab_queue(BIG),
                            state="done", result="pass", started_at=now - timedelta(minutes=minutes),
                            finished_at=now))  # fmt: skip
    lab.pass_build(lab.pipeline({BIG: 4}, tree="second"))
    with lab.runtime.store.session() as session:
        waiting = session.scalars(select(Job).where(Job.state == "waiting").order_by(Job.fair_seq, Job.id)).all()
        titles = [job_report(job, job_view(lab.runtime, job), "").title for job in waiting]
        verdicts = {job_report(job, job_view(lab.runtime, job), "").verdict for job in waiting}
    # Capacity 1: the running one is half done (6 min), then 12 min for each ahead.
    assert titles == ["waiting for big: 0 ahead, about 6 min", "waiting for big: 1 ahead, about 18 min",
                      "waiting for big: 2 ahead, about 30 min", "waiting for big: 3 ahead, about 42 min"]  # fmt: skip
    assert verdicts == {"pending"}


def test_an_offline_class_sends_only_health_checks_and_fills_when_back(lab: Lab) -> None:
    scheduler.set_offline(lab.runtime, BIG, "board rack power work")
    lab.pass_build(lab.pipeline({BIG: 2}))
    assert lab.in_flight(BIG) == 0
    with lab.runtime.store.session() as session:
        job = session.scalars(select(Job).where(Job.state == "waiting")).first()
        assert job is not None
        title = job_report(job, job_view(lab.runtime, job), "").title
    assert title.startswith("waiting for big: 0 ahead") and title.endswith("(offline: board rack power work)")
    lab.pass_build(lab.pipeline({BIG: 1}, tree="health", kind="health-check"))
    assert [spec.tree_name for spec in lab.messages(BIG)] == ["health"]
    scheduler.set_offline(lab.runtime, BIG, None)
    assert lab.in_flight(BIG) == 2 and len(lab.messages(BIG)) == 2


def test_the_periodic_top_up_sends_what_a_lost_wake_up_left_waiting(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({SMALL: 6}))
    with lab.runtime.store.session() as session:
        # Results recorded while the fill after them was lost (a crash between commit and wake-up).
        session.execute(update(Job).where(Job.queue == lab_queue(SMALL), Job.state == "queued")
                        .values(state="done", result="pass"))  # fmt: skip
    lab.broker.delete(lab_queue(SMALL))
    assert lab.in_flight(SMALL) == 0
    assert scheduler.top_up(lab.runtime) == ["lab.small: 3 dispatched"]
    assert lab.in_flight(SMALL) == 3 and len(lab.messages(SMALL)) == 3
    assert scheduler.top_up(lab.runtime) == []  # full: nothing more


def test_a_cancelled_pipeline_frees_its_slots(lab: Lab) -> None:
    first = lab.pipeline({BIG: 2})
    lab.pass_build(first)
    lab.pass_build(lab.pipeline({BIG: 2}, tree="other"))
    with lab.runtime.store.session() as session:
        pipeline_id = session.get(Job, first).pipeline_id  # type: ignore[union-attr]
    cancel_pipelines(lab.runtime, [pipeline_id], "superseded")
    assert {spec.tree_name for spec in lab.messages(BIG)[-2:]} == {"other"}
    assert lab.in_flight(BIG) == 2


def test_one_fill_sends_every_free_slot_of_every_class_it_is_given(lab: Lab) -> None:
    """Acknowledgements that arrive together are filled together: one call fills each freed window whole,
    each class in its own fair order."""
    lab.pass_build(lab.pipeline({SMALL: 8, BIG: 5}))
    first = {c: [spec.job_id for spec in lab.messages(c)] for c in (SMALL, BIG)}
    _results_lost(lab, (SMALL, BIG))
    lab.broker.delete(lab_queue(SMALL), lab_queue(BIG))
    sent: list[int] = []
    _fill(lab, False, sent, (SMALL, BIG, SMALL))
    assert sent == [3 + 2] and lab.in_flight(SMALL) == 3 and lab.in_flight(BIG) == 2
    for device_class in (SMALL, BIG):
        ids = [spec.job_id for spec in lab.messages(device_class)]
        with lab.runtime.store.session() as session:
            waiting = session.scalars(select(Job.id).where(Job.queue == lab_queue(device_class),
                                                           Job.state == "waiting")).all()  # fmt: skip
        # The next ones in the fair order (one submitter: oldest first), the rest still waiting behind them.
        assert ids == sorted(ids) and max(first[device_class]) < min(ids) and max(ids) < min(waiting)


@pytest.fixture
def pg_lab(postgres_url: str, tmp_path: Path, redis_db_url: str) -> Iterator[Lab]:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(lab_config(tmp_path, max_waiting_per_class=1000), database_url=postgres_url)
    lab = Lab(runtime, redis.Redis.from_url(redis_db_url))
    yield lab
    lab.broker.close()
    runtime.store.engine.dispose()


def _results_lost(lab: Lab, classes: tuple[str, ...] = (SMALL,)) -> None:
    """The classes' in-flight jobs end, their results recorded but the fills after them lost."""
    with lab.runtime.store.session() as session:
        session.execute(update(Job).where(Job.queue.in_([lab_queue(c) for c in classes]), Job.state == "queued")
                        .values(state="done", result="pass"))  # fmt: skip


def _fill(lab: Lab, skip_locked: bool, sent: list[int], classes: tuple[str, ...] = (SMALL,)) -> None:
    outbox = Outbox()
    with lab.runtime.store.session() as session:
        queues = [lab_queue(c) for c in classes]
        sent.append(scheduler.fill_windows(lab.runtime, session, queues, outbox, skip_locked=skip_locked))
    outbox.send()


@pytest.mark.parametrize("skip_locked", [False, True])
def test_a_second_filler_waits_for_the_first_or_leaves_the_window_to_it(pg_lab: Lab, skip_locked: bool) -> None:
    pg_lab.pass_build(pg_lab.pipeline({SMALL: 300}))  # more than one pick looks at (scheduler.SCAN_ROWS)
    _results_lost(pg_lab)
    second: list[int] = []
    outbox = Outbox()
    with pg_lab.runtime.store.session() as session:
        assert scheduler.fill_windows(pg_lab.runtime, session, [lab_queue(SMALL)], outbox) == 3
        # Not committed yet: another control worker fills the same class now.
        other = threading.Thread(target=_fill, args=(pg_lab, skip_locked, second))
        other.start()
        other.join(timeout=1.0)
        if skip_locked:
            assert second == [0]  # the timer's fill leaves a window being filled to its filler
        else:
            assert other.is_alive()  # a result's fill waits for the window's lock
    outbox.send()
    other.join(timeout=10)
    assert second == [0] and pg_lab.in_flight(SMALL) == 3 and len(pg_lab.messages(SMALL)) == 3 + 3


def test_four_fillers_at_once_never_over_fill_a_window(pg_lab: Lab) -> None:
    """Four control workers fill the same class at the same moment, five times over: the window (3) holds."""
    # More waiting than one pick looks at (scheduler.SCAN_ROWS), so that fillers without the window's
    # lock could each find rows of their own to send.
    for index in range(4):
        pg_lab.pass_build(pg_lab.pipeline({SMALL: 100}, tree=f"t{index}"))
    for _ in range(5):
        _results_lost(pg_lab)
        start = threading.Barrier(4)
        sent: list[int] = []

        def fill(skip_locked: bool, start: threading.Barrier, sent: list[int]) -> None:
            start.wait()
            _fill(pg_lab, skip_locked, sent)

        threads = [threading.Thread(target=fill, args=(index % 2 == 0, start, sent)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(sent) == 4 and sum(sent) == 3 and pg_lab.in_flight(SMALL) == 3


def test_fillers_of_overlapping_classes_at_once_never_over_fill_nor_deadlock(pg_lab: Lab) -> None:
    """Control workers fill sets of classes that overlap, in any order, at the same moment: each window holds
    (small 3, big 2), and none waits on another in a cycle (PostgreSQL would end one with a deadlock error)."""
    for index in range(4):
        pg_lab.pass_build(pg_lab.pipeline({SMALL: 40, BIG: 40}, tree=f"t{index}"))
    sets = [(SMALL, BIG), (BIG, SMALL), (BIG,), (SMALL, BIG)]
    for _ in range(5):
        _results_lost(pg_lab, (SMALL, BIG))
        start = threading.Barrier(len(sets))
        sent: list[int] = []

        def fill(skip_locked: bool, classes: tuple[str, ...], start: threading.Barrier, sent: list[int]) -> None:
            start.wait()
            _fill(pg_lab, skip_locked, sent, classes)

        threads = [threading.Thread(target=fill, args=(index == 3, classes, start, sent))
                   for index, classes in enumerate(sets)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(sent) == len(sets), "a filler failed (a deadlock?) or hangs"
        assert sum(sent) == 3 + 2 and pg_lab.in_flight(SMALL) == 3 and pg_lab.in_flight(BIG) == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_pick_is_an_index_range_on_postgresql(lab: Lab) -> None:
    """The fill's pick does not sort the waiting jobs: it walks ix_job_pick."""
    lab.pass_build(lab.pipeline({SMALL: 5}))
    with lab.runtime.store.session() as session:
        session.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(row[0] for row in session.execute(text(
            "EXPLAIN SELECT id FROM job WHERE queue = 'lab.small' AND state = 'waiting' "
            "ORDER BY priority DESC, fair_seq, id LIMIT 3")))  # fmt: skip
    assert "ix_job_pick" in plan and "Sort" not in plan.split("ix_job_pick")[0], plan


def test_labgate_up_tops_the_windows_up_on_a_timer(tmp_path: Path) -> None:
    assert (QUEUE_TOP_UP_TASK, 45) in periodic_tasks(lab_config(tmp_path, top_up_interval_s=45))
    import bot.tasks  # the control worker's tasks

    assert app.tasks[QUEUE_TOP_UP_TASK].__module__ == bot.tasks.__name__
