"""Places through a real labgrid coordinator: never two holders at once, waiting with a cap and saying for whom,
offline by hand, and a release (cancel, then unlock) that hands the place on at once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bot.cli.main import main
from lab.errors import LabSetupError
from lab.places import (
    Coordinator,
    Identity,
    PlaceUnavailable,
    _thread_loop,
    bring_online,
    end_health_check,
    offline_identity,
    take_offline,
)
from tests.lab.standin_lab import ENVIRONMENT, standin
from workers.standin.lab import StandinLab

__all__ = ["standin"]  # the fixture, imported for this module's tests
ROOT = Path(__file__).resolve().parents[2]


def _session(lab: StandinLab, user: str) -> Coordinator:
    return Coordinator(lab.coordinator, Identity("testhost", user))


def _all_free(lab: StandinLab) -> None:
    observer = _session(lab, "observer")
    try:
        states = observer.places()
        assert all(p.acquired is None and p.reservation is None for p in states.values()), states
    finally:
        observer.close()


def _granted_within(session: Coordinator, token: str, seconds: float) -> str | None:
    """The place the reservation is allocated within `seconds`, or None."""
    deadline = time.monotonic() + seconds
    while session.poll(token).state.name == "waiting":
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return str(session.poll(token).allocations["main"][0])


# Each job is a process of its own, as lab workers are (one labgrid session per process).
_JOB = """
import json, sys, time
from lab.places import Coordinator, Identity, holding_place
coordinator = Coordinator(sys.argv[1], Identity("testhost", sys.argv[2]))
with holding_place(coordinator, json.loads(sys.argv[3]), wait_s=120) as held:
    start = time.monotonic()
    time.sleep(0.5)
    end = time.monotonic()
coordinator.close()
print(json.dumps([held.name, start, end]))
"""

# Someone else (a developer with labgrid-client) holds places for a while.
_LOCKER = """
import sys, time
from lab.places import Coordinator, Identity
coordinator = Coordinator(sys.argv[1], Identity("testhost", "someone-else"))
places = sys.argv[3:]
for place in places:
    coordinator.lock(place)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
for place in places:
    coordinator.unlock(place)
coordinator.close()
"""


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def test_six_jobs_on_two_places_never_share_one(standin: StandinLab) -> None:
    jobs = [_python(_JOB, standin.coordinator, f"worker-{i}", json.dumps(standin.tags)) for i in range(6)]
    holds = []
    for job in jobs:
        out, _ = job.communicate(timeout=180)
        assert job.returncode == 0
        holds.append(json.loads(out.strip().splitlines()[-1]))
    assert {name for name, _, _ in holds} == set(standin.places), "both places served jobs"
    for place in standin.places:
        intervals = sorted((start, end) for name, start, end in holds if name == place)
        for (_, first_end), (second_start, _) in zip(intervals, intervals[1:], strict=False):
            assert second_start >= first_end, f"{place} held by two jobs at once: {intervals}"
    _all_free(standin)


def test_places_locked_by_someone_else_are_waited_on_with_a_cap_and_named(standin: StandinLab) -> None:
    locker = _python(_LOCKER, standin.coordinator, "4", *standin.places)
    worker = _session(standin, "lab-worker")
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        heard: list[str] = []
        started = time.monotonic()
        with pytest.raises(PlaceUnavailable) as refused:
            worker.reserve_and_lock(standin.tags, wait_s=2.0, on_waiting=heard.append)
        assert 2.0 <= time.monotonic() - started < 10
        assert "standin-0 locked by testhost/someone-else" in str(refused.value)
        assert heard and "locked by testhost/someone-else" in heard[0]
        # The cap cancelled the reservation: nothing of the worker's is left at the coordinator.
        assert all(p.reservation is None for p in worker.places().values())

        # Freed while the worker waits: it gets a place and says how long and for whom it waited.
        held = worker.reserve_and_lock(standin.tags, wait_s=30)
        assert held.waited_s >= 0.5
        assert "locked by testhost/someone-else" in held.waited_for
        worker.release(held)
    finally:
        worker.close()
        locker.wait(timeout=30)
    _all_free(standin)


def test_release_cancels_then_unlocks_so_a_waiter_gets_the_place_at_once(standin: StandinLab) -> None:
    other = _session(standin, "someone-else")
    first = _session(standin, "worker-a")
    second = _session(standin, "worker-b")
    try:
        other.lock("standin-1")
        held = first.reserve_and_lock(standin.tags, wait_s=30)
        assert held.name == "standin-0"
        state = first.places()["standin-0"]
        assert state.acquired == "testhost/worker-a" and state.reservation == held.token
        token = second.reserve(standin.tags)
        assert second.poll(token).state.name == "waiting"
        first.release(held)
        state = first.places()["standin-0"]
        assert state.acquired is None and state.reservation != held.token
        # Unlock-then-cancel would leave the waiter to the coordinator's 15 s tick.
        assert _granted_within(second, token, 5) == "standin-0", "the waiter was not allocated the freed place"
        second.cancel(token)
    finally:
        other.unlock("standin-1")
        for session in (other, first, second):
            session.close()
    _all_free(standin)


def test_an_offline_place_is_waited_on_with_its_reason_and_comes_back_online(standin: StandinLab) -> None:
    admin = _session(standin, "admin")
    worker = _session(standin, "lab-worker")
    try:
        take_offline(standin.coordinator, "standin-0", "fan broken")
        admin.lock("standin-1")
        state = admin.places()["standin-0"]
        assert state.offline_reason == "fan broken"
        assert state.acquired is not None and state.acquired.endswith("/labgate-offline")
        with pytest.raises(PlaceUnavailable, match=r"standin-0 offline \(fan broken\)"):
            worker.reserve_and_lock(standin.tags, wait_s=1.0)
        bring_online(admin, "standin-0")
        state = admin.places()["standin-0"]
        assert state.offline_reason is None and state.acquired is None and state.comment == ""
        held = worker.reserve_and_lock(standin.tags, wait_s=10)
        assert held.name == "standin-0"
        worker.release(held)
    finally:
        admin.unlock("standin-1")
        admin.close()
        worker.close()
    _all_free(standin)


def test_a_busy_place_is_not_taken_offline_from_under_its_job(standin: StandinLab) -> None:
    worker = _session(standin, "lab-worker")
    try:
        held = worker.reserve_and_lock({**standin.tags}, wait_s=10)
        with pytest.raises(LabSetupError, match="locked by testhost/lab-worker"):
            take_offline(standin.coordinator, held.name, "maintenance")
        intruder = _session(standin, "intruder")
        try:  # the coordinator's refusal comes back as the lab's error, never as a gRPC exception
            with pytest.raises(LabSetupError, match="FAILED_PRECONDITION: Place .* is already acquired"):
                intruder.lock(held.name)
        finally:
            intruder.close()
        assert worker.places()[held.name].acquired == "testhost/lab-worker"
        worker.release(held)
    finally:
        worker.close()
    _all_free(standin)


def test_labgate_lab_takes_a_place_offline_and_back_and_shows_it(
    standin: StandinLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "labgate.yaml"
    config.write_text(yaml.safe_dump({"device_classes": [{
        "name": "board-x86", "tags": {"arch": "x86_64", "platform": "board"}, "lab": "labgrid",
        "labgrid": {"coordinator": standin.coordinator, "place_tags": standin.tags, "environment": str(ENVIRONMENT)},
    }]}))  # fmt: skip
    assert main(["lab", "offline", "standin-1", "--why", "flaky UART", "--config", str(config)]) == 0
    assert main(["lab", "status", "--config", str(config)]) == 0
    status = capsys.readouterr().out
    assert re.search(r"standin-1 +offline: flaky UART +classes: board-x86", status), status
    assert re.search(r"standin-0 +free", status), status
    assert main(["lab", "online", "standin-1", "--config", str(config)]) == 0
    assert main(["lab", "offline", "no-such-place", "--why", "x", "--config", str(config)]) != 0
    capsys.readouterr()
    assert main(["lab", "status", "--config", str(config)]) == 0
    assert re.search(r"standin-1 +free", capsys.readouterr().out)
    _all_free(standin)


def test_a_lab_worker_at_start_up_releases_the_locks_its_labgrid_user_left(
    standin: StandinLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.app import app
    from workers.tasks import LAB_COORDINATORS_ENV, release_stale_places

    left = Coordinator(standin.coordinator, Identity(socket.gethostname(), "lab-board-x86"))
    try:
        left.lock("standin-0")  # what a worker killed while it held the place leaves
    finally:
        left.close()
    monkeypatch.setenv(LAB_COORDINATORS_ENV, standin.coordinator)
    monkeypatch.setenv("LABGATE_LAB_USER", "lab-board-x86")
    monkeypatch.setitem(app.conf, "labgate_worker_role", "checkout")
    release_stale_places()  # not a lab worker: nothing happens
    observer = _session(standin, "observer")
    try:
        assert observer.places()["standin-0"].acquired == f"{socket.gethostname()}/lab-board-x86"
        monkeypatch.setitem(app.conf, "labgate_worker_role", "lab.board-x86")
        release_stale_places()
        assert observer.places()["standin-0"].acquired is None
    finally:
        observer.close()
    _all_free(standin)


def test_the_thread_loop_is_current_again_after_an_asyncio_run() -> None:
    """grpc.aio looks the thread's current loop up; an asyncio.run() in between (another test, a tool)
    leaves none, and the next coordinator session must not fail for it."""
    first = _thread_loop()
    asyncio.run(asyncio.sleep(0))
    assert _thread_loop() is first
    assert asyncio.get_event_loop_policy().get_event_loop() is first


def test_a_job_that_avoids_a_place_gets_another_waits_for_it_within_the_cap_and_says_when_it_could_not(
    standin: StandinLab,
) -> None:
    worker = _session(standin, "lab-worker")
    other = _session(standin, "someone-else")
    avoid = ("standin-0",)
    try:
        held = worker.reserve_and_lock(standin.tags, wait_s=10, avoid=avoid)
        assert (held.name, held.avoided) == ("standin-1", "avoided standin-0")
        worker.release(held)

        # The other place busy for a while: the job waits for it, though the avoided one is free all along.
        locker = _python(_LOCKER, standin.coordinator, "3", "standin-1")
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        held = worker.reserve_and_lock(standin.tags, wait_s=30, avoid=avoid)
        locker.wait(timeout=30)
        assert held.name == "standin-1" and held.waited_s >= 1.0
        assert "standin-1 locked by testhost/someone-else" in held.waited_for
        worker.release(held)

        # Busy past the cap: the avoided place after all, and the job says so.
        other.lock("standin-1")
        held = worker.reserve_and_lock(standin.tags, wait_s=2.0, avoid=avoid)
        assert held.name == "standin-0"
        assert held.avoided.startswith("could not avoid standin-0: no other place within 2 s")
        assert "standin-1 locked by testhost/someone-else" in held.avoided
        worker.release(held)
        other.unlock("standin-1")

        # The other place offline: no waiting for it at all.
        take_offline(standin.coordinator, "standin-1", "fan broken")
        started = time.monotonic()
        held = worker.reserve_and_lock(standin.tags, wait_s=30, avoid=avoid)
        assert held.name == "standin-0" and time.monotonic() - started < 5
        assert held.avoided == "could not avoid standin-0: no other place with board=standin-x86 is in service"
        worker.release(held)
        bring_online(other, "standin-1")
    finally:
        worker.close()
        other.close()
    _all_free(standin)


def _hold_offline_in_thread(address: str, place: str, why: str, out: list[object]) -> None:
    coordinator = Coordinator(address, offline_identity())  # a session on this thread's own loop
    try:
        out.append(coordinator.hold_offline(place, why, wait_s=30))
    except Exception as exc:
        out.append(exc)
    finally:
        coordinator.close()


def test_a_health_check_takes_its_place_offline_when_the_job_on_it_ends_before_any_waiting_job_gets_it(
    standin: StandinLab,
) -> None:
    job = _session(standin, "lab-worker")
    other = _session(standin, "someone-else")
    waiter = _session(standin, "waiting-job")
    try:
        held = job.reserve_and_lock({**standin.tags, "name": "standin-0"}, wait_s=10)
        other.lock("standin-1")
        waiting = waiter.reserve(standin.tags)  # a job queued before the health check, for any place
        out: list[object] = []
        thread = threading.Thread(target=_hold_offline_in_thread,
                                  args=(standin.coordinator, "standin-0", "health check (job 5)", out))  # fmt: skip
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive(), "the health check took the place from under its job"
        job.release(held)
        thread.join(30)
        assert len(out) == 1 and not isinstance(out[0], Exception), out
        state = job.places()["standin-0"]
        assert state.offline_reason == "health check (job 5)" and state.reservation is None
        assert state.acquired == f"{socket.gethostname()}/labgate-offline"
        assert waiter.poll(waiting).state.name == "waiting", "the waiting job got the place before the check"

        assert end_health_check(standin.coordinator, "standin-0", passed=False, reason="fail: boot failed") is False
        assert job.places()["standin-0"].offline_reason == "health check failed: fail: boot failed"
        assert end_health_check(standin.coordinator, "standin-0", passed=True, reason="pass") is True
        assert _granted_within(waiter, waiting, 5) == "standin-0", "the place back in service was not granted"
        waiter.cancel(waiting)
    finally:
        other.unlock("standin-1")
        for session in (job, other, waiter):
            session.close()
    _all_free(standin)
