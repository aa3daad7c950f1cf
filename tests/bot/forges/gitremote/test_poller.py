"""Staging branches where there is no webhook: a local bare repository stands for git.kernel.org. Its
branch moves twice, a fast-forward and then a forced rewrite; each move is one post-merge pipeline
against the previous head, run by real workers, and the rewrite is reported as one: on the results
page and in one mail per push to the tree's push_to (a real SMTP server, aiosmtpd, on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.forges.gitremote.poller import poll_all, remote_heads
from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import load_config
from bot.reporting.job_reports import post_merge_comparison
from bot.reporting.pipeline_views import PipelineView, pipeline_view
from bot.store.models import Pipeline
from tests.bot.forges.mail.conftest import LocalController, RecordingHandler
from tests.conftest import EXAMPLES, make_git_repo
from workers.errors import InfraError

PATCHES = EXAMPLES / "hello" / "patches"
LIST = "hello-devel@example.org"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


@dataclass
class Remote:
    services: Services
    work: Path  # a maintainer's clone, pushing to the bare "kernel.org" repository
    mail: RecordingHandler  # what the SMTP server took

    def mail_about(self, pipeline_id: int, timeout_s: float = 60) -> EmailMessage:
        """The one report mail of a pipeline (told apart by its results link)."""
        link = f"/pipelines/{pipeline_id}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [m.message for m in self.mail.received if link in m.message.get_content()]
            if found:
                time.sleep(1)  # a second one would have come by now
                assert len([m for m in self.mail.received if link in m.message.get_content()]) == 1
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no report mail for pipeline {pipeline_id} after {timeout_s} s")

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
    handler = RecordingHandler()
    smtp = LocalController(handler, hostname="127.0.0.1", port=0, server_hostname="mx.test", ready_timeout=10)
    smtp.start()
    config_path = tmp_path / "labgate.yaml"
    # One run per bisection step: a push with a new failure starts one (bot/pipelines/bisection.py).
    config_path.write_text(f"data_dir: data\ncaps: {{max_build_s: 120, max_job_s: 120}}\ntriage: {{bisect_runs: 1}}\n"
                           f"smtp: {{host: 127.0.0.1, port: {smtp.port}, starttls: false, sender: 'ci@example.org'}}\n"
                           f"trees:\n  - name: hello\n    url: {bare}\n    staging_branches: [staging]\n"
                           f"    poll_staging: true\n    mail: {{report: true, push_to: [{LIST}]}}\n")  # fmt: skip
    services = open_services(load_config(config_path), config_path)
    try:
        start_all_workers(services)
        yield Remote(services, work, handler)
    finally:
        services.stop()
        smtp.stop()


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
    mail = remote.mail_about(moved.id)
    assert mail["To"] == LIST and mail["In-Reply-To"] is None
    assert mail["Subject"] == f"labgate: hello staging at {forward[:12]}"
    body = mail.get_content()
    assert body.splitlines()[0] == "7 passed"  # the verdict line first (bot/core/render.py)
    assert "labgate: pass" in body and "First run on this branch" in body
    assert f"labgate try {remote.services.runtime.config.trees[0].url} --ref {forward}" in body

    git(remote.work, "reset", "-q", "--hard", first)
    git(remote.work, "am", "-q", str(PATCHES / "fail.patch"))
    rewritten = remote.push("--force")
    (line,) = poll_all(runtime)
    again = remote.wait(int(line.rsplit(" ", 1)[1]))
    assert (again.result, again.base_sha, again.head_sha) == ("fail", forward, rewritten)
    text = remote.comparison(again.id)
    assert text.startswith("The branch was rewritten") and f"pipeline {moved.id}" in text
    assert "new failure" not in text.lower()
    body = remote.mail_about(again.id).get_content()
    assert body.splitlines()[0].startswith("1 failed") and "labgate: fail" in body
    assert "math.mul" in body  # the failing test, by name
    assert "The branch was rewritten" in body and "New failures since" not in body
    assert poll_all(runtime) == []
    with runtime.store.session() as session:
        assert [p.kind for p in session.scalars(select(Pipeline))] == ["post-merge", "post-merge"]


def test_an_unreachable_remote_is_an_infrastructure_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="git ls-remote .*nowhere"):
        remote_heads(str(tmp_path / "nowhere.git"), ["main"])
