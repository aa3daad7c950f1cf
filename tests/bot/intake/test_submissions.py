"""CI submissions made into pipelines (once, however often the task runs) and read back as a status, on the real
store (SQLite and PostgreSQL), the real broker, and the control task as the control worker runs it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy import func, select

from bot import submission_tasks
from bot.host.config import Config, Tree, Web, load_config
from bot.host.stores import Runtime, open_runtime, runtime_from_env
from bot.intake.submissions import (
    SOURCE,
    external_id_for,
    make_pipeline,
    submission_status,
    submission_version,
)
from bot.pipelines.lifecycle import START_PIPELINE_TASK, record_result, start_pipeline
from bot.store.ci_submissions import NewSubmission, open_submission_log
from bot.store.models import Change, CiSubmission, Job, Pipeline
from tests.conftest import EXAMPLES, make_git_repo
from workers.app import CHECKOUT_QUEUE, CONTROL_QUEUE, configure
from workers.checkout import mirror_path, prepare_checkout
from workers.spec import CheckoutSpec, JobResult, JobSpec

ISSUER = "https://token.actions.githubusercontent.com"
SHA = "a501fa6b" + "0" * 32
PATCH = (Path(__file__).resolve().parents[3] / "examples" / "hello" / "patches" / "pass.patch").read_text()
CLAIMS = {"repository": "octo-org/hello", "repository_id": "588298808", "ref": "refs/heads/main", "sha": SHA,
          "run_id": "3989419862"}  # fmt: skip


@dataclass
class Desk:
    runtime: Runtime
    broker: redis.Redis

    def submit(self, request: dict[str, Any], *, tree: str = "hello", tier: str = "qemu") -> int:
        """A submission stored as POST /api/v1/submissions stores it."""
        new = NewSubmission(issuer=ISSUER, jti=str(uuid.uuid4()), identity="github repository octo-org/hello "
                            "(id 588298808) at refs/heads/main, run 3989419862", tree=tree, tier=tier,
                            base_branch="main", request=request, claims=CLAIMS,
                            expires_at=datetime.now(UTC) + timedelta(minutes=5), token_sha256="0" * 64)  # fmt: skip

        async def store() -> int:
            log = open_submission_log(self.runtime.store)
            try:
                return (await log.store(new)).id
            finally:
                await log.close()

        return asyncio.run(store())

    def queued(self, queue: str = CONTROL_QUEUE) -> list[tuple[str, list[Any]]]:
        found = []
        for raw in reversed(self.broker.lrange(queue, 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append((message["headers"]["task"], args))
        return found

    def pipelines(self) -> list[Pipeline]:
        with self.runtime.store.session() as session:
            return list(session.scalars(select(Pipeline)))

    def row(self, submission_id: int) -> CiSubmission:
        with self.runtime.store.session() as session:
            row = session.get(CiSubmission, submission_id)
            assert row is not None
            return row


def write_config(root: Path) -> Path:
    """A labgate.yaml, as `labgate up` hands its path to the control worker."""
    trees = [Tree(name="hello", url=str(root / "origin"), branches=["main", "next"])]
    config = Config(data_dir=root / "data", trees=trees, web=Web(public_url="https://ci.example.org"))
    path = root / "labgate.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    return path


@pytest.fixture
def desk(tmp_path: Path, database_url: str, redis_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Desk]:
    config_path = write_config(tmp_path)
    monkeypatch.setenv("LABGATE_CONFIG", str(config_path))
    monkeypatch.setenv("LABGATE_DATABASE_URL", database_url)
    monkeypatch.delenv("LABGATE_DATA_DIR", raising=False)
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(load_config(config_path), database_url=database_url)
    runtime_from_env.cache_clear()
    broker = redis.Redis.from_url(redis_db_url)
    yield Desk(runtime, broker)
    runtime_from_env.cache_clear()
    broker.close()
    runtime.store.engine.dispose()


def test_the_control_task_run_twice_makes_one_pipeline_from_the_base_at_the_rules_tier(desk: Desk) -> None:
    submission_id = desk.submit({"sha": SHA, "title": "ci run"})
    for _ in range(2):  # a redelivered message, or the second of a replay's
        submission_tasks.ci_submission.apply(args=[submission_id]).get()
    [pipeline] = desk.pipelines()
    assert desk.row(submission_id).pipeline_id == pipeline.id
    assert desk.queued() == [(START_PIPELINE_TASK, [pipeline.id])]
    with desk.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline.id)
        assert pipeline is not None
        revision, change = pipeline.revision, pipeline.revision.change
        [checkout] = pipeline.jobs
        assert (pipeline.tier, pipeline.kind, pipeline.state) == ("qemu", "pre-merge", "queued")
        assert (change.source, change.external_id, change.title, change.author_trusted) == (
            SOURCE, "ci:token.actions.githubusercontent.com:588298808:3989419862", "ci run", True)  # fmt: skip
        assert change.submitter.startswith("github repository octo-org/hello")
        assert (revision.base_ref, revision.ref, revision.head_sha) == ("refs/heads/main", SHA, SHA)
        spec = CheckoutSpec.model_validate(checkout.spec)
    # The plan always comes from the base: the submitter's commit must not choose what judges it.
    assert (spec.base_ref, spec.ref, spec.plan_from, spec.patches, spec.merge) == ("refs/heads/main", SHA, "base",
                                                                                    (), False)  # fmt: skip


def test_a_task_run_twice_at_once_makes_one_pipeline(desk: Desk) -> None:
    """Two control workers on the same message: the once record's unique key lets one pipeline commit; the
    other attempt fails and, retried, finds it."""
    submission_id = desk.submit({"sha": SHA})
    failures: list[BaseException] = []

    def attempt() -> None:
        try:
            make_pipeline(desk.runtime, submission_id)
        except Exception as exc:  # the loser of the race: its task is retried
            failures.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    make_pipeline(desk.runtime, submission_id)  # the retry
    [pipeline] = desk.pipelines()
    assert desk.row(submission_id).pipeline_id == pipeline.id
    with desk.runtime.store.session() as session:
        assert session.scalar(select(func.count()).select_from(Change)) == 1


def test_patches_go_to_the_artifact_store_and_the_checkout_spec(desk: Desk) -> None:
    submission_id = desk.submit({"patches": [{"name": "0001-pass.patch", "mbox": PATCH}]})
    make_pipeline(desk.runtime, submission_id)
    [pipeline] = desk.pipelines()
    with desk.runtime.store.session() as session:
        [checkout] = session.scalars(select(Job).where(Job.pipeline_id == pipeline.id))
        spec = CheckoutSpec.model_validate(checkout.spec)
        title = session.scalars(select(Change.title)).one()
    [patch] = spec.patches
    assert (spec.ref, spec.base_ref, patch.name) == (None, "refs/heads/main", "0001-pass.patch")
    assert desk.runtime.artifacts.get_bytes(patch.digest) == PATCH.encode()
    assert title == "0001-pass.patch"


def test_a_submission_whose_tree_went_away_is_told_so_not_retried(desk: Desk) -> None:
    submission_id = desk.submit({"sha": SHA}, tree="gone")
    submission_tasks.ci_submission.apply(args=[submission_id]).get()
    assert desk.pipelines() == [] and desk.queued() == []
    status = submission_status(desk.runtime, submission_id)
    assert status is not None
    assert (status["state"], status["verdict"]) == ("done", "error")
    assert status["summary"] == "labgate: not tested: tree gone is no longer configured"
    assert status["message"] == "tree gone is no longer configured"


def _checkout_token(desk: Desk) -> tuple[int, str]:
    """The checkout job's id and result token, from the message its worker would take."""
    [(_, [spec_json])] = desk.queued(CHECKOUT_QUEUE)
    spec = JobSpec.model_validate_json(spec_json)
    return spec.job_id, spec.result_token


def test_the_status_follows_the_pipeline_and_its_verdict_is_the_reports(desk: Desk) -> None:
    submission_id = desk.submit({"patches": [{"name": "0001-pass.patch", "mbox": PATCH}]})
    make_pipeline(desk.runtime, submission_id)
    queued = submission_status(desk.runtime, submission_id)
    assert queued is not None and queued["state"] == "queued"
    [pipeline] = desk.pipelines()
    start_pipeline(desk.runtime, pipeline.id)
    running = submission_status(desk.runtime, submission_id)
    assert running is not None and running["state"] == "running" and running["verdict"] is None
    assert running["version"] != queued["version"]
    assert running["version"] == submission_version(desk.runtime, submission_id)  # nothing moved since
    job_id, token = _checkout_token(desk)
    why = "0001-pass.patch does not apply on refs/heads/main@0123456789ab"
    record_result(desk.runtime, JobResult(job_id=job_id, result_token=token, delivery=1, result=None,
                                          error_code="user-error", error_message=why))  # fmt: skip
    done = submission_status(desk.runtime, submission_id)
    assert done is not None
    assert (done["state"], done["verdict"], done["pipeline_id"]) == ("done", "error", pipeline.id)
    assert done["summary"] == "labgate: fail: 1 failing (checkout: error)"  # the report's headline, as it is
    assert done["message"] == why
    assert done["page_url"] == f"https://ci.example.org/pipelines/{pipeline.id}"
    [job] = done["jobs"]
    assert (job["name"], job["kind"], job["state"]) == ("checkout", "checkout", "done")
    assert job["url"] == f"https://ci.example.org/jobs/{job_id}"
    assert job["verdict"] == "fail" and job["title"]


def test_a_forged_result_moves_nothing(desk: Desk) -> None:
    submission_id = desk.submit({"sha": SHA})
    make_pipeline(desk.runtime, submission_id)
    [pipeline] = desk.pipelines()
    start_pipeline(desk.runtime, pipeline.id)
    version = submission_version(desk.runtime, submission_id)
    job_id, _ = _checkout_token(desk)
    record_result(desk.runtime, JobResult(job_id=job_id, result_token="guessed", delivery=1, result="pass"))
    assert submission_version(desk.runtime, submission_id) == version


def test_a_passing_pipeline_reads_pass(desk: Desk) -> None:
    submission_id = desk.submit({"sha": SHA})
    make_pipeline(desk.runtime, submission_id)
    [pipeline] = desk.pipelines()
    with desk.runtime.store.session() as session:  # finished, as the control worker records it
        stored = session.get(Pipeline, pipeline.id)
        assert stored is not None
        stored.state, stored.result = "done", "pass"
        for job in stored.jobs:
            job.state, job.result = "done", "pass"
    status = submission_status(desk.runtime, submission_id)
    assert status is not None
    assert (status["state"], status["verdict"], status["summary"]) == ("done", "pass", "labgate: pass")
    assert [job["verdict"] for job in status["jobs"]] == ["pass"]


def test_an_unknown_submission_has_no_status(desk: Desk) -> None:
    assert submission_status(desk.runtime, 12345) is None
    assert submission_version(desk.runtime, 12345) is None


@pytest.mark.parametrize("issuer, claims, expected", [
    (ISSUER, CLAIMS, "ci:token.actions.githubusercontent.com:588298808:3989419862"),
    ("https://gitlab.example.com", {"project_id": "20", "pipeline_id": "574", "project_path": "g/p"},
     "ci:gitlab.example.com:20:574"),
    ("https://ghe.example.com/_services/token", {"repository_id": "7"}, "ci:ghe.example.com:jti:the-jti"),
])  # fmt: skip
def test_a_submission_is_a_revision_of_its_ci_run(issuer: str, claims: dict[str, str], expected: str) -> None:
    assert external_id_for(issuer, claims, "the-jti") == expected


def test_an_external_id_fits_its_column() -> None:
    made = external_id_for("https://" + "h" * 300, {"repository_id": "1", "run_id": "2"}, "j")
    assert made.startswith("ci:") and len(made) <= 200


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=CI Job", "-c", "user.email=ci@example.org"]
    done = subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def test_the_checkout_worker_tests_the_tokens_commit_with_the_bases_plan(desk: Desk, tmp_path: Path) -> None:
    """The spec a submission makes, taken by the real checkout code: the commit the token was issued at, on
    the branch's head, with the plan read at the base; a tag named like the branch does not stand in for it."""
    origin = make_git_repo(EXAMPLES / "hello", tmp_path / "origin")
    main_sha = _git(origin, "rev-parse", "HEAD")
    base_plan = (origin / ".labgate" / "plan.yaml").read_text()
    _git(origin, "checkout", "-q", "-b", "topic")
    (origin / ".labgate" / "plan.yaml").write_text("version: 1\nbuilds: []\n")  # the change's own rules
    _git(origin, "commit", "-qam", "topic: a plan of my own")
    topic_sha = _git(origin, "rev-parse", "HEAD")
    _git(origin, "tag", "main", topic_sha)  # "main" as a tag: rev-parse would prefer it to the branch
    submission_id = desk.submit({"sha": topic_sha})
    make_pipeline(desk.runtime, submission_id)
    [pipeline] = desk.pipelines()
    with desk.runtime.store.session() as session:
        [checkout] = session.scalars(select(Job).where(Job.pipeline_id == pipeline.id))
        spec = CheckoutSpec.model_validate(checkout.spec)
    outcome = prepare_checkout(mirror_path(tmp_path / "data", "hello"), str(origin), base_ref=spec.base_ref,
                               ref=spec.ref, patches=(), plan_path=spec.plan_path, plan_from=spec.plan_from,
                               worktree=tmp_path / "wt", keep_ref="refs/labgate/t", merge=spec.merge)  # fmt: skip
    assert (outcome.base_sha, outcome.head_sha, outcome.tested_sha) == (main_sha, topic_sha, topic_sha)
    assert outcome.plan_text == base_plan
