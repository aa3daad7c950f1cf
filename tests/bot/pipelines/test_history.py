"""The result history on base branches: what a staging pipeline's and a base run's test jobs write (each
test and the job's `<job>/boot`, with metrics), and the queries triage reads it through, newest first,
on the real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.pipelines import history
from bot.store.models import Change, Job, Pipeline, ResultHistory, Revision, TestResult, Tree

QEMU = "qemu-x86_64"
BASE = "b" * 40


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    opened = open_runtime(Config(data_dir=tmp_path / "data"), database_url=database_url)
    yield opened
    opened.store.engine.dispose()


def ran(session: Session, *, kind: str = "post-merge", external_id: str = "org/linux@next", commit: str = "c" * 40,
        result: str = "fail", tests: tuple[tuple[str, str, str], ...] = (), triage: dict[str, object] | None = None,
        of: Job | None = None) -> Job:  # fmt: skip
    """A finished test job on a build of `commit` (config x86_64), with its tests (path, status, diagnostics)."""
    if of is not None:
        pipeline = of.pipeline
    else:
        tree = session.query(Tree).filter_by(name="linux").first() or Tree(name="linux", url="https://x/linux")
        change = Change(tree=tree, source=f"push-{commit[:4]}", external_id=external_id)
        pipeline = Pipeline(revision=Revision(change=change, base_ref="master", base_sha=BASE), state="running",
                            kind=kind)  # fmt: skip
    build_name = "base x86_64" if triage and triage.get("side") == "base" else "x86_64"
    number = len(pipeline.jobs)
    build = Job(pipeline=pipeline, kind="build", name=f"{build_name} {number}", queue="build", state="done",
                result="pass", spec={"name": build_name, "head_sha": commit})  # fmt: skip
    spec: dict[str, object] = {"device_class": QEMU, "name": "boot"}
    if triage is not None:
        spec["triage"] = triage
    name = f"{QEMU} boot" if of is None else f"{QEMU} boot [{number}]"
    job = Job(pipeline=pipeline, kind="test", name=name, queue="lab", state="done", result=result, spec=spec)
    session.add_all([build, job])
    session.flush()
    job.depends_on_id = build.id
    for path, status, diagnostics in tests:
        session.add(TestResult(job=job, path=path, status=status, diagnostics=diagnostics))
    session.flush()
    session.refresh(job)
    return job


def rows(session: Session) -> list[tuple[str, str, str, str, dict[str, float]]]:
    found = session.query(ResultHistory).order_by(ResultHistory.id).all()
    return [(r.test_path, r.status, r.source, r.commit, r.metrics) for r in found]


def test_a_staging_job_writes_each_test_and_its_boot_with_metrics(runtime: Runtime) -> None:
    with runtime.store.session() as session:
        job = ran(session, tests=(("a", "pass", "# metric: rx.pps=900 pps higher is better"), ("b", "fail", "")))
        assert history.after_test_result(session, job) == 3
        assert rows(session) == [
            ("boot/a", "pass", "staging", "c" * 40, {"rx.pps": 900.0}),
            ("boot/b", "fail", "staging", "c" * 40, {}),
            ("boot/boot", "pass", "staging", "c" * 40, {}),
        ]  # fmt: skip
        row = session.query(ResultHistory).first()
        assert row is not None and (row.branch, row.config, row.device_class, row.job_id) == (
            "next", "x86_64", QEMU, job.id)  # fmt: skip


def test_a_job_with_no_test_is_its_boot_and_our_error_is_nothing(runtime: Runtime) -> None:
    with runtime.store.session() as session:
        history.after_test_result(session, ran(session, result="fail"))
        history.after_test_result(session, ran(session, result="incomplete", commit="d" * 40))
        history.after_test_result(session, ran(session, result=None, commit="e" * 40))  # type: ignore[arg-type]
        assert [(path, status) for path, status, *_ in rows(session)] == [
            ("boot/boot", "fail"), ("boot/boot", "incomplete")]


def test_only_staging_jobs_and_base_runs_are_base_branch_results(runtime: Runtime) -> None:
    with runtime.store.session() as session:
        change = ran(session, kind="pre-merge", external_id="7", tests=(("a", "fail", ""),))
        assert history.after_test_result(session, change) == 0  # a change's own result is not the base's
        rerun = ran(session, of=change, commit="c" * 40, triage={"of": change.id, "side": "change", "n": 1},
                    tests=(("a", "fail", ""),))  # fmt: skip
        assert history.after_test_result(session, rerun) == 0
        first = ran(session, of=change, commit=BASE, triage={"of": change.id, "side": "base", "n": 1},
                    tests=(("a", "pass", ""),))  # fmt: skip
        second = ran(session, of=change, commit=BASE, triage={"of": change.id, "side": "base", "n": 2},
                     tests=(("a", "pass", ""),), result="pass")  # fmt: skip
        history.after_test_result(session, first)
        history.after_test_result(session, second)
        # Kept under the change job's name and its build's config, whatever the run is called.
        assert [(path, source, commit) for path, _, source, commit, _ in rows(session)] == [
            ("boot/a", "base-run", BASE), ("boot/boot", "base-run", BASE),
            ("boot/a", "rerun", BASE), ("boot/boot", "rerun", BASE)]  # fmt: skip
        assert {r.config for r in session.query(ResultHistory)} == {"x86_64"}
        taken = ran(session, of=change, commit=BASE, triage={"of": change.id, "side": "base", "n": 3})
        taken.reused_from_id = first.id  # took another pipeline's run: that one wrote it
        assert history.after_test_result(session, taken) == 0


def test_history_for_is_newest_first_limited_and_leaves_out_the_base_commit(runtime: Runtime) -> None:
    with runtime.store.session() as session:
        for index in range(6):
            session.add(ResultHistory(tree="linux", branch="next", commit=f"{index:040x}", test_path="t/a",
                                      device_class=QEMU, config="x86_64", status="pass" if index % 2 else "fail",
                                      source="staging"))  # fmt: skip
        session.add(ResultHistory(tree="linux", branch="next", commit="0" * 40, test_path="t/a", device_class="arm",
                                  config="x86_64", status="fail", source="staging"))  # another class  # fmt: skip
        session.flush()
        newest = history.history_for(session, "linux", "next", "t/a", QEMU, "x86_64", 4)
        assert [row.commit[-1] for row in newest] == ["5", "4", "3", "2"]
        older = history.history_for(session, "linux", "next", "t/a", QEMU, "x86_64", 10, exclude_commit="4".zfill(40))
        assert [row.commit[-1] for row in older] == ["5", "3", "2", "1", "0"]
        assert history.history_for(session, "linux", "next", "t/a", QEMU, "x86_64", -3) == []
        at = history.base_result_at(session, "linux", "3".zfill(40), "t/a", QEMU, "x86_64")
        assert history.statuses(at) == ("pass",)


def test_hostile_test_output_is_cut_to_size(runtime: Runtime) -> None:
    """Attack: a test prints thousands of metrics, a path longer than the column with its job's name, and
    values JSON cannot hold (PostgreSQL refuses NaN: the whole result would be lost)."""
    lines = "# metric: a=nan ms\n# metric: b=1e999 ms\n" + "\n".join(f"# metric: m{i}={i} ms" for i in range(5000))
    with runtime.store.session() as session:
        job = ran(session, tests=(("p" * 498, "pass", lines),))
        history.after_test_result(session, job)
        stored = [r for r in session.query(ResultHistory) if r.test_path.startswith("boot/p")]
        assert len(stored) == 1 and len(stored[0].test_path) == 500
        assert 0 < len(stored[0].metrics) <= history.MAX_METRICS and "m0" in stored[0].metrics
        assert "a" not in stored[0].metrics and "b" not in stored[0].metrics  # JSON has no NaN nor infinity


def test_a_base_given_as_a_commit_is_kept_under_the_branch_it_is_on(runtime: Runtime) -> None:
    with runtime.store.session() as session:
        job = ran(session, kind="pre-merge", external_id="series-1")
        job.pipeline.revision.base_ref = BASE  # a Patchwork series' base-commit: trailer
        assert history.branch_of(job.pipeline) == BASE  # no checkout to say which branch it is on
        session.add(Job(pipeline=job.pipeline, kind="checkout", name="checkout", queue="checkout",
                        spec={"base_branches": ["net-next", "net"]}))  # fmt: skip
        session.flush()
        session.refresh(job.pipeline)
        assert history.branch_of(job.pipeline) == "net-next"
        job.pipeline.revision.base_ref = "net"
        assert history.branch_of(job.pipeline) == "net"
