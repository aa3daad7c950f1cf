"""After the checkout, through the real result path: a plan asking for what the lab does not have is the
checkout's plan error; a board test at tier qemu is skipped with the hardware hint; the caps the lab
puts on a test reach the test job's spec, and the pipeline's notes say where they cut the plan."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.host.config import Caps, Config, DeviceCaps, DeviceClass, LabGrants, LabgridPlaces, Tree
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.lifecycle import record_result
from bot.pipelines.steering import retest_failed
from bot.store.models import Change, Job, Pipeline, Revision
from bot.store.models import Tree as TreeRow
from workers.app import CHECKOUT_QUEUE, configure
from workers.spec import JobResult

TOKEN = "checkout-token"
PLAN = """\
version: 1
builds:
  - {name: x86_64, command: make, artifacts: [t], timeout: 7200}
tests:
  - name: unit
    build: x86_64
    device: {platform: qemu}
    timeout: 5000
    network: true
    commands: [{name: a, run: "true"}]
  - name: hw
    build: x86_64
    device: {platform: board}
    memory_mb: 1024
    timeout: 5000
    network: true
    commands: [{name: a, run: "true"}]
"""


@pytest.fixture
def runtime(tmp_path: Path, redis_db_url: str) -> Iterator[Runtime]:
    configure(redis_db_url, longest_job_s=60)
    board = DeviceClass(name="board-x86", tags={"arch": "x86_64", "platform": "board"}, memory_mb=2048, lab="labgrid",
                        labgrid=LabgridPlaces(coordinator="127.0.0.1:20408", place_tags={"board": "b"},
                                              environment=tmp_path / "env.yaml.j2"),
                        network=True, caps=DeviceCaps(max_job_s=1800, max_boot_s=600))  # fmt: skip
    config = Config(
        data_dir=tmp_path / "data", caps=Caps(max_build_s=1800, max_job_s=900, max_console_silence_s=120),
        trees=[Tree(name="net", url="https://example.org/net.git", lab_grants=LabGrants(network=["hardware"]))],
        device_classes=[DeviceClass(name="qemu-x86_64", tags={"arch": "x86_64", "platform": "qemu"}), board],
    )  # fmt: skip
    opened = open_runtime(config, database_url=f"sqlite:///{tmp_path / 'labgate.sqlite3'}")
    yield opened
    opened.store.engine.dispose()


def checked_out(runtime: Runtime, plan: str, tier: str) -> int:
    """A pipeline of the tier whose checkout just passed with this plan; its id."""
    with runtime.store.session() as session:
        change = Change(tree=TreeRow(name="net", url="https://example.org/net.git"), source="github",
                        external_id="1", submitter="alice")  # fmt: skip
        pipeline = Pipeline(revision=Revision(change=change, base_ref="main"), state="running", tier=tier)
        checkout = Job(pipeline=pipeline, kind="checkout", name="checkout", queue=CHECKOUT_QUEUE, state="queued",
                       spec={"plan_path": ".labgate/plan.yaml"},
                       result_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest())  # fmt: skip
        session.add(checkout)
        session.flush()
        job_id, pipeline_id = checkout.id, pipeline.id
    record_result(runtime, JobResult(job_id=job_id, delivery=1, result="pass", result_token=TOKEN, outputs={
        "base_sha": "b" * 40, "head_sha": "a" * 40, "changed_files": ["x.c"], "plan_text": plan}))  # fmt: skip
    return pipeline_id


def jobs_of(runtime: Runtime, pipeline_id: int) -> tuple[Pipeline, dict[str, Job]]:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        jobs = {job.name: job for job in session.scalars(select(Job).where(Job.pipeline_id == pipeline_id))}
        session.expunge_all()
        return pipeline, jobs


def test_a_test_no_class_can_run_is_the_checkouts_plan_error(runtime: Runtime) -> None:
    pipeline_id = checked_out(runtime, PLAN.replace("memory_mb: 1024", "memory_mb: 4096"), "hardware")
    pipeline, jobs = jobs_of(runtime, pipeline_id)
    assert list(jobs) == ["checkout"]  # nothing was drafted
    checkout = jobs["checkout"]
    assert (checkout.result, checkout.error_code) == (None, "user-error")
    assert checkout.error_message == (".labgate/plan.yaml: tests.1.device: test hw: no device class carries "
                                      "platform=board with memory_mb >= 4096 (those carrying the tags have at most "
                                      "2048 MB)")  # fmt: skip
    assert pipeline.state == "done" and pipeline.error_code == "user-error"


def test_at_tier_qemu_the_board_test_is_skipped_and_the_notes_say_what_the_caps_cut(runtime: Runtime) -> None:
    pipeline, jobs = jobs_of(runtime, checked_out(runtime, PLAN, "qemu"))
    hw = jobs["board-x86 hw"]
    assert (hw.state, hw.result, hw.error_message) == ("done", "skip", "needs /ok-to-test hardware")
    unit = jobs["qemu-x86_64 unit"]
    assert {k: unit.spec[k] for k in ("timeout_s", "boot_timeout_s", "silence_timeout_s", "network")} == {
        "timeout_s": 900, "boot_timeout_s": 300, "silence_timeout_s": 120, "network": False}  # fmt: skip
    assert jobs["x86_64"].spec["timeout_s"] == 1800
    assert pipeline.notes == [
        "build x86_64: timeout 7200 s asked, capped at 1800 s (the lab's max_build_s)",
        "test unit on qemu-x86_64: timeout 5000 s asked, capped at 900 s (the lab's max_job_s)",
        "test unit on qemu-x86_64: network asked, off: device class qemu-x86_64 allows no network",
    ]


def test_at_tier_hardware_the_board_gets_its_own_caps_and_the_granted_network(runtime: Runtime) -> None:
    pipeline, jobs = jobs_of(runtime, checked_out(runtime, PLAN, "hardware"))
    hw = jobs["board-x86 hw"]
    assert hw.state == "pending" and hw.spec["device_class"] == "board-x86"
    assert {k: hw.spec[k] for k in ("timeout_s", "boot_timeout_s", "silence_timeout_s", "network")} == {
        "timeout_s": 1800, "boot_timeout_s": 600, "silence_timeout_s": 120, "network": True}  # fmt: skip
    assert "test hw on board-x86: timeout 5000 s asked, capped at 1800 s (the lab's max_job_s)" in pipeline.notes
    assert not any("hw" in note and "network" in note for note in pipeline.notes)


def test_a_retest_keeps_a_test_drafted_as_a_skip_a_skip(runtime: Runtime) -> None:
    """A re-run repeats a test whose build runs again; a test no class of its tier may run has no class
    to go to, and stays the skip it was (never a job sent to no queue)."""
    pipeline_id = checked_out(runtime, PLAN, "qemu")
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        for job in pipeline.jobs:
            if job.state != "done":
                job.state, job.result = "done", "fail" if job.kind == "build" else "skip"
        pipeline.state, pipeline.result = "done", "fail"
    again = retest_failed(runtime, pipeline_id)
    assert again is not None
    _, jobs = jobs_of(runtime, again)
    hw = jobs["board-x86 hw"]
    assert (hw.state, hw.result, hw.reused_from_id is not None) == ("done", "skip", True)
    assert jobs["x86_64"].state != "done"  # the failed build runs again
