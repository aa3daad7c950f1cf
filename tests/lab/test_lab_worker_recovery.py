"""Point 8 of the labs issue, with a real Celery lab worker on the stand-in lab: its pool process killed while a
board boots leaves no QEMU of ours; Celery hands the job back and it runs again, on the other place, since the
killed one's lock outlives it; the next worker's start-up sweep powers that place off and releases it.
(A local QEMU's death with its worker is tests/lab/test_runner.py::test_killed_worker_takes_qemu_with_it.)"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from bot.host.private_broker import start_private_redis
from lab.places import Coordinator, Identity
from tests.lab.conftest import KERNEL_CACHE
from tests.lab.standin_lab import ENVIRONMENT, standin
from tests.processes import children_of, stop_process
from tests.requirements import need
from workers.app import RESULTS_QUEUE, app, broker_redis, configure
from workers.spec import TASK_NAMES, JobResult, JobSpec, LabgridTarget, QemuSpec, TestCommand, TestSpec
from workers.standin.lab import StandinLab

__all__ = ["standin"]  # the fixture, imported for this module's tests

ROOT = Path(__file__).resolve().parents[2]
CLASS = "board-x86"
LAB_USER = "lab-recovery"
StartWorker = Callable[[], subprocess.Popen[bytes]]
KTAP = "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 board-alive'"


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = children_of(todo.pop())
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _qemus() -> set[int]:
    return {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and "qemu-system" in _cmdline(int(e.name))}


def _messages(url: str, task: str) -> list[list[object]]:
    """The args of the `task` messages the worker sent to the results queue (kombu's JSON envelope)."""
    found = []
    for raw in broker_redis(url).lrange(RESULTS_QUEUE, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            found.append(json.loads(base64.b64decode(message["body"]))[0])
    return found


def _wait(what: str, seconds: float, check: Callable[[], object]) -> object:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis of the test's own: the shared server's numbered databases are shared with other test processes."""
    directory = Path(tempfile.mkdtemp(prefix="lg-broker-"))  # short: it holds a unix socket
    url, process = start_private_redis(directory)
    assert process is not None
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_worker(broker_url: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `labgate worker` processes for a lab role (each with the extra environment given); stopped after."""
    base = {**os.environ, "PYTHONPATH": str(ROOT), "LABGATE_WORK_DIR": str(tmp_path / "work"),
            "LABGATE_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "LABGATE_BROKER_URL": broker_url,
            "LABGATE_LONGEST_JOB_S": "120", "LABGATE_CACHE_DIR": str(KERNEL_CACHE.expanduser().parent)}  # fmt: skip
    started: list[subprocess.Popen[bytes]] = []

    def start(device_class: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115 (the worker's, closed with it)
        worker = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker", "--queues", f"lab.{device_class}"],
                                  env={**base, "LABGATE_WORKER_ROLE": f"lab.{device_class}", **env}, cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        log.close()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.poll() is None:
            stop_process(worker)


@pytest.fixture
def lab_worker(standin: StandinLab, start_worker: Callable[..., subprocess.Popen[bytes]]) -> StartWorker:
    """The board class's worker, locking places as LAB_USER and sweeping them at start-up."""
    env = {**standin.worker_env(), "LABGATE_LAB_COORDINATORS": standin.coordinator, "LABGATE_LAB_USER": LAB_USER}
    return lambda: start_worker(CLASS, **env)


def _pool_process(worker: subprocess.Popen[bytes]) -> int:
    pool = [pid for pid in children_of(worker.pid) if "bot.cli" in _cmdline(pid)]
    assert len(pool) == 1, pool
    return pool[0]


@pytest.mark.slow
def test_a_lab_worker_killed_mid_boot_leaves_no_qemu_its_job_runs_again_elsewhere_and_the_sweep_frees_the_place(
    standin: StandinLab, lab_worker: StartWorker, broker_url: str, debian_kernel: Path
) -> None:
    events_url = standin.pdu_url.split("/power")[0] + "/events"
    before = len(requests.get(events_url, timeout=5).json())
    pdu_qemus = lambda: {pid for pid in _qemus() if pid in _descendants(standin.processes["pdu"].pid)}  # noqa: E731
    worker = lab_worker()
    spec = JobSpec(
        job_id=41, pipeline_id=1, kind="test", result_token="recovery-token", tree_name="t",
        tree_url="https://example.org/t.git", max_log_bytes=1 << 20,
        test=TestSpec(name="alive", device_class=CLASS, qemu=QemuSpec(), kernel="debian", artifacts={},
                      commands=(TestCommand(name="ktap", run=KTAP),), timeout_s=120,
                      labgrid=LabgridTarget(coordinator=standin.coordinator, place_tags=standin.tags,
                                            environment=ENVIRONMENT.read_text())),
    )  # fmt: skip
    configure(broker_url, longest_job_s=120)
    app.send_task(TASK_NAMES["test"], args=[spec.model_dump_json()], queue=f"lab.{CLASS}")

    def powered_on() -> dict[str, object] | None:
        ons = [e for e in requests.get(events_url, timeout=5).json()[before:] if e["request"] == "on"]
        return ons[0] if ons else None

    on = _wait("the first delivery to power a board on", 120, powered_on)
    assert isinstance(on, dict)
    killed_place = f"standin-{on['outlet']}"
    # No QEMU is the worker's: the board's belongs to the PDU.
    assert not _qemus() & set(_descendants(worker.pid))
    os.kill(_pool_process(worker), signal.SIGKILL)  # as the OOM killer would, mid-boot

    results = _wait("the job's result after Celery handed it back", 180,
                    lambda: _messages(broker_url, "bot.record_result"))  # fmt: skip
    assert isinstance(results, list) and len(results) == 1
    result = JobResult.model_validate_json(str(results[0][0]))
    assert (result.result, result.delivery) == ("pass", 2), result
    assert result.outputs["place"] != killed_place and result.outputs["place"] in standin.places
    started = _messages(broker_url, "bot.job_started")
    assert sorted(args[:2] for args in started) == [[41, 1], [41, 2]]  # type: ignore[type-var]
    assert worker.poll() is None, "the worker itself lives on; only its pool process was killed"
    assert not _qemus() & set(_descendants(worker.pid))

    # The killed place: still locked as the worker's labgrid user (its board may have ended its boot by itself).
    observer = Coordinator(standin.coordinator, Identity("test", "observer"))
    try:
        assert observer.places()[killed_place].acquired == f"{socket.gethostname()}/{LAB_USER}"
        worker.terminate()
        worker.wait(timeout=60)
        restarted = len(requests.get(events_url, timeout=5).json())
        # The next worker's start-up sweep powers it off and releases it.
        lab_worker()
        _wait("the start-up sweep to release the place", 90,
              lambda: observer.places()[killed_place].acquired is None)  # fmt: skip
        assert observer.places()[killed_place].reservation is None
    finally:
        observer.close()
    swept = requests.get(events_url, timeout=5).json()[restarted:]
    assert [(e["outlet"], e["request"], e["status"]) for e in swept] == [(on["outlet"], "off", 200)]
    assert not pdu_qemus(), "a board's QEMU survived the sweep"


@pytest.mark.slow
def test_a_local_qemu_dies_with_the_lab_workers_pool_process_killed_mid_boot_and_its_job_is_handed_back(
    start_worker: Callable[..., subprocess.Popen[bytes]], broker_url: str, debian_kernel: Path, tmp_path: Path
) -> None:
    """The QEMU class's path: QEMU under bwrap (--die-with-parent) and setpriv --pdeathsig KILL (lab/runner.py)."""
    need("root", "a local QEMU job runs as a slot uid in its own cgroup")
    need("sandbox-users", "QEMU takes a qemu slot's uid")
    worker = start_worker("qemu-x86-64")
    spec = JobSpec(
        job_id=42, pipeline_id=1, kind="test", result_token="qemu-token", tree_name="t",
        tree_url="https://example.org/t.git", max_log_bytes=1 << 20,
        test=TestSpec(name="hang", device_class="qemu-x86-64", qemu=QemuSpec(), kernel="debian", artifacts={},
                      commands=(TestCommand(name="hang", run="sleep 600"),), timeout_s=20),
    )  # fmt: skip
    configure(broker_url, longest_job_s=120)
    app.send_task(TASK_NAMES["test"], args=[spec.model_dump_json()], queue="lab.qemu-x86-64")
    job_dir = str(tmp_path / "work" / "work" / "job-42")
    ours = lambda: {pid for pid in _qemus() if job_dir in _cmdline(pid)}  # noqa: E731
    first = _wait("the job's QEMU", 120, ours)
    assert isinstance(first, set)
    pool = _pool_process(worker)
    assert first <= set(_descendants(pool)), "the QEMU is the pool process's"
    os.kill(pool, signal.SIGKILL)
    gone_by = time.monotonic() + 5
    while first & ours():
        assert time.monotonic() < gone_by, f"QEMU {first & ours()} outlived its killed worker"
        time.sleep(0.05)
    # Handed back by Celery: the next delivery boots again and ends at its wall-time cap (the command hangs;
    # `fail` when the runner started before the cap, `incomplete` when the lab's kernel had not reached it yet).
    results = _wait("the second delivery's result", 180, lambda: _messages(broker_url, "bot.record_result"))
    assert isinstance(results, list) and len(results) == 1
    result = JobResult.model_validate_json(str(results[0][0]))
    assert result.delivery == 2 and result.result in ("fail", "incomplete"), result
    assert "20 s" in (result.error_message or ""), result.error_message
    assert not ours(), "the second delivery's QEMU outlived its job"
