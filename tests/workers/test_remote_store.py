"""A worker on another host: its inputs fetched and verified into its own store, its outputs uploaded,
its source from its own mirror plus the checkout's bundle. The control side is the real exchange route."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.exchange_grants import EXCHANGE_URL_ENV, job_exchange
from bot.web.artifact_exchange import exchange_routes
from workers.artifacts import ArtifactStore
from workers.checkout import fetch_tested_commit, make_bundle, prepare_checkout
from workers.errors import InfraError
from workers.remote_store import fetch, output_digests, upload
from workers.spec import Exchange, JobResult

PATCH = (Path(__file__).resolve().parents[2] / "examples" / "hello" / "patches" / "pass.patch").read_bytes()


@dataclass
class Hosts:
    control: Runtime
    client: TestClient
    worker: ArtifactStore

    def grants(self, job_id: int, downloads: list[str]) -> Exchange:
        exchange = job_exchange(self.control.config, self.control.data_dir, job_id, downloads)
        assert exchange is not None
        return exchange


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosts]:
    monkeypatch.setenv(EXCHANGE_URL_ENV, "http://testserver/exchange")
    control = open_runtime(Config(data_dir=tmp_path / "control"), database_url=f"sqlite:///{tmp_path}/db.sqlite")
    with TestClient(Starlette(routes=exchange_routes(control))) as client:
        yield Hosts(control, client, ArtifactStore(tmp_path / "worker" / "artifacts"))


def _tamper(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)


def test_a_granted_blob_arrives_verified_and_a_tampered_one_never_becomes_visible(hosts: Hosts) -> None:
    good = hosts.control.artifacts.put_bytes(b"a kernel image")
    bad = hosts.control.artifacts.put_bytes(b"an initramfs")
    _tamper(hosts.control.artifacts.path_of(bad), b"an initramfs, tampered on the way")
    exchange = hosts.grants(1, [good, bad])
    fetch(exchange, good, hosts.worker, hosts.client)
    assert hosts.worker.get_bytes(good) == b"a kernel image"
    with pytest.raises(InfraError, match="hash to"):
        fetch(exchange, bad, hosts.worker, hosts.client)
    assert not hosts.worker.has(bad)
    assert not [p for p in hosts.worker.root.rglob(".in-*")]


def test_a_job_cannot_fetch_what_it_was_not_granted(hosts: Hosts) -> None:
    theirs = hosts.control.artifacts.put_bytes(b"another job's patch")
    mine = hosts.grants(1, [])
    with pytest.raises(InfraError, match="no grant"):
        fetch(mine, theirs, hosts.worker, hosts.client)
    # Their grant's query under my exchange: the signature names their digest and job, the route refuses it.
    stolen = mine.model_copy(update={"downloads": {theirs: hosts.grants(1, [hosts.control.artifacts.put_bytes(
        b"mine")]).downloads.popitem()[1]}})  # fmt: skip
    with pytest.raises(InfraError, match="403"):
        fetch(stolen, theirs, hosts.worker, hosts.client)


def test_outputs_named_by_a_result_reach_the_control_store(hosts: Hosts) -> None:
    log, kernel = hosts.worker.put_bytes(b"build log"), hosts.worker.put_bytes(b"bzImage")
    result = JobResult(job_id=1, delivery=1, result="pass", log_digest=log,
                       outputs={"artifacts": {"bzImage": {"digest": kernel, "mode": 0o644}}})  # fmt: skip
    exchange = hosts.grants(1, [])
    for digest in output_digests(result):
        upload(exchange, digest, hosts.worker, hosts.client)
    assert hosts.control.artifacts.get_bytes(log) == b"build log"
    assert hosts.control.artifacts.get_bytes(kernel) == b"bzImage"


def test_a_blob_that_changed_in_the_workers_store_is_refused_by_the_control_side(hosts: Hosts) -> None:
    digest = hosts.worker.put_bytes(b"the real log")
    _tamper(hosts.worker.path_of(digest), b"a forged log")
    with pytest.raises(InfraError, match="422"):
        upload(hosts.grants(1, []), digest, hosts.worker, hosts.client)
    assert not hosts.control.artifacts.has(digest)


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_a_build_host_gets_the_tested_commit_from_its_own_mirror_and_the_bundle(hello_repo: Path,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    checkout_mirror, build_mirror = tmp_path / "checkout" / "hello.git", tmp_path / "build" / "hello.git"
    outcome = prepare_checkout(checkout_mirror, str(hello_repo), base_ref="main", ref=None, patches=[("p", PATCH)],
                               plan_path=".labgate/plan.yaml", plan_from="head", worktree=tmp_path / "wt",
                               keep_ref="refs/labgate/pipelines/1")  # fmt: skip
    bundle = tmp_path / "tested.bundle"
    assert make_bundle(checkout_mirror, "refs/labgate/pipelines/1", outcome.base_sha, bundle)
    with pytest.raises(InfraError, match="neither in the tree nor in a bundle"):
        fetch_tested_commit(build_mirror, str(hello_repo), outcome.tested_sha, None)
    # A bundle whose bytes changed is refused by git; the commit never appears.
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(bundle.read_bytes())
    data[-30] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(InfraError):
        fetch_tested_commit(build_mirror, str(hello_repo), outcome.tested_sha, tampered)
    fetch_tested_commit(build_mirror, str(hello_repo), outcome.tested_sha, bundle)
    kept = f"refs/labgate/bundles/{outcome.tested_sha}/pipelines/1"  # the bundle's refs, under the commit's name
    assert _git(build_mirror, "rev-parse", kept) == outcome.tested_sha
    # A bundle of another commit does not stand in for the tested one.
    with pytest.raises(InfraError, match="does not hold the tested commit"):
        fetch_tested_commit(tmp_path / "other" / "hello.git", str(hello_repo), "1" * 40, bundle)
    # Testing the base itself: there is nothing to bundle, the tree has it all.
    assert not make_bundle(checkout_mirror, "refs/heads/main", outcome.base_sha, tmp_path / "none.bundle")
