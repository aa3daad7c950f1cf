"""Staging branches where there is no webhook: a local bare repository stands for git.kernel.org. Its
branch moves twice, a fast-forward and then a forced rewrite; each move is one post-merge pipeline
against the previous head, run by real workers, and the rewrite is reported as one."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.forges.gitremote.poller import poll_all, remote_heads
from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import load_config
from bot.reporting.job_reports import post_merge_comparison
from bot.reporting.pipeline_views import PipelineView, pipeline_view
from bot.store.models import Pipeline
from tests.conftest import EXAMPLES, make_git_repo
from workers.errors import InfraError

PATCHES = EXAMPLES / "hello" / "patches"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


@dataclass
class Remote:
    services: Services
    work: Path  # a maintainer's clone, pushing to the bare "kernel.org" repository

    def push(self, *args: str) -> str:
        git(self.work, "push", "-q", *args, "origin", "HEAD:refs/heads/staging")
        return git(self.work, "rev-parse", "HEAD")

    def wait(self, pipeline_id: int, timeout_s: float = 180) -> PipelineView:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = pipeline_view(self.services.runtime, pipeline_id)
            if view.state == "done":
                return view
            time.sleep(0.2)
        raise AssertionError(f"pipeline {pipeline_id} not done after {timeout_s} s")

    def comparison(self, pipeline_id: int) -> str:
        with self.services.runtime.store.session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
            assert pipeline is not None
            return post_merge_comparison(session, pipeline)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    origin = make_git_repo(EXAMPLES / "hello", tmp_path / "origin")
    bare = tmp_path / "kernel.org" / "hello.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(origin), str(bare)], check=True)
    git(bare, "branch", "staging", "main")
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", "-b", "staging", str(bare), str(work)], check=True)
    config_path = tmp_path / "labgate.yaml"
    config_path.write_text(f"data_dir: data\ncaps: {{max_build_s: 120, max_job_s: 120}}\n"
                           f"trees:\n  - name: hello\n    url: {bare}\n    staging_branches: [staging]\n"
                           f"    poll_staging: true\n")  # fmt: skip
    services = open_services(load_config(config_path), config_path)
    try:
        start_all_workers(services)
        yield Remote(services, work)
    finally:
        services.stop()


def test_a_fast_forward_then_a_rewrite(remote: Remote) -> None:
    runtime = remote.services.runtime
    first = git(remote.work, "rev-parse", "HEAD")
    assert poll_all(runtime) == [f"hello: staging: first seen at {first[:12]}"]
    assert poll_all(runtime) == [], "a head that did not move starts nothing"

    git(remote.work, "am", "-q", str(PATCHES / "pass.patch"))
    forward = remote.push()
    (line,) = poll_all(runtime)
    assert line.startswith(f"hello: staging: {first[:12]} -> {forward[:12]}: post-merge pipeline ")
    moved = remote.wait(int(line.rsplit(" ", 1)[1]))
    assert (moved.result, moved.base_sha, moved.head_sha) == ("pass", first, forward)
    assert remote.comparison(moved.id).startswith("First run on this branch")

    git(remote.work, "reset", "-q", "--hard", first)
    git(remote.work, "am", "-q", str(PATCHES / "fail.patch"))
    rewritten = remote.push("--force")
    (line,) = poll_all(runtime)
    again = remote.wait(int(line.rsplit(" ", 1)[1]))
    assert (again.result, again.base_sha, again.head_sha) == ("fail", forward, rewritten)
    text = remote.comparison(again.id)
    assert text.startswith("The branch was rewritten") and f"pipeline {moved.id}" in text
    assert "new failure" not in text.lower()
    assert poll_all(runtime) == []
    with runtime.store.session() as session:
        assert [p.kind for p in session.scalars(select(Pipeline))] == ["post-merge", "post-merge"]


def test_an_unreachable_remote_is_an_infrastructure_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="git ls-remote .*nowhere"):
        remote_heads(str(tmp_path / "nowhere.git"), ["main"])
