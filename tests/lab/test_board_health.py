"""A board's faults are results that name the place, never retries or the change's failures; a job avoids the
places it failed on; a health check keeps a broken place offline and brings a mended one back, while jobs run
on the other place. On the stand-in lab: a real coordinator, exporter and PDU, one fault injected at an outlet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.places import Coordinator, Identity
from tests.lab.conftest import KERNEL_CACHE
from tests.lab.standin_lab import ENVIRONMENT, standin
from workers.artifacts import ArtifactStore
from workers.errors import InfraError
from workers.spec import INCOMPLETE_POWER, JobResult, JobSpec, LabgridTarget, QemuSpec, TestCommand, TestSpec
from workers.standin.lab import StandinLab
from workers.testjob import run_board_job

__all__ = ["standin"]  # the fixture, imported for this module's tests

RunJob = Callable[..., JobResult]
KTAP = "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 board-alive'"


@pytest.fixture
def run_job(standin: StandinLab, debian_kernel: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[RunJob]:  # fmt: skip
    monkeypatch.setenv("LABGATE_CACHE_DIR", str(KERNEL_CACHE.expanduser().parent))  # the fixture's kernel
    store = ArtifactStore(tmp_path / "artifacts")
    counter = iter(range(100, 200))

    def run(avoid: tuple[str, ...] = (), health_check: str | None = None, environment: str = "") -> JobResult:
        job_id = next(counter)
        spec = JobSpec(
            job_id=job_id, pipeline_id=1, kind="test", tree_name="t", tree_url="https://example.org/t.git",
            max_log_bytes=1 << 20,
            test=TestSpec(name="alive", device_class="board-x86", qemu=QemuSpec(), kernel="debian", artifacts={},
                          commands=(TestCommand(name="ktap", run=KTAP),), timeout_s=120,
                          labgrid=LabgridTarget(coordinator=standin.coordinator, place_tags=standin.tags,
                                                environment=environment or ENVIRONMENT.read_text()),
                          avoid_places=avoid, health_check_place=health_check),
        )  # fmt: skip
        return run_board_job(spec, 1, tmp_path / "worker", store)

    yield run


def _state(lab: StandinLab, place: str) -> tuple[str | None, str]:
    observer = Coordinator(lab.coordinator, Identity("test", "observer"))
    try:
        state = observer.places()[place]
        return state.offline_reason, state.acquired or ""
    finally:
        observer.close()


@pytest.mark.slow
def test_a_dead_outlet_is_an_incomplete_result_a_failing_health_check_keeps_the_place_out_a_passing_one_brings_it_back(
    standin: StandinLab, run_job: RunJob
) -> None:
    run = run_job
    broken, good = standin.places
    standin.inject_power_fault(broken, "relay welded")
    try:
        # A job sent to the broken place (it avoids the good one): a result naming the place, not an exception.
        result = run(avoid=(good,))
        assert (result.result, result.error_code) == ("incomplete", INCOMPLETE_POWER), result
        assert result.outputs["place"] == broken and result.outputs["failed_step"] == "power off"
        assert result.outputs["avoided"] == f"avoided {good}" and result.outputs["waited_for"] == ""
        assert f"place {broken}: power off failed" in (result.error_message or "")
        assert "500 Server Error" in (result.error_message or "")  # what labgrid says of a dead outlet
        assert _state(standin, broken) == (None, ""), "a job's place is released after a fault too"

        # Its health check fails the same way: the place stays offline, and says why.
        check = run(health_check=broken)
        assert (check.result, check.error_code) == ("incomplete", INCOMPLETE_POWER), check
        assert check.outputs["health_check"] == {"place": broken, "passed": False, "online": False}
        reason, holder = _state(standin, broken)
        assert holder.endswith("/labgate-offline")
        assert reason is not None and reason.startswith("health check failed: incomplete (power-driver-error)")
        assert "power off failed" in reason

        # Meanwhile jobs by tags run on the other place.
        ran = run()
        assert ran.result == "pass", ran
        assert ran.outputs["place"] == good and "avoided" not in ran.outputs
    finally:
        standin.clear_power_fault(broken)

    # Mended: its health check boots it, passes, and puts it back in service.
    check = run(health_check=broken)
    assert check.result == "pass", check
    assert check.outputs["place"] == broken
    assert check.outputs["health_check"] == {"place": broken, "passed": True, "online": True}
    assert _state(standin, broken) == (None, "")


def test_a_broken_environment_template_is_the_classs_fault_not_the_places(standin: StandinLab, run_job: RunJob) -> None:
    """A template error is no place's fault: counted against places, it would take every one of them offline."""
    with pytest.raises(InfraError, match="the device class's labgrid environment"):
        run_job(environment="targets: {main: [")
    for place in standin.places:
        assert _state(standin, place) == (None, ""), "the place is released"
