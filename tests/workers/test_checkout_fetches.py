"""Jobs that want the same mirror fetched at once share one fetch; a job never takes a fetch that began
before it asked. Real git against a local tree, fetches counted from git's own trace (GIT_TRACE2_EVENT)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.checkout import (
    fetch_tested_commit,
    fetch_ticket,
    fresh_mirror,
    locked,
    mirror_path,
    resolve,
    update_mirror,
)
from workers.errors import InfraError

JOBS = 6


def _git(repo: Path, *args: str) -> str:
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(["git", *env, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _new_commit(repo: Path, text: str) -> str:
    (repo / "NOTES").write_text(text)
    _git(repo, "add", "NOTES")
    _git(repo, "commit", "-qm", text)
    return _git(repo, "rev-parse", "HEAD")


def _fetches(trace: Path) -> int:
    """How many `git fetch` or `git clone` processes ran, from each process's trace file."""
    count = 0
    for path in trace.iterdir():
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "start":
                count += event["argv"][1:2] in (["fetch"], ["clone"])
    return count


def _wait_for_waiters(mirror: Path, count: int) -> None:
    """Until `count` processes or threads wait for the mirror's lock (the kernel lists them in /proc/locks):
    each took its ticket before it began to wait."""
    inode = os.stat(f"{mirror}.lock").st_ino
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = Path("/proc/locks").read_text().splitlines()
        if sum("->" in line and line.split()[-3].endswith(f":{inode}") for line in lines) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} jobs came to wait for the mirror")


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "trace"
    directory.mkdir()
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(directory))  # a directory: one file per git process
    return directory


def _all_ask_while_the_mirror_is_held(mirror: Path, job: Callable[[], None], waiting: threading.Barrier) -> None:
    """JOBS threads run `job` while another job's work holds the mirror: each asks for it before it is free."""
    threads = [threading.Thread(target=job) for _ in range(JOBS)]
    with locked(mirror):
        for thread in threads:
            thread.start()
        waiting.wait()
        _wait_for_waiters(mirror, JOBS)
    for thread in threads:
        thread.join(timeout=60)


def test_jobs_waiting_together_share_one_fetch_and_all_see_the_new_commit(
    hello_repo: Path, tmp_path: Path, trace: Path
) -> None:
    mirror = mirror_path(tmp_path / "data", "hello")
    with fresh_mirror(mirror, str(hello_repo)):
        pass
    assert _fetches(trace) == 1  # the clone
    new = _new_commit(hello_repo, "pushed while the jobs queue")
    seen: list[str] = []
    waiting = threading.Barrier(JOBS + 1)

    def job() -> None:
        waiting.wait()
        with fresh_mirror(mirror, str(hello_repo)):
            seen.append(resolve(mirror, "main", "base"))

    _all_ask_while_the_mirror_is_held(mirror, job, waiting)
    assert seen == [new] * JOBS
    fetches = _fetches(trace) - 1
    assert 1 <= fetches < JOBS
    assert fetches == 1, "every job asked before the fetch began: one serves them all"


def test_a_fetch_that_began_before_a_job_asked_does_not_serve_it(hello_repo: Path, tmp_path: Path,
                                                                  trace: Path) -> None:  # fmt: skip
    """One job after another: each fetches, since the last fetch began before it asked."""
    mirror = mirror_path(tmp_path / "data", "hello")
    for round in range(3):
        new = _new_commit(hello_repo, f"round {round}")
        with fresh_mirror(mirror, str(hello_repo)):
            assert resolve(mirror, "main", "base") == new
    assert _fetches(trace) == 3


def test_a_fetch_from_another_url_or_a_failed_one_serves_nobody(hello_repo: Path, tmp_path: Path) -> None:
    mirror = mirror_path(tmp_path / "data", "hello")
    update_mirror(mirror, str(hello_repo))
    other = tmp_path / "other"
    _git(tmp_path, "clone", "-q", str(hello_repo), str(other))
    new = _new_commit(hello_repo, "only at the first URL")
    with locked(mirror):
        ticket = fetch_ticket(mirror)
        update_mirror(mirror, str(other))  # began after the ticket, but from another URL
        update_mirror(mirror, str(hello_repo), ticket=ticket)
        assert resolve(mirror, "main", "base") == new
        ticket = fetch_ticket(mirror)
        with pytest.raises(InfraError, match="git fetch"):
            update_mirror(mirror, str(tmp_path / "gone"))
        newer = _new_commit(hello_repo, "after a failed fetch")
        update_mirror(mirror, str(hello_repo), ticket=ticket)
        assert resolve(mirror, "main", "base") == newer


def test_fetch_tested_commit_fetches_once_for_jobs_that_wait_together(
    hello_repo: Path, tmp_path: Path, trace: Path
) -> None:
    mirror = mirror_path(tmp_path / "build-host", "hello")
    update_mirror(mirror, str(hello_repo))
    new = _new_commit(hello_repo, "the tested commit, pushed")
    waiting = threading.Barrier(JOBS + 1)
    errors: list[BaseException] = []

    def job() -> None:
        waiting.wait()
        try:
            fetch_tested_commit(mirror, str(hello_repo), new, None)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    _all_ask_while_the_mirror_is_held(mirror, job, waiting)
    assert not errors
    assert _fetches(trace) - 1 == 1
