"""A store and a real Redis broker with two device classes, pipelines made row by row, and job workers
played by the test: they take a lab queue's messages from Redis the way Celery's Redis transport does
(the oldest at the list's right end) and report through the real result path."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from bot.host.config import Config, DeviceClass, Scheduling
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.lifecycle import record_result
from bot.store.models import Change, Job, Pipeline, Revision, Tree
from tests.bot.pipelines.kernel_lab import KernelLab, open_kernel_lab, spec_of_message
from workers.app import BUILD_QUEUE, configure, lab_queue
from workers.spec import JobResult, JobSpec

SMALL = "small"  # capacity 2: a window of 3 with the margin of 1
BIG = "big"  # capacity 1: a window of 2
BUILD_TOKEN = "build-token"


@dataclass
class Lab:
    runtime: Runtime
    broker: redis.Redis

    def pipeline(self, tests: dict[str, int], *, tree: str = "net", submitter: str = "alice", kind: str = "pre-merge",
                 trusted: bool = True, source: str = "github") -> int:  # fmt: skip
        """A running pipeline whose build is queued and whose test jobs wait on it; the build job's id."""
        with self.runtime.store.session() as session:
            tree_row = session.scalar(select(Tree).where(Tree.name == tree)) or Tree(name=tree, url=f"https://x/{tree}")
            number = session.scalar(select(func.count()).select_from(Change)) or 0
            change = Change(tree=tree_row, source=source, external_id=str(number + 1), submitter=submitter,
                            author_trusted=trusted)  # fmt: skip
            revision = Revision(change=change, base_ref="main")
            pipeline = Pipeline(revision=revision, state="running", kind=kind)
            build = Job(pipeline=pipeline, kind="build", name="kernel", queue=BUILD_QUEUE, state="queued",
                        result_token_hash=hashlib.sha256(BUILD_TOKEN.encode()).hexdigest())  # fmt: skip
            session.add(build)
            session.flush()
            for device_class, count in tests.items():
                for index in range(count):
                    session.add(Job(pipeline=pipeline, kind="test", name=f"{device_class} t{index}",
                                    queue=lab_queue(device_class), depends_on_id=build.id,
                                    spec={"name": f"t{index}", "kernel": "bzImage", "commands": [], "timeout_s": 60,
                                          "device_class": device_class}))  # fmt: skip
            return build.id

    def pass_build(self, build_id: int) -> None:
        record_result(self.runtime, JobResult(job_id=build_id, delivery=1, result="pass", result_token=BUILD_TOKEN,
                                              outputs={"artifacts": {}}))  # fmt: skip

    def messages(self, device_class: str) -> list[JobSpec]:
        """The class's messages in the broker, oldest first, left there."""
        return [spec_of_message(raw) for raw in reversed(self.broker.lrange(lab_queue(device_class), 0, -1))]

    def take(self, device_class: str) -> JobSpec:
        """What a worker of the class does first: take the oldest message."""
        raw = self.broker.rpop(lab_queue(device_class))
        assert raw is not None, f"no message for {device_class}"
        return spec_of_message(raw)  # type: ignore[arg-type]

    def finish(self, spec: JobSpec, result: str = "pass") -> None:
        record_result(self.runtime, JobResult(job_id=spec.job_id, delivery=1, result=result,  # type: ignore[arg-type]
                                              result_token=spec.result_token))  # fmt: skip

    def states(self, device_class: str) -> dict[str, int]:
        with self.runtime.store.session() as session:
            rows = session.execute(select(Job.state, func.count()).where(Job.queue == lab_queue(device_class))
                                   .group_by(Job.state)).all()  # fmt: skip
            return {state: count for state, count in rows}

    def in_flight(self, device_class: str) -> int:
        states = self.states(device_class)
        return states.get("queued", 0) + states.get("running", 0)


def lab_config(tmp_path: Path, **scheduling: int) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        device_classes=[DeviceClass(name=SMALL, tags={"arch": "x86_64", "platform": "qemu"}, capacity=2),
                        DeviceClass(name=BIG, tags={"arch": "x86_64", "platform": "qemu", "big": "yes"}, capacity=1)],
        scheduling=Scheduling(**{"window_margin": 1, "max_waiting_per_class": 50, "submitter_jobs_in_flight": 2,
                                 "submitter_device_minutes_per_day": 60, **scheduling}),
    )  # fmt: skip


@pytest.fixture
def open_lab(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[object]:
    """Make a Lab with scheduling settings of the test's choosing."""
    configure(redis_db_url, longest_job_s=60)
    opened: list[Lab] = []

    def make(**scheduling: int) -> Lab:
        runtime = open_runtime(lab_config(tmp_path, **scheduling), database_url=database_url)
        opened.append(Lab(runtime, redis.Redis.from_url(redis_db_url)))
        return opened[-1]

    yield make
    for lab in opened:
        lab.broker.close()
        lab.runtime.store.engine.dispose()


@pytest.fixture
def lab(open_lab: object) -> Lab:
    made: Lab = open_lab()  # type: ignore[operator]
    return made


@pytest.fixture
def kernel_lab(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[KernelLab]:
    """Pipelines of a kernel tree driven through the real result path (kernel_lab.py)."""
    yield from open_kernel_lab(tmp_path, database_url, redis_db_url)
