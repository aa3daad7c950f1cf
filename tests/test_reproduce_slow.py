"""End to end: `labgate try` of examples/hello's fail.patch, then `labgate reproduce` of its failing test job
rebuilds and reboots exactly that job on this machine's workers and prints the same failing test, read from
the local store and fetched from the server's API; a board job of the server is reproduced on QEMU and
says so. Real workers on a real Redis, real git, bwrap and QEMU."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import Config, DeviceClass, LabgridPlaces
from bot.host.stores import open_runtime
from bot.store.models import Job, Pipeline
from bot.web.app import create_app
from tests.conftest import EXAMPLES, REPO_ROOT, make_git_repo
from tests.fakes.served import ServedApp

pytestmark = [pytest.mark.slow, pytest.mark.needs("qemu", "the test job boots the Debian kernel on QEMU"),
              pytest.mark.needs("busybox", "the initramfs is busybox")]  # fmt: skip
PATCHES = EXAMPLES / "hello" / "patches"
FAILING = "not ok math.mul"


@dataclass
class Lab:
    services: Services
    config: Config
    config_path: Path
    hello: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)  # fmt: skip

    def test_jobs(self, pipeline_id: int) -> list[Job]:
        with self.services.runtime.store.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.pipeline_id == pipeline_id, Job.kind == "test")))
            session.expunge_all()
        return [job for job in jobs if "triage" not in job.spec]  # the change's own, not its triage runs

    def last_pipeline(self) -> int:
        with self.services.runtime.store.session() as session:
            found = session.scalar(select(Pipeline.id).order_by(Pipeline.id.desc()))
        assert found is not None
        return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("reproduce")
    config_path = root / "labgate.yaml"
    # Triage off: the job to reproduce is the failing one, not its re-runs (tests/test_triage_e2e.py has those).
    config_path.write_text(f"data_dir: {root / 'data'}\ncaps: {{max_build_s: 120, max_job_s: 120}}\n"
                           "triage: {enabled: false}\n")
    config = Config(data_dir=root / "data", caps={"max_build_s": 120, "max_job_s": 120},  # type: ignore[arg-type]
                    triage={"enabled": False})  # type: ignore[arg-type]
    services = open_services(config, config_path)
    try:
        start_all_workers(services)
        yield Lab(services, config, config_path, make_git_repo(EXAMPLES / "hello", root / "hello"))
    finally:  # also when the workers never came up: none may outlive the module
        services.stop()


@pytest.fixture(scope="module")
def failed(lab: Lab) -> Job:
    """The test job of `labgate try` of fail.patch, as the README's demo runs it (once for the module)."""
    tried = lab.cli("try", str(lab.hello), "--base", "main", "--patch", str(PATCHES / "fail.patch"))
    assert tried.returncode == 1 and FAILING in tried.stdout, tried.stdout + tried.stderr
    (test_job,) = lab.test_jobs(lab.last_pipeline())
    assert test_job.result == "fail"
    return test_job


def test_reproduce_prints_the_same_failing_test(lab: Lab, failed: Job) -> None:
    original, test_job = failed.pipeline_id, failed

    again = lab.cli("reproduce", str(test_job.id))
    out = again.stdout
    assert again.returncode == 1, out + again.stderr
    assert f"reproducing job {test_job.id} (test qemu-x86_64 unit)" in out and "it ended fail there" in out
    assert "patch fail.patch" in out
    assert FAILING in out and "expected 42" in out  # the same failing test, with its first output lines
    assert "qemu-x86_64 unit" in out and f"NOTE: reproduction of job {test_job.id}" in out
    reproduced = lab.last_pipeline()
    assert reproduced != original
    (rerun,) = lab.test_jobs(reproduced)
    assert (rerun.name, rerun.result, rerun.spec["commands"]) == (test_job.name, "fail", test_job.spec["commands"])

    # The same through the server's API, as a report's command runs it.
    with ServedApp(create_app(lab.services.runtime), "labgate web") as served:
        remote = lab.cli("reproduce", str(test_job.id), "--server", served.base_url)
    assert remote.returncode == 1 and FAILING in remote.stdout, remote.stdout + remote.stderr
    assert f"from {served.base_url}" in remote.stdout


def test_a_board_job_is_reproduced_on_the_closest_qemu_class_and_says_so(lab: Lab, failed: Job,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """The server ran the test on a board class (here: its config calls the job's class a labgrid board);
    this machine has no board, so the job boots on its QEMU class of the same arch."""
    test_job = failed
    environment = tmp_path / "env.yaml.j2"
    environment.write_text("targets: {}\n")
    board = DeviceClass(name="qemu-x86_64", tags={"arch": "x86_64", "board": "nuc"}, lab="labgrid",
                        labgrid=LabgridPlaces(coordinator="127.0.0.1:20408", place_tags={"board": "nuc"},
                                              environment=environment))  # fmt: skip
    server = open_runtime(lab.config.model_copy(update={"device_classes": [board]}), create=False)
    try:
        with ServedApp(create_app(server), "labgate web with boards") as served:
            remote = lab.cli("reproduce", str(test_job.id), "--server", served.base_url)
    finally:
        server.store.engine.dispose()
    out = remote.stdout
    assert remote.returncode == 1 and FAILING in out, out + remote.stderr
    assert ("NOTE: job ran on board class qemu-x86_64; reproduced on the closest QEMU class qemu-x86_64 "
            "(same arch=x86_64)") in out  # fmt: skip
