"""End to end: triage with real workers, git, bwrap and QEMU on the example tree. A change that breaks a
test is re-run and run at its base (a base build drafted for the command build), interleaved on the class;
the verdict is `new` with its counts; a second change on that base takes the base's runs as they are."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.pipelines.triage_runs import MARK, STATE
from bot.store.models import Job, Pipeline, ResultHistory
from bot.store.models import TestVerdict as VerdictRow
from tests.test_pipeline_e2e import PATCHES, Lab, lab  # noqa: F401  (the module's workers, as `labgate up`)

pytestmark = [pytest.mark.slow, pytest.mark.needs("qemu", "the test job boots the Debian kernel on QEMU")]
FAILING = "unit/math.mul"
TRIAGE = True  # test_pipeline_e2e.py's lab, with triage on


def pipeline_rows(running: Lab, pipeline_id: int) -> tuple[Pipeline, list[Job], list[VerdictRow]]:
    with running.services.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        jobs = list(session.scalars(select(Job).where(Job.pipeline_id == pipeline_id).order_by(Job.id)))
        verdicts = list(session.scalars(select(VerdictRow).where(VerdictRow.pipeline_id == pipeline_id)))
        session.expunge_all()
        return pipeline, jobs, verdicts


def test_a_new_failure_is_confirmed_by_reruns_and_base_runs_shared_by_the_next_change(lab: Lab) -> None:  # noqa: F811
    first = lab.submit(lab.hello, patches=(PATCHES / "fail.patch",))
    lab.wait(first, timeout_s=600)
    pipeline, jobs, verdicts = pipeline_rows(lab, first)
    assert pipeline.result == "fail"
    test = next(job for job in jobs if job.kind == "test" and MARK not in job.spec)
    assert (test.result, test.spec[STATE]) == ("fail", "done")  # the raw result stays
    runs = [job for job in jobs if MARK in job.spec]
    assert [(r.spec[MARK]["side"], r.spec[MARK]["n"]) for r in runs] == [
        ("change", 1), ("base", 1), ("change", 2), ("base", 2), ("change", 3), ("base", 3), ("base", 4)]
    base_build = next(job for job in jobs if job.kind == "build" and job.spec.get("role") == "base")
    with lab.services.runtime.store.session() as session:
        revision = session.get(Pipeline, first)
        base_sha = revision.revision.base_sha if revision is not None else None
    assert (base_build.result, base_build.spec["head_sha"], base_build.spec["trusted"]) == ("pass", base_sha, True)
    assert [(r.result, r.depends_on_id) for r in runs if r.spec[MARK]["side"] == "base"] == [
        ("pass", base_build.id)] * 4
    [verdict] = [v for v in verdicts if v.test_path.endswith(FAILING)]
    assert (verdict.verdict, verdict.evidence) == ("new", "failed 4/4 with the change, 0/4 on base")
    with lab.services.runtime.store.session() as session:
        sources = sorted(session.scalars(select(ResultHistory.source).where(ResultHistory.test_path.endswith(FAILING))))
    assert sources == ["base-run", "rerun", "rerun", "rerun"]

    second = lab.submit(lab.hello, patches=(PATCHES / "fail.patch",))  # the same base: its runs are known
    lab.wait(second, timeout_s=600)
    pipeline, jobs, verdicts = pipeline_rows(lab, second)
    assert [job.spec[MARK]["side"] for job in jobs if MARK in job.spec] == ["change"] * 3
    [verdict] = [v for v in verdicts if v.test_path.endswith(FAILING)]
    assert (verdict.verdict, pipeline.result) == ("new", "fail")
