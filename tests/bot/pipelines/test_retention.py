"""Artifact retention with a real store dir and a real database (SQLite and PostgreSQL): which pipelines keep
their blobs, that a shared blob stays, that running pipelines' patches and blobs just written stay, and the
timer and the command that run it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.cli.main import main
from bot.host.config import ArtifactRetention, Config, Tree
from bot.host.stores import Runtime, open_runtime
from bot.host.timers import ARTIFACT_PRUNE_TASK, periodic_tasks
from bot.pipelines.retention import PRUNED_KEY, claim_blobs, prune_artifacts, prune_due, pruned_on
from bot.store import models
from bot.store.models import utcnow
from workers.app import app

DAY = timedelta(days=1)
POLICY = ArtifactRetention(keep_days=30, keep_last_per_tree=2, grace_s=3600)


@dataclass
class Made:
    pipeline_id: int
    job_ids: list[int]
    blobs: dict[str, str] = field(default_factory=dict)  # what -> digest


@dataclass
class Shelf:
    runtime: Runtime

    def blob(self, text: str) -> str:
        return self.runtime.artifacts.put_bytes(text.encode())

    def has(self, digest: str) -> bool:
        return self.runtime.artifacts.has(digest)

    def pipeline(self, tree: str, age_days: float, blobs: dict[str, str], *, state: str = "done",
                 uses: int | None = None) -> Made:  # fmt: skip
        """A pipeline of a checkout (the patch) and a build (log, artifacts, an attempt's log), `age_days` old."""
        made = Made(0, [], {what: self.blob(text) for what, text in blobs.items()})
        when = utcnow() - age_days * DAY
        with self.runtime.store.session() as session:
            tree_row = session.query(models.Tree).filter_by(name=tree).one_or_none() or models.Tree(name=tree, url="u")
            change = models.Change(tree=tree_row, source="try", external_id=f"{tree}-{age_days}-{len(blobs)}-{state}")
            patches = [{"name": "0001.patch", "digest": made.blobs["patch"]}] if "patch" in made.blobs else []
            revision = models.Revision(change=change, base_ref="main", patches=patches)
            pipeline = models.Pipeline(revision=revision, state=state, created_at=when,
                                       finished_at=when if state == "done" else None)  # fmt: skip
            artifacts = {path: {"digest": d, "mode": 0o644} for path, d in made.blobs.items() if "/" in path}
            build = models.Job(pipeline=pipeline, kind="build", name="x86_64", queue="build", state="done",
                               log_digest=made.blobs.get("log"), outputs={"artifacts": artifacts},
                               depends_on_id=uses, created_at=when)  # fmt: skip
            session.add(build)
            session.flush()
            if "attempt-log" in made.blobs:
                session.add(models.JobAttempt(job_id=build.id, number=1, log_digest=made.blobs["attempt-log"]))
            made.pipeline_id, made.job_ids = pipeline.id, [build.id]
        return made

    def age_everything(self, seconds: float = 7 * 86400) -> None:
        """Every blob written long ago: past the grace period."""
        old = time.time() - seconds
        for path in self.runtime.artifacts.root.glob("*/*"):
            os.utime(path, (old, old))

    def outputs(self, job_id: int) -> dict[str, Any]:
        with self.runtime.store.session() as session:
            job = session.get(models.Job, job_id)
            assert job is not None
            return dict(job.outputs)


@pytest.fixture
def shelf(tmp_path: Path, database_url: str) -> Iterator[Shelf]:
    runtime = open_runtime(Config(data_dir=tmp_path / "data", artifacts=POLICY), database_url=database_url)
    yield Shelf(runtime)
    runtime.store.engine.dispose()


def test_expired_pipelines_lose_their_blobs_and_kept_ones_keep_theirs(shelf: Shelf) -> None:
    p1 = shelf.pipeline("linux", 90, {"log": "p1 log", "out/bzImage": "p1 image", "patch": "p1 patch",
                                      "attempt-log": "p1 attempt"})  # fmt: skip
    p2 = shelf.pipeline("linux", 80, {"log": "p2 log", "out/.config": "SHARED config", "out/Image": "p2 image"})
    p3 = shelf.pipeline("linux", 70, {"log": "p3 log", "out/.config": "SHARED config"})  # kept: newest 2 of linux
    p4 = shelf.pipeline("linux", 1, {"log": "p4 log", "out/bzImage": "p4 image", "patch": "p4 patch"})
    lone = shelf.pipeline("net", 400, {"log": "net log", "out/bzImage": "net image"})  # the newest of its tree
    shelf.age_everything()

    report = prune_artifacts(shelf.runtime)

    gone = [p1.blobs[w] for w in ("log", "out/bzImage", "patch", "attempt-log")]
    gone += [p2.blobs["log"], p2.blobs["out/Image"]]
    assert not any(shelf.has(d) for d in gone)
    assert shelf.has(p2.blobs["out/.config"])  # the same bytes a kept job names
    assert all(shelf.has(d) for made in (p3, p4, lone) for d in made.blobs.values())
    assert (report.deleted, report.expired_jobs, report.newly_marked) == (6, 2, 2)
    assert pruned_on(shelf.outputs(p1.job_ids[0])) == utcnow().date().isoformat()
    assert pruned_on(shelf.outputs(p3.job_ids[0])) is None
    # Again: nothing more to do, and the date of the first prune stays.
    first = shelf.outputs(p1.job_ids[0])[PRUNED_KEY]
    again = prune_artifacts(shelf.runtime, now=utcnow() + 3 * DAY)
    assert (again.deleted, again.newly_marked) == (0, 0)
    assert shelf.outputs(p1.job_ids[0])[PRUNED_KEY] == first


def test_running_pipelines_keep_their_patches_whatever_their_age(shelf: Shelf) -> None:
    running = shelf.pipeline("linux", 200, {"patch": "running patch", "log": "running checkout log"}, state="running")
    for age in (3, 2, 1):
        shelf.pipeline("linux", age, {"log": f"log {age}"})
    shelf.age_everything()
    prune_artifacts(shelf.runtime)
    assert all(shelf.has(d) for d in running.blobs.values())


def test_a_kept_job_keeps_the_blobs_of_the_job_it_uses_in_an_expired_pipeline(shelf: Shelf) -> None:
    base = shelf.pipeline("linux", 100, {"log": "base build log", "out/bzImage": "base image"})
    old = shelf.pipeline("linux", 90, {"log": "old log"})
    shelf.pipeline("linux", 2, {"log": "new 2"})
    shelf.pipeline("linux", 1, {"log": "change build"}, uses=base.job_ids[0])  # shares the base build
    shelf.age_everything()
    prune_artifacts(shelf.runtime)
    assert all(shelf.has(d) for d in base.blobs.values())
    assert not shelf.has(old.blobs["log"])


def test_blobs_written_within_the_grace_period_stay(shelf: Shelf) -> None:
    old = shelf.pipeline("linux", 90, {"log": "old log", "out/bzImage": "an image a new build makes again"})
    for age in (2, 1):
        shelf.pipeline("linux", age, {"log": f"log {age}"})
    shelf.age_everything()
    # A worker building the same bytes now finds them stored: its put refreshes the blob, and its result,
    # which will name it, is not recorded yet.
    assert shelf.blob("an image a new build makes again") == old.blobs["out/bzImage"]
    report = prune_artifacts(shelf.runtime)
    assert shelf.has(old.blobs["out/bzImage"]) and not shelf.has(old.blobs["log"])
    assert report.held_by_grace == 1
    # Once idle past the grace period (and named by nothing kept), it goes.
    later = prune_artifacts(shelf.runtime, now=utcnow() + timedelta(seconds=POLICY.grace_s + 60))
    assert later.deleted == 1 and not shelf.has(old.blobs["out/bzImage"])


def test_a_shared_build_claimed_during_a_prune_keeps_its_blobs(shelf: Shelf) -> None:
    """A later pipeline takes up an expired pipeline's base build (bot/pipelines/base_builds.py): the claim
    touches the blobs, so a prune that judged them by the rows it read before the claim still keeps them."""
    base = shelf.pipeline("linux", 90, {"log": "base log", "out/bzImage": "base image"})
    for age in (2, 1):
        shelf.pipeline("linux", age, {"log": f"log {age}"})
    shelf.age_everything()
    outputs = shelf.outputs(base.job_ids[0])
    assert claim_blobs(shelf.runtime, outputs, base.blobs["log"])  # after the prune's read, before its deletes
    report = prune_artifacts(shelf.runtime)
    assert report.held_by_grace == 2 and all(shelf.has(d) for d in base.blobs.values())
    # Once a prune has taken them, the job's outputs say so and nothing claims them: the build runs again.
    prune_artifacts(shelf.runtime, now=utcnow() + timedelta(seconds=POLICY.grace_s + 60))
    assert not claim_blobs(shelf.runtime, shelf.outputs(base.job_ids[0]), base.blobs["log"])
    assert not claim_blobs(shelf.runtime, outputs, base.blobs["log"])  # blobs gone, even unmarked


def test_blobs_no_row_names_are_never_deleted(shelf: Shelf) -> None:
    """An upload whose result is not recorded yet, a Patchwork mbox: the prune deletes only what expired rows name."""
    unnamed = shelf.blob("uploaded by a worker whose result is on its way")
    shelf.pipeline("linux", 90, {"log": "old log"})
    for age in (2, 1):
        shelf.pipeline("linux", age, {"log": f"log {age}"})
    shelf.age_everything()
    prune_artifacts(shelf.runtime)
    assert shelf.has(unnamed)


def test_a_patchwork_series_mbox_that_equals_an_expired_patch_stays(shelf: Shelf) -> None:
    """A one-patch series: its mbox and the revision's patch may be the very same bytes, one blob."""
    from bot.forges.patchwork.desk import SeriesRecord, save_series, series_key
    from bot.store.once import once_done

    old = shelf.pipeline("linux", 90, {"patch": "From: a@example.org\nSubject: [PATCH] fix\n\n---\n", "log": "l"})
    for age in (2, 1):
        shelf.pipeline("linux", age, {"log": f"log {age}"})
    record = SeriesRecord(server="https://patchwork.example.org", project="linux", series_id=7, version=1,
                          name="fix", web_url="https://patchwork.example.org/series/7", patch_ids=(1,),
                          thread=("[PATCH] fix", "<1@example.org>"), mbox_digest=old.blobs["patch"])  # fmt: skip
    with shelf.runtime.store.session() as session:
        save_series(session, record)
    with shelf.runtime.store.session() as session:
        assert once_done(session, series_key(record.server, 7))  # the record is where the intake keeps it
    shelf.age_everything()
    prune_artifacts(shelf.runtime)
    assert shelf.has(old.blobs["patch"]) and not shelf.has(old.blobs["log"])


def test_a_dry_run_changes_nothing(shelf: Shelf) -> None:
    old = shelf.pipeline("linux", 90, {"log": "old log", "out/bzImage": "old image"})
    for age in (2, 1):
        shelf.pipeline("linux", age, {"log": f"log {age}"})
    shelf.age_everything()
    report = prune_artifacts(shelf.runtime, dry_run=True)
    assert (report.deleted, report.freed_bytes) == (2, len("old log") + len("old image"))
    assert "would delete 2" in report.lines()[0]
    assert all(shelf.has(d) for d in old.blobs.values())
    assert pruned_on(shelf.outputs(old.job_ids[0])) is None


def test_leftover_temporary_files_go_once_idle(shelf: Shelf) -> None:
    store = shelf.runtime.artifacts
    shelf.blob("something, so the fan-out dirs exist")
    dead = next(store.root.glob("*")) / ".in-dead-upload"
    dead.write_bytes(b"half")
    live = next(store.root.glob("*")) / ".tmp-writing-now"
    live.write_bytes(b"growing")
    old = time.time() - 2 * POLICY.grace_s
    os.utime(dead, (old, old))
    assert prune_artifacts(shelf.runtime).leftovers == 1
    assert not dead.exists() and live.exists()


def test_delete_if_idle_puts_back_a_blob_touched_since(tmp_path: Path) -> None:
    from workers.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")
    digest = store.put_bytes(b"wanted again")
    assert store.delete_if_idle(digest, idle_before=time.time() - 60) is None  # written just now
    assert store.has(digest)
    old = time.time() - 3600
    os.utime(store.path_of(digest), (old, old))
    assert store.delete_if_idle(digest, idle_before=time.time() - 60) == len(b"wanted again")
    assert not store.has(digest) and list(store.path_of(digest).parent.iterdir()) == []
    assert store.delete_if_idle(digest, idle_before=time.time()) is None  # gone already


def test_the_timer_runs_the_prune_unless_retention_is_off(shelf: Shelf, tmp_path: Path) -> None:
    assert (ARTIFACT_PRUNE_TASK, POLICY.prune_interval_s) in periodic_tasks(shelf.runtime.config)
    off = Config(data_dir=tmp_path, artifacts=ArtifactRetention(prune=False))
    assert ARTIFACT_PRUNE_TASK not in dict(periodic_tasks(off))
    import bot.tasks  # the control worker's tasks

    assert app.tasks[ARTIFACT_PRUNE_TASK].__module__ == bot.tasks.__name__
    assert "pipelines keep their artifacts" in prune_due(shelf.runtime)[0]


def test_the_command_prunes_or_says_what_it_would(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "labgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nartifacts: {{keep_days: 1, keep_last_per_tree: 0}}\n"
                      "trees: [{name: linux, url: 'https://x/linux'}]\n")  # fmt: skip
    runtime = open_runtime(Config(data_dir=tmp_path / "data", trees=[Tree(name="linux", url="https://x/linux")]))
    shelf = Shelf(runtime)
    old = shelf.pipeline("linux", 5, {"log": "old log"})
    shelf.age_everything()
    assert main(["artifacts", "prune", "--dry-run", "--config", str(config)]) == 0
    assert "would delete 1" in capsys.readouterr().out and shelf.has(old.blobs["log"])
    assert main(["artifacts", "prune", "--config", str(config)]) == 0
    assert "deleted 1" in capsys.readouterr().out and not shelf.has(old.blobs["log"])
    runtime.store.engine.dispose()


def test_the_rule_keeps_the_newest_of_each_tree_and_the_recent() -> None:
    from bot.core.retention import PipelineFacts, Policy, kept_pipelines

    now = datetime(2026, 12, 1, tzinfo=utcnow().tzinfo)
    facts = [PipelineFacts(i, "a", True, now - i * 10 * DAY, now - i * 10 * DAY) for i in range(1, 6)]
    facts += [PipelineFacts(9, "b", True, now - 900 * DAY), PipelineFacts(10, "a", False, now - 999 * DAY)]
    assert kept_pipelines(facts, Policy(keep_days=25, keep_last_per_tree=1), now) == {1, 2, 9, 10}
    assert kept_pipelines(facts, Policy(keep_days=1, keep_last_per_tree=0), now) == {10}
