"""Issue 10's acceptance for place health, end to end on the stand-in lab: the control side's real result
path (bot/pipelines) with the real lab worker (workers/testjob.py run_board_job) on a real coordinator,
exporter and PDU. A dead outlet fails a place three times; the place goes offline and its health check is
queued; the jobs run on the other place; a failing health check keeps it offline, and once the outlet is
mended the next check (the timer's) brings it back. The test plays the lab worker: it takes each message
from Redis and reports what run_board_job returned."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import yaml
from sqlalchemy import select, update

from bot.cli.main import main
from bot.host.config import Config, DeviceClass, LabgridPlaces
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.lifecycle import record_result
from bot.pipelines.place_health import recheck_due
from bot.pipelines.steering import cancel_pipelines
from bot.store.models import Change, Job, JobAttempt, Pipeline, PlaceHealth, Revision, Tree, utcnow
from lab.places import Coordinator, Identity
from tests.lab.conftest import KERNEL_CACHE
from tests.lab.standin_lab import ENVIRONMENT, standin
from workers.app import BUILD_QUEUE, configure, lab_queue
from workers.artifacts import ArtifactStore
from workers.spec import INCOMPLETE_POWER, JobResult, JobSpec
from workers.standin.lab import StandinLab
from workers.testjob import run_board_job

__all__ = ["standin"]  # the fixture, imported for this module's tests

BOARD = "board-x86"
BUILD_TOKEN = "build-token"
KTAP = "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 board-alive'"


class Control:
    """labgate's control side on a store and a broker, with the test as the board class's lab worker."""

    def __init__(self, runtime: Runtime, broker: redis.Redis, work: Path) -> None:
        self.runtime, self.broker, self.work = runtime, broker, work
        self.store = ArtifactStore(work / "worker-artifacts")

    def pipeline(self) -> int:
        """A pipeline of one test job whose build passed at once: the job goes to the board class's queue."""
        with self.runtime.store.session() as session:
            tree = session.scalar(select(Tree).where(Tree.name == "net")) or Tree(name="net", url="https://x/net")
            change = Change(tree=tree, source="try", external_id=str(utcnow().timestamp()), submitter="alice")
            pipeline = Pipeline(revision=Revision(change=change, base_ref="main"), state="running")
            build = Job(pipeline=pipeline, kind="build", name="kernel", queue=BUILD_QUEUE, state="queued",
                        result_token_hash=hashlib.sha256(BUILD_TOKEN.encode()).hexdigest())  # fmt: skip
            session.add(build)
            session.flush()
            session.add(Job(pipeline=pipeline, kind="test", name="alive", queue=lab_queue(BOARD),
                            depends_on_id=build.id,
                            spec={"name": "alive", "kernel": "debian", "timeout_s": 120,
                                  "commands": [{"name": "ktap", "run": KTAP}], "device_class": BOARD}))  # fmt: skip
            build_id, pipeline_id = build.id, pipeline.id
        record_result(self.runtime, JobResult(job_id=build_id, delivery=1, result="pass", result_token=BUILD_TOKEN,
                                              outputs={"artifacts": {}}))  # fmt: skip
        return pipeline_id

    def take(self) -> JobSpec:
        """The oldest message of the board class's queue, as a lab worker takes it."""
        raw = self.broker.rpop(lab_queue(BOARD))
        assert isinstance(raw, bytes), f"no message for the board class; jobs: {self.jobs()}"
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        return JobSpec.model_validate_json(args[0])

    def run_next(self) -> tuple[JobSpec, JobResult]:
        """The lab worker takes the oldest message, runs it on a place, and reports."""
        spec = self.take()
        result = run_board_job(spec, 1, self.work / "worker", self.store)
        result = result.model_copy(update={"result_token": spec.result_token})  # as the worker's task sends it
        record_result(self.runtime, result)
        return spec, result

    def jobs(self) -> list[tuple[int, str, str | None, str | None]]:
        with self.runtime.store.session() as session:
            return [(job.id, job.state, job.result, job.error_message) for job in
                    session.scalars(select(Job).where(Job.kind == "test").order_by(Job.id))]  # fmt: skip

    def place(self, name: str) -> PlaceHealth:
        with self.runtime.store.session() as session:
            row = session.scalar(select(PlaceHealth).where(PlaceHealth.device_class == BOARD,
                                                           PlaceHealth.place == name))  # fmt: skip
            assert row is not None
            session.expunge(row)
            return row


@pytest.fixture
def control(standin: StandinLab, debian_kernel: Path, tmp_path: Path, postgres_url: str, redis_db_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Control]:  # fmt: skip
    monkeypatch.setenv("LABGATE_CACHE_DIR", str(KERNEL_CACHE.expanduser().parent))  # the fixture's kernel
    configure(redis_db_url, longest_job_s=120)
    config = Config(data_dir=tmp_path / "data", database_url=postgres_url, broker_url=redis_db_url,
                    device_classes=[DeviceClass(
        name=BOARD, tags={"arch": "x86_64", "platform": "board"}, capacity=2, lab="labgrid",
        labgrid=LabgridPlaces(coordinator=standin.coordinator, place_tags=standin.tags, environment=ENVIRONMENT),
    )])  # fmt: skip
    (tmp_path / "labgate.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    runtime = open_runtime(config)
    broker = redis.Redis.from_url(redis_db_url)
    try:
        yield Control(runtime, broker, tmp_path)
    finally:
        broker.close()
        runtime.store.engine.dispose()


@pytest.mark.slow
def test_a_place_failing_three_times_goes_offline_its_jobs_run_elsewhere_and_its_health_check_brings_it_back(
    standin: StandinLab, control: Control, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken, good = standin.places
    someone = Coordinator(standin.coordinator, Identity("testhost", "someone-else"))
    standin.inject_power_fault(broken, "relay welded")
    try:
        # The good place is busy (a developer holds it): three jobs' first attempts get the broken one.
        someone.lock(good)
        first, second, third = control.pipeline(), control.pipeline(), control.pipeline()
        faults = [control.run_next() for _ in range(2)]
        assert control.place(broken).consecutive_failures == 2
        faults.append(control.run_next())  # the third job's first attempt (the first one's retry is next)
        for _spec, result in faults:
            assert (result.result, result.error_code, result.outputs["place"]) == ("incomplete", INCOMPLETE_POWER,
                                                                                    broken), result  # fmt: skip
        row = control.place(broken)
        assert row.offline and row.consecutive_failures == 3, row
        assert row.offline_reason.startswith("3 consecutive infrastructure failures, the last power-driver-error")
        someone.unlock(good)
        # One boot on each side is enough: the other two retries are not wanted (cancelled while they wait).
        cancel_pipelines(control.runtime, [second, third], "not needed by the test")

        # In the queue now: the first job's retry (avoiding the broken place), then the place's health check.
        retry, ran = control.run_next()
        assert retry.test is not None and retry.test.avoid_places == (broken,)
        assert (ran.result, ran.outputs["place"]) == ("pass", good), ran
        check, outcome = control.run_next()
        assert check.test is not None and check.test.health_check_place == broken
        assert outcome.outputs["health_check"] == {"place": broken, "passed": False, "online": False}
        row = control.place(broken)
        assert row.offline and row.last_check_result == "failed" and row.recheck_at is not None
        with control.runtime.store.session() as session:
            kept = session.scalars(select(JobAttempt).order_by(JobAttempt.id)).all()
            assert [(a.number, a.place, a.error_code) for a in kept] == [(1, broken, INCOMPLETE_POWER)] * 3
            pipeline = session.get(Pipeline, first)
            assert pipeline is not None and (pipeline.state, pipeline.result) == ("done", "pass")

        # `labgate lab status` says which place failed, why, and how its health check went.
        assert main(["lab", "status", "--config", str(tmp_path / "labgate.yaml")]) == 0
        status = capsys.readouterr().out
        assert re.search(rf"{broken} +offline: health check failed", status), status
        assert f"offline by labgate: health check (job {check.job_id}) failed: power-driver-error" in status
        assert "last health check failed at" in status and "next health check at" in status
    finally:
        standin.clear_power_fault(broken)
        someone.close()

    # Mended; when its next check is due, the timer's health check boots it and brings it back.
    with control.runtime.store.session() as session:
        session.execute(update(PlaceHealth).values(recheck_at=utcnow() - timedelta(seconds=1)))
    assert len(recheck_due(control.runtime)) == 1
    spec, result = control.run_next()
    assert spec.test is not None and spec.test.health_check_place == broken
    assert result.outputs["health_check"] == {"place": broken, "passed": True, "online": True}, result
    row = control.place(broken)
    assert (row.offline, row.consecutive_failures, row.last_check_result) == (False, 0, "passed")
    assert main(["lab", "status", "--config", str(tmp_path / "labgate.yaml")]) == 0
    status = capsys.readouterr().out
    assert re.search(rf"{broken} +free", status) and "last health check passed at" in status, status

    # An operator asks for a check now: one is queued (at once, at the top priority), and asking again
    # while it waits says so rather than queueing another.
    assert main(["lab", "health", broken, "--config", str(tmp_path / "labgate.yaml")]) == 0
    asked = re.search(rf"{broken}: health check queued as {BOARD} \(job (\d+)\)", capsys.readouterr().out)
    assert asked is not None
    assert main(["lab", "health", broken, "--config", str(tmp_path / "labgate.yaml")]) == 0
    assert f"a health check is already queued or running (job {asked[1]})" in capsys.readouterr().out
    queued = control.take()
    assert queued.job_id == int(asked[1]) and queued.test is not None and queued.test.health_check_place == broken
