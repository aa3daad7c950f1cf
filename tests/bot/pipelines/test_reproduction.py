"""A reproduction through the real result path: the spec read from the store (bot/pipelines/job_specs.py),
submitted with its jobs (bot/core/reproduce.py), and after its checkout exactly those jobs are drafted,
at the new commit, whatever the tree's plan says."""

from __future__ import annotations

import base64

from sqlalchemy.orm import Session

from bot.core.reproduce import plan_reproduction
from bot.pipelines.job_specs import read_job_spec
from bot.pipelines.lifecycle import Submission, record_result, start_pipeline, submit
from bot.store.models import Pipeline, Revision
from tests.bot.pipelines.kernel_lab import BASE, HEAD, QEMU, KernelLab, build_outputs
from workers.app import CHECKOUT_QUEUE
from workers.spec import JobResult, TestCase

BASE_BUILD, CHANGE_BUILD, TEST = "base x86_64", "x86_64", f"{QEMU} boot"
NEW_HEAD = "e" * 40
PATCH = b"From 1 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] fix\n\n---\n"
# What the tree's plan says by the time of the reproduction: another build, two other tests.
OTHER_PLAN = """\
version: 1
builds:
  - name: arm
    command: make
    artifacts: [out]
tests:
  - {name: one, build: arm, device: {platform: qemu}, kernel: debian, commands: [{name: a, run: "true"}]}
  - {name: two, build: arm, device: {platform: qemu}, kernel: debian, commands: [{name: b, run: "true"}]}
"""


def kernel_lab_revision(session: Session, pipeline_id: int) -> Revision:
    pipeline = session.get(Pipeline, pipeline_id)
    assert pipeline is not None
    return pipeline.revision


def failed_test_job(lab: KernelLab) -> int:
    """A pipeline of the kernel tree run to its end, its test failing; the test job's id."""
    jobs = lab.jobs(lab.checked_out())
    with lab.runtime.store.session() as session:
        revision = kernel_lab_revision(session, jobs["checkout"].pipeline_id)
        revision.patches = [{"name": "fix.patch", "digest": lab.runtime.artifacts.put_bytes(PATCH)}]
    lab.report(jobs[BASE_BUILD].id)
    lab.report(jobs[CHANGE_BUILD].id, outputs=lab.stored(build_outputs("2" * 64)))  # not the base's binaries
    lab.report(jobs[TEST].id, "fail", outputs={}, tests=(TestCase(path="a", status="fail", reason="exit 1"),))
    return jobs[TEST].id


def test_a_reproduction_runs_exactly_that_jobs_builds_and_test_at_the_new_commit(kernel_lab: KernelLab) -> None:
    job_id = failed_test_job(kernel_lab)
    doc = read_job_spec(kernel_lab.runtime, job_id)
    assert doc is not None and doc.job.result == "fail"
    assert [base64.b64decode(p.content_base64 or "") for p in doc.patches] == [PATCH]
    reproduction = plan_reproduction(doc, kernel_lab.runtime.config.inventory(), trusted=True)
    pipeline_id = submit(kernel_lab.runtime, Submission(
        tree_name=doc.tree.name, tree_url=doc.tree.url, source="reproduce", external_id="r1", base_ref=BASE,
        patches=((doc.patches[0].name, PATCH),), reproduction=reproduction))  # fmt: skip
    start_pipeline(kernel_lab.runtime, pipeline_id)
    # The checkout worker gets a plain CheckoutSpec: the reproduction stays on the control side.
    (checkout,) = [m for m in kernel_lab.messages(CHECKOUT_QUEUE) if m.pipeline_id == pipeline_id]
    assert checkout.checkout is not None and [p.name for p in checkout.checkout.patches] == ["fix.patch"]
    assert "reproduce" not in checkout.model_dump_json() and "of_job" not in checkout.model_dump_json()
    outputs = {"base_sha": BASE, "head_sha": NEW_HEAD, "tested_sha": NEW_HEAD, "plan_text": OTHER_PLAN,
               "changed_files": ["kernel/printk/printk.c"], "tree_has": {"checkpatch": True}}  # fmt: skip
    record_result(kernel_lab.runtime, JobResult(job_id=checkout.job_id, delivery=1, result="pass",
                                                result_token=checkout.result_token, outputs=outputs))  # fmt: skip
    jobs = kernel_lab.jobs(pipeline_id)
    assert sorted(jobs) == sorted(["checkout", BASE_BUILD, CHANGE_BUILD, TEST])  # no static job, no plan's job
    original = kernel_lab.jobs(doc.job.pipeline_id)
    for name, head in ((BASE_BUILD, BASE), (CHANGE_BUILD, NEW_HEAD)):
        assert jobs[name].spec["head_sha"] == head
        assert jobs[name].spec["script"] == original[name].spec["script"]
        assert jobs[name].spec["kernel"] == original[name].spec["kernel"]
    assert jobs[CHANGE_BUILD].depends_on_id == jobs[BASE_BUILD].id
    assert jobs[TEST].depends_on_id == jobs[CHANGE_BUILD].id
    assert jobs[TEST].spec["commands"] == original[TEST].spec["commands"]
    assert jobs[TEST].spec["device_class"] == QEMU
    assert kernel_lab.pipeline(pipeline_id).notes == [f"reproduction of job {job_id}"]
    assert original[CHANGE_BUILD].spec["head_sha"] == HEAD  # the original is untouched


def test_a_reproduction_whose_class_left_the_config_ends_as_a_user_error(kernel_lab: KernelLab) -> None:
    doc = read_job_spec(kernel_lab.runtime, failed_test_job(kernel_lab))
    assert doc is not None
    reproduction = plan_reproduction(doc, kernel_lab.runtime.config.inventory(), trusted=True)
    reproduction = reproduction.model_copy(update={"device_class": "qemu-gone"})
    pipeline_id = submit(kernel_lab.runtime, Submission(
        tree_name=doc.tree.name, tree_url=doc.tree.url, source="reproduce", external_id="r2", base_ref=BASE,
        reproduction=reproduction))  # fmt: skip
    start_pipeline(kernel_lab.runtime, pipeline_id)
    (checkout,) = [m for m in kernel_lab.messages(CHECKOUT_QUEUE) if m.pipeline_id == pipeline_id]
    record_result(kernel_lab.runtime, JobResult(job_id=checkout.job_id, delivery=1, result="pass",
                                                result_token=checkout.result_token,
                                                outputs={"base_sha": BASE, "head_sha": BASE}))  # fmt: skip
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert pipeline.state == "done" and pipeline.error_code == "user-error"
    assert "reproduction: " in (pipeline.error_message or "") and "qemu-gone" in (pipeline.error_message or "")
