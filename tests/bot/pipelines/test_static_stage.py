"""The static stage through the real result path: drafted and sent before any build, its checks recorded as
test results, a failing check failing the pipeline; a documentation-only change runs it alone."""

from __future__ import annotations

from bot.store.models import TestResult
from tests.bot.pipelines.kernel_lab import BASE, HEAD, PLAN, KernelLab, build_outputs
from workers.spec import TestCase

# What the static worker sends (workers/spec.py, "Static outputs").
ANNOTATION = {"file": "kernel/printk/printk.c", "line": 11, "level": "error", "source": "checkpatch",
              "check": "CODE_INDENT", "text": "code indent should use tabs where possible",
              "commit": HEAD}  # fmt: skip
CHECKPATCH = "static/checkpatch/1-printk-say-hello"


def test_the_static_job_is_sent_first_with_the_labs_caps(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out()
    jobs = kernel_lab.jobs(pipeline_id)
    messages = kernel_lab.messages()
    assert [m.kind for m in messages] == ["static", "build"]  # the static job, then the base build
    static = messages[0]
    assert static.job_id == jobs["static"].id and static.static is not None and static.build is None
    assert (static.static.base_sha, static.static.head_sha, static.static.checkpatch) == (BASE, HEAD, "on")
    assert static.static.limits == kernel_lab.runtime.config.caps.build_limits()
    assert jobs["static"].queue == "build" and jobs["static"].depends_on_id == jobs["checkout"].id


def test_static_checks_are_recorded_as_tests_and_a_failing_one_fails_the_pipeline(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out()
    jobs = kernel_lab.jobs(pipeline_id)
    cases = (TestCase(path=CHECKPATCH, status="fail", reason="1 error, 0 warnings"),
             TestCase(path="static/diff-check", status="pass"),
             TestCase(path="static/kernel-doc", status="skip", reason="no scripts/kernel-doc"))  # fmt: skip
    kernel_lab.report(jobs["static"].id, "fail", outputs={"annotations": [ANNOTATION] * 600}, tests=cases)
    with kernel_lab.runtime.store.session() as session:
        recorded = [(r.path, r.status) for r in session.query(TestResult).filter_by(job_id=jobs["static"].id)]
    assert recorded == [(CHECKPATCH, "fail"), ("static/diff-check", "pass"), ("static/kernel-doc", "skip")]
    static = kernel_lab.jobs(pipeline_id)["static"]
    assert static.result == "fail" and len(static.outputs["annotations"]) == 500  # capped on our side too
    # The builds and the test go on; the pipeline ends as its worst job: the static job's fail.
    kernel_lab.report(jobs["base x86_64"].id)
    kernel_lab.report(jobs["x86_64"].id, outputs=build_outputs("2" * 64))
    kernel_lab.report(jobs["qemu-x86_64 boot"].id, outputs={})
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.state, pipeline.result) == ("done", "fail")


def test_a_documentation_only_change_runs_only_the_static_job_and_passes_with_it(kernel_lab: KernelLab) -> None:
    # The tree has no checkpatch.pl: the static job is drafted anyway, so the diff is still checked.
    pipeline_id = kernel_lab.checked_out(changed=("Documentation/process/howto.rst",), checkpatch=False)
    jobs = kernel_lab.jobs(pipeline_id)
    assert sorted(jobs) == ["checkout", "static"]
    assert [m.kind for m in kernel_lab.messages()] == ["static"]
    notes = kernel_lab.pipeline(pipeline_id).notes
    assert len(notes) == 1 and notes[0].startswith("documentation-only change: only the static checks ran")
    kernel_lab.report(jobs["static"].id, "pass", outputs={"annotations": []},
                      tests=(TestCase(path="static/diff-check", status="pass"),))  # fmt: skip
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.state, pipeline.result, pipeline.error_code) == ("done", "pass", None)


def test_a_tree_without_checkpatch_gets_no_static_job_unless_its_plan_asks(kernel_lab: KernelLab) -> None:
    jobs = kernel_lab.jobs(kernel_lab.checked_out(checkpatch=False))
    assert "static" not in jobs
    asked = PLAN.replace("tests:", "static: {checkpatch: strict}\ntests:")
    jobs = kernel_lab.jobs(kernel_lab.checked_out(plan=asked, checkpatch=False))
    assert jobs["static"].spec["checkpatch"] == "strict"
