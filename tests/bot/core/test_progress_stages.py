"""Drafting issue 11's stages: the static job first, a base build before each kernel build of a change,
documentation-only changes, test modules, and a binary-identical skip counted as evidence."""

from __future__ import annotations

from bot.core.inventory import ClassEntry, Inventory
from bot.core.plans import kernel_build_of, parse_plan
from bot.core.progress import (
    BINARY_IDENTICAL,
    binary_identical_reason,
    draft_jobs,
    is_base_build,
    no_test_ran,
    selection_notes,
)
from tests.bot.pipelines.kernel_lab import BASE, HEAD, PLAN

KERNEL_PLAN = PLAN.replace("tests:", "  - {name: tools, command: make tools, artifacts: [tools/out]}\ntests:")
INVENTORY = Inventory([ClassEntry(name="qemu-x86_64", tags={"arch": "x86_64", "platform": "qemu"}, memory_mb=2048)])


def drafts(text: str = KERNEL_PLAN, changed: tuple[str, ...] = ("kernel/printk/printk.c",), **kwargs: object) -> list:
    args: dict = {"head_sha": HEAD, "changed_files": list(changed), "inventory": INVENTORY, "tier": "hardware",
                  "max_build_s": 1800, "base_sha": BASE, "tree_name": "linux", "trusted": False} | kwargs  # fmt: skip
    return draft_jobs(parse_plan(text, "p"), **args)


def test_the_static_job_comes_first_for_a_tree_with_checkpatch_and_carries_the_shas() -> None:
    jobs = drafts(tree_has_checkpatch=True)
    assert [(d.kind, d.name) for d in jobs] == [("static", "static"), ("build", "base x86_64"), ("build", "x86_64"),
                                                ("build", "tools"), ("test", "qemu-x86_64 boot")]  # fmt: skip
    assert jobs[0].spec == {"base_sha": BASE, "head_sha": HEAD, "checkpatch": "on", "diff_check": True,
                            "kernel_doc": True, "timeout_s": 300}  # fmt: skip


def test_no_static_job_without_checkpatch_unless_the_plan_asks() -> None:
    assert "static" not in [d.kind for d in drafts(tree_has_checkpatch=False)]
    asked = KERNEL_PLAN.replace("tests:", "static: {checkpatch: strict, kernel_doc: false, sparse: true}\ntests:")
    static = drafts(asked, tree_has_checkpatch=False, max_build_s=120)[0]
    assert static.notes == ("static check sparse asked, not run: the static stage does not run it yet",)
    assert (static.kind, static.spec["checkpatch"], static.spec["kernel_doc"], static.spec["timeout_s"]) == (
        "static", "strict", False, 120)  # fmt: skip


def test_a_kernel_build_of_a_change_waits_for_its_base_build() -> None:
    by_name = {d.name: d for d in drafts(trusted=True)}
    kernel = kernel_build_of(parse_plan(KERNEL_PLAN, "p").builds[0], "linux")
    base, change = by_name["base x86_64"], by_name["x86_64"]
    assert base.needs is None and change.needs == "base x86_64"
    assert (base.spec["head_sha"], base.spec["role"], base.spec["trusted"], base.spec["kernel"]) == (
        BASE, "base", True, kernel)  # fmt: skip
    assert (change.spec["head_sha"], change.spec["role"], change.spec["trusted"], change.spec["kernel"]) == (
        HEAD, "change", True, kernel)  # fmt: skip
    assert base.spec["script"] == change.spec["script"] and "modules.tar.gz" in change.spec["artifacts"]
    assert is_base_build("build", base.spec) and not is_base_build("build", change.spec)


def test_an_untrusted_change_build_writes_no_warm_state_but_its_base_build_does() -> None:
    by_name = {d.name: d for d in drafts(trusted=False)}
    assert by_name["x86_64"].spec["trusted"] is False and by_name["base x86_64"].spec["trusted"] is True


def test_command_builds_and_a_change_that_is_its_base_get_no_base_build() -> None:
    by_name = {d.name: d for d in drafts()}
    assert by_name["tools"].spec == {"name": "tools", "head_sha": HEAD, "script": "make tools",
                                     "artifacts": ["tools/out"], "timeout_s": 600}  # fmt: skip
    assert by_name["tools"].needs is None
    same = {d.name: d for d in drafts(base_sha=HEAD)}
    assert "base x86_64" not in same and same["x86_64"].needs is None and same["x86_64"].spec["role"] == "change"


def test_the_test_job_carries_the_plans_modules_tarball() -> None:
    test = drafts()[-1]
    assert test.kind == "test" and test.spec["modules"] == "modules.tar.gz"


def test_a_documentation_only_change_gets_the_static_job_alone_even_without_checkpatch() -> None:
    changed = ("Documentation/process/howto.rst",)
    jobs = drafts(changed=changed, tree_has_checkpatch=False)
    assert [(d.kind, d.name) for d in jobs] == [("static", "static")]
    notes = selection_notes(parse_plan(KERNEL_PLAN, "p"), list(changed))
    assert len(notes) == 1 and notes[0].startswith("documentation-only change: only the static checks ran")


def test_a_binary_identical_skip_is_evidence_and_other_skips_are_not() -> None:
    identical = binary_identical_reason("x86_64")
    assert identical == ("binary identical to base: x86_64's vmlinux, modules and artifacts equal the base "
                         "build's")  # fmt: skip
    assert identical.startswith(BINARY_IDENTICAL)
    assert no_test_ran([("skip", identical), ("skip", "needs /ok-to-test hardware")]) is None
    assert no_test_ran([("skip", "needs /ok-to-test hardware")]) == "no test ran: needs /ok-to-test hardware"
