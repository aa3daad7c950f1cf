"""Credentials: a private repository is cloned with a per-job, read-only, one-repository token that
appears nowhere else; a token planted in a URL is refused everywhere and lands nowhere."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import select
from starlette.testclient import TestClient

from bot.host.config import load_config
from bot.reporting.page_links import page_url
from bot.store.models import Job
from bot.web.app import create_app
from tests.conftest import EXAMPLES, REPO_ROOT, make_git_repo
from tests.fakes.github_api import FakeGitHub
from tests.scenarios.running import git, running_labgate
from tests.scenarios.test_github_scenarios import INSTALLATION, PATCHES, PIPELINE_CHECKS, REPO, SECRET, World
from workers.app import broker_redis
from workers.checkout import git as worker_git
from workers.errors import ConfigError

PLANTED = "ghp_PLANTEDplantedPLANTED0123456789ab"


@pytest.fixture(scope="module")
def private_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("private")
    origin = make_git_repo(EXAMPLES / "hello", root / "origin")
    with FakeGitHub() as fake:
        fake.add_repo(REPO, private=True)
        fake.add_installation(INSTALLATION, [REPO])
        clone_url = fake.serve_git(REPO, origin / ".git", private=True)
        (root / "app.pem").write_text(fake.private_key_pem)
        (root / "secret").write_text(SECRET)
        (root / "labgate.yaml").write_text(
            f"data_dir: {root / 'data'}\n"
            f"github: {{app_id: {fake.app_id}, private_key_file: {root / 'app.pem'}, "
            f"webhook_secret_file: {root / 'secret'}, api_url: '{fake.base_url}', write_interval_s: 0}}\n"
            f"trees:\n  - name: hello\n    url: {clone_url}\n    private: true\n"
            f"    github: {{repo: {REPO}}}\n"
        )
        with running_labgate(root / "labgate.yaml") as services:
            yield World(fake, services, TestClient(create_app(services.runtime)), origin,
                        git(origin, "rev-parse", "HEAD"))  # fmt: skip


def _everything_published(world: World) -> bytes:
    """Logs, the database file, every key and value in the broker, the job pages, mirrors' config."""
    data = world.services.runtime.data_dir
    blobs = [path.read_bytes() for path in data.rglob("*") if path.is_file() and not path.is_socket()]
    client: redis.Redis = broker_redis(world.services.broker_url)
    for key in client.scan_iter():
        kind = client.type(key)
        blobs.append(key)
        if kind == b"string":
            blobs.append(client.get(key) or b"")
        elif kind == b"list":
            blobs += client.lrange(key, 0, -1)
        elif kind == b"hash":
            blobs += [v for pair in client.hgetall(key).items() for v in pair]
        elif kind in (b"set", b"zset"):
            blobs += list(client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1))
    # Every job's page and log, opened as a maintainer would: with the signed link its report carries
    # (the tree is private: without it they are 404 and would show nothing).
    runtime = world.services.runtime
    with runtime.store.session() as session:
        jobs = [(j.id, j.pipeline_id, j.pipeline.revision.change.tree.name) for j in session.scalars(select(Job))]
    assert jobs
    for job_id, pipeline_id, tree in jobs:
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/log"):
            url = urlsplit(page_url(runtime.config, runtime.data_dir, path, tree, pipeline_id))
            page = world.client.get(f"{url.path}?{url.query}")
            assert page.status_code == 200 or (path.endswith("/log") and page.status_code == 404), (path, page)
            blobs.append(page.content)
    return b"\n".join(blobs)


def test_a_private_repository_is_cloned_with_a_per_job_read_token_that_goes_nowhere(private_world: World) -> None:
    world = private_world
    anonymous = subprocess.run(["git", "ls-remote", f"{world.fake.base_url}/{REPO}.git"], capture_output=True,
                               text=True, env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert anonymous.returncode != 0  # private: no clone without a token (the test can fail)
    sha = world.push_pull(1, PATCHES / "pass.patch")
    assert world.post("pull_request", world.pull_payload("opened", 1, sha)).status_code == 202
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    assert {runs[n]["conclusion"] for n in PIPELINE_CHECKS} == {"success"}, runs

    minted = world.fake.requests_to("POST", rf"/app/installations/{INSTALLATION}/access_tokens")
    read_tokens = [r for r in minted if (r.json or {}).get("permissions") == {"contents": "read"}]
    assert read_tokens and all(r.json["repositories"] == ["hello"] for r in read_tokens)
    clones = world.fake.requests_to("GET", rf"/{REPO}\.git/info/refs")
    assert [r.status for r in clones if r.headers.get("authorization")] == [200] * len(read_tokens)
    tokens = [t["value"] for t in world.fake.tokens_for(REPO) if t["permissions"] == {"contents": "read"}]
    assert len(tokens) == len(read_tokens)
    published = _everything_published(world)
    for token in tokens:
        assert token.encode() not in published
    mirrors = world.services.runtime.data_dir / "worker" / "mirrors"
    assert all("x-access-token" not in p.read_text() for p in mirrors.rglob("config"))
    assert list((world.services.runtime.data_dir / "worker" / "credentials").iterdir()) == []


def test_a_token_planted_in_a_url_is_refused_everywhere_and_lands_nowhere(private_world: World,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    world = private_world
    planted_url = f"https://x-access-token:{PLANTED}@github.com/{REPO}.git"
    bad_config = tmp_path / "labgate.yaml"
    bad_config.write_text(f"data_dir: {tmp_path / 'data'}\ntrees:\n  - name: hello\n    url: {planted_url}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(bad_config)
    assert "trees.0.url" in str(refused.value) and PLANTED not in str(refused.value)
    checked = subprocess.run([sys.executable, "-m", "bot.cli", "config", "check", str(bad_config)],
                             capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert checked.returncode == 2 and PLANTED not in checked.stdout + checked.stderr
    argv = [sys.executable, "-m", "bot.cli", "try", planted_url, "--config", str(world.services.config_path)]
    tried = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT)
    assert tried.returncode == 2 and "carries credentials" in tried.stderr
    assert PLANTED not in tried.stdout + tried.stderr
    # git itself refuses such a URL too, as the workers run it, should one ever reach a worker.
    cloned = worker_git(["clone", planted_url, str(tmp_path / "c")], tmp_path, check=False)
    assert cloned.returncode != 0 and "uses plaintext credentials" in cloned.stderr
    assert PLANTED not in cloned.stderr
    assert PLANTED.encode() not in _everything_published(world)
    assert all(PLANTED not in str(r) for r in world.fake.requests)
