"""Base builds through the real result path: one build of a (tree, commit, recipe) shared by every
pipeline that needs it, handed on when it does not pass; the change's build compared with it, and its
tests skipped when what they would boot is what the base boots."""

from __future__ import annotations

from functools import partial

from bot.pipelines.steering import cancel_pipelines, retest_failed
from tests.bot.pipelines.kernel_lab import (
    BASE,
    HEAD,
    PLAN,
    PRINTK,
    QEMU,
    KernelLab,
    build_outputs,
    run_together,
    warning,
)
from workers.app import lab_queue
from workers.spec import TestCase

BASE_BUILD, CHANGE_BUILD, TEST = "base x86_64", "x86_64", f"{QEMU} boot"


def base_messages(lab: KernelLab) -> list[int]:
    return [m.job_id for m in lab.messages() if m.build is not None and m.build.role == "base"]


def test_the_base_build_and_the_change_build_carry_role_trust_and_recipe(kernel_lab: KernelLab) -> None:
    jobs = kernel_lab.jobs(kernel_lab.checked_out(plan_from="base"))  # an untrusted submitter
    base = kernel_lab.message_for(jobs[BASE_BUILD].id).build
    assert base is not None and base.kernel is not None
    assert (base.head_sha, base.role, base.trusted, base.kernel.arch) == (BASE, "base", True, "x86_64")
    change = jobs[CHANGE_BUILD]
    assert change.state == "pending" and change.depends_on_id == jobs[BASE_BUILD].id  # waits for the base
    kernel_lab.report(jobs[BASE_BUILD].id)
    sent = kernel_lab.message_for(change.id).build
    assert sent is not None and sent.kernel == base.kernel
    assert (sent.head_sha, sent.role, sent.trusted, sent.script) == (HEAD, "change", False, base.script)
    trusted = kernel_lab.jobs(kernel_lab.checked_out(plan_from="head", head="e" * 40))
    assert trusted[CHANGE_BUILD].spec["trusted"] is True


def test_ten_pipelines_on_one_base_run_one_base_build(kernel_lab: KernelLab) -> None:
    pipelines = [kernel_lab.checked_out(head=f"{n:040x}") for n in range(1, 11)]
    bases = [kernel_lab.jobs(p)[BASE_BUILD] for p in pipelines]
    leader = bases[0]
    assert base_messages(kernel_lab) == [leader.id]
    assert leader.state == "queued" and leader.follows_id is None
    assert [(b.state, b.follows_id) for b in bases[1:]] == [("pending", leader.id)] * 9
    kernel_lab.report(leader.id, outputs=build_outputs("1" * 64, (warning(30),)))
    for pipeline_id in pipelines:
        jobs = kernel_lab.jobs(pipeline_id)
        base = jobs[BASE_BUILD]
        assert (base.state, base.result) == ("done", "pass")
        assert base.outputs["binary_digest"] == "1" * 64 and base.outputs["warnings"] == [warning(30)]
        assert base.reused_from_id == (None if base.id == leader.id else leader.id)
        assert jobs[CHANGE_BUILD].state == "queued"  # each change's own build goes now
    assert base_messages(kernel_lab) == [leader.id]  # still the one base build


def test_ten_pipelines_drafting_at_once_run_one_base_build(kernel_lab: KernelLab) -> None:
    checkouts = [kernel_lab.new_checkout() for _ in range(10)]
    run_together([partial(kernel_lab.pass_checkout, c, head=f"{c:040x}") for c in checkouts])
    bases = [kernel_lab.jobs(kernel_lab.pipeline_of(c))[BASE_BUILD] for c in checkouts]
    running = [b for b in bases if b.state == "queued"]
    assert len(running) == 1 and base_messages(kernel_lab) == [running[0].id]
    assert sorted(b.follows_id or 0 for b in bases) == [0] + [running[0].id] * 9


def test_a_later_pipeline_takes_the_finished_base_build(kernel_lab: KernelLab) -> None:
    first = kernel_lab.jobs(kernel_lab.checked_out())
    kernel_lab.report(first[BASE_BUILD].id)
    later = kernel_lab.jobs(kernel_lab.checked_out(head="e" * 40))
    base = later[BASE_BUILD]
    assert (base.state, base.result, base.reused_from_id) == ("done", "pass", first[BASE_BUILD].id)
    assert base.outputs == kernel_lab.jobs(first["checkout"].pipeline_id)[BASE_BUILD].outputs
    assert later[CHANGE_BUILD].state == "queued"
    assert base_messages(kernel_lab) == [first[BASE_BUILD].id]


def test_a_failed_base_build_is_run_again_by_its_first_follower(kernel_lab: KernelLab) -> None:
    pipelines = [kernel_lab.checked_out(head=f"{n:040x}", checkpatch=False) for n in range(1, 4)]
    leader, second, third = (kernel_lab.jobs(p)[BASE_BUILD] for p in pipelines)
    kernel_lab.report(leader.id, "fail", outputs=build_outputs(""))
    assert base_messages(kernel_lab) == [leader.id, second.id]
    assert kernel_lab.jobs(pipelines[2])[BASE_BUILD].follows_id == second.id
    # The failed base's own change still builds (there is no base to compare with), and the base's
    # failure is not the change's.
    own = kernel_lab.jobs(pipelines[0])
    assert own[CHANGE_BUILD].state == "queued"
    kernel_lab.report(second.id)
    assert (kernel_lab.jobs(pipelines[2])[BASE_BUILD].reused_from_id, third.state) == (second.id, "pending")
    kernel_lab.report(own[CHANGE_BUILD].id, outputs=build_outputs("2" * 64))
    assert kernel_lab.jobs(pipelines[0])[CHANGE_BUILD].outputs["comparison"]["base_known"] is False
    kernel_lab.report(own[TEST].id, outputs={})
    pipeline = kernel_lab.pipeline(pipelines[0])
    assert (pipeline.state, pipeline.result) == ("done", "pass")


def test_a_cancelled_base_build_is_run_by_its_first_follower(kernel_lab: KernelLab) -> None:
    pipelines = [kernel_lab.checked_out(head=f"{n:040x}") for n in range(1, 3)]
    leader, follower = (kernel_lab.jobs(p)[BASE_BUILD] for p in pipelines)
    cancel_pipelines(kernel_lab.runtime, [pipelines[0]], "superseded")
    after = kernel_lab.jobs(pipelines[1])[BASE_BUILD]
    assert (after.state, after.follows_id) == ("queued", None)
    assert base_messages(kernel_lab) == [leader.id, follower.id]


def test_a_binary_identical_change_skips_its_boot_and_passes(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out()
    jobs = kernel_lab.jobs(pipeline_id)
    kernel_lab.report(jobs["static"].id, outputs={"annotations": []},
                      tests=(TestCase(path="static/diff-check", status="pass"),))  # fmt: skip
    kernel_lab.report(jobs[BASE_BUILD].id, outputs=build_outputs("1" * 64, (warning(30),)))
    # A comment edited in place: printk.c was recompiled, the binaries did not change, the warning moved.
    kernel_lab.report(jobs[CHANGE_BUILD].id, outputs=build_outputs("1" * 64, (warning(31),)))
    jobs = kernel_lab.jobs(pipeline_id)
    test = jobs[TEST]
    assert (test.state, test.result, test.error_message) == ("done", "skip", (
        "binary identical to base: x86_64's vmlinux, modules and artifacts equal the base build's"))  # fmt: skip
    assert kernel_lab.messages(lab_queue(QEMU)) == []  # never sent
    comparison = jobs[CHANGE_BUILD].outputs["comparison"]
    assert (comparison["binary_identical"], comparison["new_warnings"], comparison["base_known"]) == (True, [], True)
    pipeline = kernel_lab.pipeline(pipeline_id)
    assert (pipeline.state, pipeline.result, pipeline.error_code) == ("done", "pass", None)


def test_a_change_that_alters_the_binaries_boots_with_its_modules(kernel_lab: KernelLab) -> None:
    jobs = kernel_lab.jobs(kernel_lab.checked_out())
    kernel_lab.report(jobs[BASE_BUILD].id, outputs=build_outputs("1" * 64))
    kernel_lab.report(jobs[CHANGE_BUILD].id, outputs=build_outputs("2" * 64, (warning(11),)))
    sent = kernel_lab.message_for(jobs[TEST].id, lab_queue(QEMU)).test
    assert sent is not None and sent.modules == "modules.tar.gz" and "modules.tar.gz" in sent.artifacts
    comparison = kernel_lab.jobs(jobs["checkout"].pipeline_id)[CHANGE_BUILD].outputs["comparison"]
    assert [(w["line"], w["on_changed_line"]) for w in comparison["new_warnings"]] == [(11, True)]


def test_an_identical_kernel_still_boots_when_the_change_touches_the_plans_directory(kernel_lab: KernelLab) -> None:
    jobs = kernel_lab.jobs(kernel_lab.checked_out(changed=(PRINTK, ".labgate/tests/hello.sh")))
    kernel_lab.report(jobs[BASE_BUILD].id)
    kernel_lab.report(jobs[CHANGE_BUILD].id)  # the same binary digest as its base
    assert kernel_lab.jobs(jobs["checkout"].pipeline_id)[TEST].state == "queued"


def test_a_malformed_ledger_is_said_and_skips_nothing(kernel_lab: KernelLab) -> None:
    jobs = kernel_lab.jobs(kernel_lab.checked_out())
    kernel_lab.report(jobs[BASE_BUILD].id)
    kernel_lab.report(jobs[CHANGE_BUILD].id, outputs={**build_outputs(), "warnings": [{"file": "x.c"}]})
    after = kernel_lab.jobs(jobs["checkout"].pipeline_id)
    assert "change.outputs.warnings[0]: missing" in after[CHANGE_BUILD].outputs["comparison_error"]
    assert after[TEST].state == "queued"


def test_command_builds_stay_as_they_were(kernel_lab: KernelLab) -> None:
    plan = PLAN.replace("kernel: {arch: x86_64, config: tinyconfig, targets: [image, modules]}",
                        "command: make\n    artifacts: [bzImage, modules.tar.gz]")  # fmt: skip
    jobs = kernel_lab.jobs(kernel_lab.checked_out(plan=plan, checkpatch=False))
    assert sorted(jobs) == sorted(["checkout", CHANGE_BUILD, TEST])
    build = kernel_lab.message_for(jobs[CHANGE_BUILD].id).build
    assert build is not None and (build.kernel, build.role, build.trusted) == (None, "change", False)
    kernel_lab.report(jobs[CHANGE_BUILD].id, outputs={"artifacts": {}})
    assert "comparison" not in kernel_lab.jobs(jobs["checkout"].pipeline_id)[CHANGE_BUILD].outputs


def test_a_base_build_finishing_while_others_draft_leaves_no_follower_waiting(kernel_lab: KernelLab) -> None:
    """Its followers are read under its row lock: a pipeline drafting as its result is recorded either
    follows it before (and takes its pass) or sees it finished (and takes the pass itself)."""
    leader = kernel_lab.jobs(kernel_lab.checked_out())[BASE_BUILD]
    checkouts = [kernel_lab.new_checkout() for _ in range(6)]
    run_together([*(partial(kernel_lab.pass_checkout, c, head=f"{c:040x}") for c in checkouts),
                  partial(kernel_lab.report, leader.id)])  # fmt: skip
    bases = [kernel_lab.jobs(kernel_lab.pipeline_of(c))[BASE_BUILD] for c in checkouts]
    assert [(b.state, b.result, b.reused_from_id) for b in bases] == [("done", "pass", leader.id)] * 6
    assert base_messages(kernel_lab) == [leader.id]


def test_a_retest_of_a_change_build_whose_base_failed_runs_it(kernel_lab: KernelLab) -> None:
    pipeline_id = kernel_lab.checked_out(checkpatch=False)
    jobs = kernel_lab.jobs(pipeline_id)
    kernel_lab.report(jobs[BASE_BUILD].id, "fail", outputs=build_outputs(""))
    error = {**warning(11), "level": "error", "flag": "", "text": "expected ';' before '}' token"}
    kernel_lab.report(jobs[CHANGE_BUILD].id, "fail", outputs=build_outputs("", (error,)))
    assert kernel_lab.pipeline(pipeline_id).result == "fail"  # the change's own build failed
    comparison = kernel_lab.jobs(pipeline_id)[CHANGE_BUILD].outputs["comparison"]  # its errors are reported
    assert [(e["line"], e["on_changed_line"]) for e in comparison["errors"]] == [(11, True)]
    again = retest_failed(kernel_lab.runtime, pipeline_id, CHANGE_BUILD)
    assert again is not None
    rerun = kernel_lab.jobs(again)
    assert (rerun[BASE_BUILD].state, rerun[BASE_BUILD].result) == ("done", "fail")  # kept
    assert rerun[CHANGE_BUILD].state == "queued"  # not left waiting for a base pass that will not come


def test_a_base_build_is_shared_only_by_the_same_recipe_on_the_same_tree(kernel_lab: KernelLab) -> None:
    """A trusted submitter's plan (the change's own) may name any recipe, and its base build writes warm
    state: it is never taken for the base build of a plan that says something else, nor of another tree."""
    first = kernel_lab.jobs(kernel_lab.checked_out())[BASE_BUILD]
    other_recipe = PLAN.replace("config: tinyconfig", "config: allnoconfig")
    second = kernel_lab.jobs(kernel_lab.checked_out(plan=other_recipe, head="e" * 40))[BASE_BUILD]
    assert second.follows_id is None and base_messages(kernel_lab) == [first.id, second.id]
    third = kernel_lab.jobs(kernel_lab.checked_out(head="f" * 40, tree_name="linux-next"))[BASE_BUILD]
    assert third.follows_id is None and base_messages(kernel_lab) == [first.id, second.id, third.id]


def test_a_base_pass_whose_artifacts_were_pruned_is_built_again(kernel_lab: KernelLab) -> None:
    first = kernel_lab.jobs(kernel_lab.checked_out())
    kept = kernel_lab.runtime.artifacts.put_bytes(b"a kernel image")
    outputs = build_outputs() | {"artifacts": {"arch/x86/boot/bzImage": {"digest": kept, "mode": 0o644}}}
    kernel_lab.report(first[BASE_BUILD].id, outputs=outputs)
    taken = kernel_lab.jobs(kernel_lab.checked_out(head="e" * 40))[BASE_BUILD]
    assert (taken.state, taken.reused_from_id) == ("done", first[BASE_BUILD].id)  # its blobs are there
    kernel_lab.runtime.artifacts.path_of(kept).unlink()  # gone, as a prune leaves it
    rebuilt = kernel_lab.jobs(kernel_lab.checked_out(head="f" * 40))[BASE_BUILD]
    assert (rebuilt.state, rebuilt.reused_from_id) == ("queued", None)
    assert base_messages(kernel_lab) == [first[BASE_BUILD].id, rebuilt.id]
