"""Workers on other hosts: the checkout, build and lab workers each with a data dir of its own and no path
shared with the control side or each other; every blob moves through the web's exchange route with the
job's signed grants, and one pipeline passes end to end (one QEMU boot)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bot.host.bring_up import Services, open_services, served_queues
from bot.host.config import Config
from bot.host.supervise import labgate_argv
from bot.pipelines.exchange_grants import EXCHANGE_URL_ENV
from bot.pipelines.lifecycle import Submission, submit
from bot.reporting.pipeline_views import pipeline_view
from bot.store.models import Job
from bot.web.app import create_app
from tests.conftest import EXAMPLES, make_git_repo
from workers.app import BUILD_QUEUE, CHECKOUT_QUEUE, CONTROL_QUEUE, RESULTS_QUEUE, lab_queue
from workers.artifacts import ArtifactStore

pytestmark = pytest.mark.slow
LAB_QUEUE = lab_queue("qemu-x86_64")
JOB_QUEUES = (CHECKOUT_QUEUE, BUILD_QUEUE, LAB_QUEUE)


def _serve_web(services: Services, listener: socket.socket) -> tuple[uvicorn.Server, threading.Thread]:
    """The web app (with its exchange route) on the listener, in this process."""
    server = uvicorn.Server(uvicorn.Config(create_app(services.runtime), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.05)
    return server, thread


def _host_env(services: Services, queue: str, host: Path) -> dict[str, str]:
    """What a job worker on a host of its own is configured with: its broker URL and role, its own dirs."""
    env = services.worker_env([queue])
    shared = {key: value for key, value in env.items() if str(services.runtime.data_dir) in value}
    assert set(shared) == {"LABGATE_WORK_DIR", "LABGATE_ARTIFACTS_DIR"}  # what one host's workers share
    return {**env, "LABGATE_WORK_DIR": str(host / "work"), "LABGATE_ARTIFACTS_DIR": str(host / "artifacts")}


@pytest.fixture
def separate_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   redis_db_url: str) -> Iterator[tuple[Services, dict[str, Path]]]:  # fmt: skip
    # The broker over TCP, as other hosts reach it (a private broker listens on a socket in the data dir).
    config = Config(data_dir=tmp_path / "control", broker_url=redis_db_url,
                    caps={"max_build_s": 120, "max_job_s": 120})  # fmt: skip
    services = open_services(config, None)
    server = None
    try:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        # Set before the web app is made (it mounts the route) and the control worker starts (it inherits
        # labgate's environment and issues the grants).
        monkeypatch.setenv(EXCHANGE_URL_ENV, f"http://127.0.0.1:{listener.getsockname()[1]}/exchange")
        server, thread = _serve_web(services, listener)
        services.start_worker([CONTROL_QUEUE])
        services.start_worker([RESULTS_QUEUE])
        hosts = {queue: tmp_path / f"host-{queue}" for queue in JOB_QUEUES}
        for queue, host in hosts.items():
            argv = labgate_argv("worker", "--queues", queue, "--concurrency", "1")
            services.supervisor.start(f"worker {queue}", argv, _host_env(services, queue, host), host / "worker.log",
                                      inherit_env=False)  # fmt: skip
        deadline = time.monotonic() + 60
        while not {CONTROL_QUEUE, RESULTS_QUEUE, *JOB_QUEUES} <= served_queues(0.5):
            assert time.monotonic() < deadline, "workers did not come up"
        yield services, hosts
    finally:
        services.stop()
        if server is not None:
            server.should_exit = True
            thread.join(10)


def test_checkout_build_and_lab_workers_share_no_disk_and_the_pipeline_passes(
        separate_hosts: tuple[Services, dict[str, Path]], tmp_path: Path) -> None:  # fmt: skip
    services, hosts = separate_hosts
    hello = make_git_repo(EXAMPLES / "hello", tmp_path / "hello")
    patch = EXAMPLES / "hello" / "patches" / "pass.patch"
    pipeline_id = submit(services.runtime, Submission(
        tree_name="hello", tree_url=str(hello), source="test", external_id="separate-hosts", base_ref="main",
        patches=((patch.name, patch.read_bytes()),)))  # fmt: skip
    deadline = time.monotonic() + 240
    while (view := pipeline_view(services.runtime, pipeline_id)).state != "done":
        assert time.monotonic() < deadline, f"pipeline still {view.state}: {view.jobs}"
        time.sleep(0.2)
    assert [(j.kind, j.result) for j in view.jobs] == [("checkout", "pass"), ("build", "pass"), ("test", "pass")], \
        view.jobs
    control = services.runtime.artifacts
    with services.runtime.store.session() as session:
        jobs = {job.kind: job for job in session.query(Job).filter(Job.pipeline_id == pipeline_id)}
        checkout, build, test = jobs["checkout"], jobs["build"], jobs["test"]
        bundle = str(checkout.outputs["bundle_digest"])
        built = [ref["digest"] for ref in build.outputs["artifacts"].values()]
        # Each log, the bundle and every artifact the workers made is in the control side's store.
        assert all(control.has(digest) for digest in (build.log_digest, test.log_digest, bundle, *built))
    # The build host had the tested commit from its own mirror of the tree plus the bundle; the lab host
    # had the build's artifacts from the exchange, each in its own store.
    assert (hosts[CHECKOUT_QUEUE] / "work" / "mirrors" / "hello.git" / "HEAD").exists()
    assert (hosts[BUILD_QUEUE] / "work" / "mirrors" / "hello.git" / "HEAD").exists()
    assert ArtifactStore(hosts[BUILD_QUEUE] / "artifacts").has(bundle)
    lab_store = ArtifactStore(hosts[LAB_QUEUE] / "artifacts")
    assert all(lab_store.has(digest) for digest in built)
    assert not (services.runtime.data_dir / "worker").exists()  # no job worker used the control's data dir
