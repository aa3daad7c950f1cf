"""Tests chosen by MAINTAINERS areas through the real result path: the checkout stores the base's MAINTAINERS,
the control side reads it back and selects by the F:/X: patterns of the areas a test names."""

from __future__ import annotations

from bot.pipelines.lifecycle import record_result
from tests.bot.pipelines.kernel_lab import BASE, CHECKOUT_TOKEN, HEAD, PLAN, KernelLab
from workers.spec import JobResult

MAINTAINERS = """\
PRINTK
M:\tPetr Mladek <pmladek@suse.com>
S:\tMaintained
F:\tinclude/linux/printk.h
F:\tkernel/printk/
X:\tkernel/printk/index.c

SERIAL DRIVERS
M:\tGreg Kroah-Hartman <gregkh@linuxfoundation.org>
S:\tMaintained
F:\tdrivers/tty/serial/
"""
PLAN_WITH_AREAS = PLAN.replace("    device: {platform: qemu}\n", "    device: {platform: qemu}\n    areas: [PRINTK]\n")


def _checked_out(lab: KernelLab, changed: str, *, maintainers: bool = True) -> int:
    checkout_id = lab.new_checkout()
    outputs = {"base_sha": BASE, "head_sha": HEAD, "tested_sha": HEAD, "plan_text": PLAN_WITH_AREAS,
               "changed_files": [changed], "changed_lines": {changed: [[1, 2]]},
               "tree_has": {"checkpatch": False, "kernel_doc": False}}  # fmt: skip
    if maintainers:
        outputs["maintainers_digest"] = lab.runtime.artifacts.put_bytes(MAINTAINERS.encode())
    record_result(lab.runtime, JobResult(job_id=checkout_id, delivery=1, result="pass", result_token=CHECKOUT_TOKEN,
                                         outputs=outputs))  # fmt: skip
    return lab.pipeline_of(checkout_id)


def test_a_change_in_the_area_runs_the_areas_test(kernel_lab: KernelLab) -> None:
    jobs = kernel_lab.jobs(_checked_out(kernel_lab, "kernel/printk/printk.c"))
    assert "qemu-x86_64 boot" in jobs


def test_a_change_outside_the_area_or_in_its_excluded_files_does_not_and_the_report_says_why(
    kernel_lab: KernelLab,
) -> None:
    for changed in ("drivers/tty/serial/8250/8250_core.c", "kernel/printk/index.c"):
        pipeline_id = _checked_out(kernel_lab, changed)
        assert "qemu-x86_64 boot" not in kernel_lab.jobs(pipeline_id), changed
        notes = " ".join(kernel_lab.pipeline(pipeline_id).notes)
        assert "boot" in notes and "PRINTK" in notes, notes


def test_without_the_bases_maintainers_the_areas_test_runs_and_says_so(kernel_lab: KernelLab) -> None:
    pipeline_id = _checked_out(kernel_lab, "drivers/tty/serial/8250/8250_core.c", maintainers=False)
    assert "qemu-x86_64 boot" in kernel_lab.jobs(pipeline_id)
    assert "MAINTAINERS" in " ".join(kernel_lab.pipeline(pipeline_id).notes)
