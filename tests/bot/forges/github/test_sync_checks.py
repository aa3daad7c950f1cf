"""sync_checks against FakeGitHub through PyGithub, failing half-way: a lost answer, GitHub down, our
store failing after GitHub acted. Afterwards there is exactly one check run per job, in its final
state, and no transaction was open during any HTTP call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from github import GithubException
from sqlalchemy import event, select

from bot.forges.github.client import GitHubApp, make_retry
from bot.forges.github.reporter import sync_checks
from bot.host.config import Config, Tree, Web
from bot.host.retrying import is_transient
from bot.host.stores import Runtime, open_runtime
from bot.reporting.sinks import SUMMARY_LABEL
from bot.store import models
from bot.tasks import CLASSIFIERS
from tests.fakes.github_api import FakeGitHub

REPO = "octo-org/hello"
INSTALLATION = 77
HEAD = "c" * 40
JOBS = (("checkout", "checkout", "pass"), ("build", "x86_64", "pass"), ("test", "qemu-x86_64 unit", "fail"))
NAMES = {"labgate / checkout", "labgate / build x86_64", "labgate / qemu-x86_64 unit"}
CHECK_RUNS = r"/repos/octo-org/hello/check-runs"


@dataclass
class Stage:
    fake: FakeGitHub
    github: GitHubApp
    runtime: Runtime
    pipeline_id: int

    def set_jobs(self, state: str) -> None:
        with self.runtime.store.session() as session:
            pipeline = session.get(models.Pipeline, self.pipeline_id)
            assert pipeline is not None
            for job, (_, _, result) in zip(pipeline.jobs, JOBS, strict=True):
                job.state, job.result = state, result if state == "done" else None

    def runs(self) -> list[dict[str, object]]:
        """The jobs' check runs on the head."""
        return [r for r in self.fake.check_runs(REPO) if r["head_sha"] == HEAD and r["name"] != SUMMARY_LABEL]

    def summaries(self) -> list[dict[str, object]]:
        return [r for r in self.fake.check_runs(REPO) if r["head_sha"] == HEAD and r["name"] == SUMMARY_LABEL]

    def assert_one_final_run_per_job(self) -> None:
        runs = self.runs()
        assert sorted(str(r["name"]) for r in runs) == sorted(NAMES), runs
        conclusions = {r["name"]: (r["status"], r["conclusion"]) for r in runs}
        assert conclusions == {"labgate / checkout": ("completed", "success"),
                               "labgate / build x86_64": ("completed", "success"),
                               "labgate / qemu-x86_64 unit": ("completed", "failure")}  # fmt: skip
        with self.runtime.store.session() as session:
            rows = session.scalars(select(models.ForgeCheck).where(models.ForgeCheck.job_id.is_not(None))).all()
            assert sorted((r.check_id, r.sent_rank) for r in rows) == sorted((r["id"], 3) for r in runs)
            [summary] = session.scalars(select(models.ForgeCheck).where(models.ForgeCheck.job_id.is_(None))).all()
        # The pipeline is still running: one summary check run, in progress, never a second.
        [run] = self.summaries()
        assert (summary.check_id, summary.sent_rank, run["status"]) == (run["id"], 2, "in_progress")


@pytest.fixture(params=["sqlite", "postgresql"])
def stage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stage]:
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    config = Config(data_dir=tmp_path / "data", web=Web(public_url="https://ci.example.org"),
                    trees=[Tree(name="hello", url="https://example.org/hello.git")])  # fmt: skip
    runtime = open_runtime(config, database_url=url)
    with FakeGitHub() as fake:
        fake.add_repo(REPO)
        fake.add_installation(INSTALLATION, [REPO])
        github = GitHubApp(fake.app_id, fake.private_key_pem, fake.base_url, retry=make_retry(backoff_s=0),
                           write_interval_s=0)  # fmt: skip
        with runtime.store.session() as session:
            tree = models.Tree(name="hello", url="https://example.org/hello.git")
            change = models.Change(tree=tree, source="github", external_id=f"{REPO}#1", title="t", number=1,
                                   forge_repo=REPO, installation_id=INSTALLATION)  # fmt: skip
            revision = models.Revision(change=change, base_ref="main", head_sha=HEAD)
            pipeline = models.Pipeline(revision=revision, state="running")
            session.add(pipeline)
            for kind, name, _ in JOBS:
                session.add(models.Job(pipeline=pipeline, kind=kind, name=name, queue=kind, state="queued"))
            session.flush()
            pipeline_id = pipeline.id
        yield Stage(fake, github, runtime, pipeline_id)
    runtime.store.engine.dispose()


def test_a_lost_create_answer_is_found_not_posted_again(stage: Stage) -> None:
    stage.set_jobs("done")
    # GitHub creates the second job's check run, but its answer never arrives.
    stage.fake.lose_answer_next("POST", CHECK_RUNS, 502)
    with pytest.raises(GithubException) as lost:
        sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    assert lost.value.status == 502 and is_transient(lost.value, CLASSIFIERS)
    assert len(stage.runs()) == 1, "the create took effect although its answer was lost"
    sync_checks(stage.runtime, stage.github, stage.pipeline_id)  # the task's retry
    stage.assert_one_final_run_per_job()
    lookups = stage.fake.requests_to("GET", rf"/repos/{REPO}/commits/{HEAD}/check-runs")
    assert len(lookups) == 1, "only the create whose answer was lost is looked up"
    assert sync_checks(stage.runtime, stage.github, stage.pipeline_id) == 0, "a repeat sends nothing"


def test_github_down_mid_sync_then_back(stage: Stage) -> None:
    stage.set_jobs("queued")
    assert sync_checks(stage.runtime, stage.github, stage.pipeline_id) == 3 + 1  # the jobs' and the summary
    stage.set_jobs("done")
    # The second update fails on every try PyGithub makes (5 retries), then GitHub comes back.
    first_id = min(int(str(r["id"])) for r in stage.runs())
    stage.fake.fail_next("PATCH", CHECK_RUNS + rf"/(?!{first_id}$)\d+", 503, times=6)
    with pytest.raises(requests.exceptions.RetryError) as down:  # PyGithub's own retries spent
        sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    assert is_transient(down.value, CLASSIFIERS)
    with stage.runtime.store.session() as session:
        jobs = select(models.ForgeCheck).where(models.ForgeCheck.job_id.is_not(None))
        ranks = sorted(r.sent_rank for r in session.scalars(jobs))
    assert ranks == [1, 1, 3], "the update that went through is recorded, the failed ones are not"
    sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    stage.assert_one_final_run_per_job()


def test_store_failing_after_github_acted(stage: Stage) -> None:
    """The worker dies between GitHub's answer and recording the check id: the next sync finds it."""
    stage.set_jobs("done")
    engine = stage.runtime.store.engine
    seen = {"updates": 0}

    def fail_second_id_store(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE FORGE_CHECK"):
            seen["updates"] += 1
            if seen["updates"] == 3:  # checkout's id and rank went in; the build's id does not
                raise RuntimeError("the database went away")

    event.listen(engine, "before_cursor_execute", fail_second_id_store)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    finally:
        event.remove(engine, "before_cursor_execute", fail_second_id_store)
    assert len(stage.runs()) == 2
    sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    stage.assert_one_final_run_per_job()


def test_no_transaction_is_open_during_an_http_call(stage: Stage) -> None:
    stage.set_jobs("done")
    engine = stage.runtime.store.engine
    open_transactions: list[int] = []
    calls_inside: list[str] = []

    def ended(conn: object) -> None:
        if id(conn) in open_transactions:
            open_transactions.remove(id(conn))

    event.listen(engine, "begin", lambda conn: open_transactions.append(id(conn)))
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)
    original = stage.github._call

    def watched(*args: object, **kwargs: object) -> dict[str, object]:
        if open_transactions:
            calls_inside.append(str(args[1:3]))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    stage.github._call = watched  # type: ignore[method-assign]
    sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    assert len(stage.runs()) == 3 and len(stage.summaries()) == 1
    assert calls_inside == []


def test_a_cancelled_check_says_cancelled(stage: Stage) -> None:
    with stage.runtime.store.session() as session:
        pipeline = session.get(models.Pipeline, stage.pipeline_id)
        assert pipeline is not None
        for job in pipeline.jobs:
            job.state, job.error_code, job.error_message = "done", "cancelled", "cancelled by alice"
    sync_checks(stage.runtime, stage.github, stage.pipeline_id)
    runs = stage.runs()
    assert {(r["conclusion"], r["output"]["title"]) for r in runs} == {("cancelled", "cancelled")}  # type: ignore[index]
