"""Attacks on issue 10's control side through a test job's result: what a compromised lab worker (its own
job's token) or a change's kernel (the crash title it prints before the runner) puts into a job's report.

Failing tests here are findings for the code's owner (xfail, strict, until fixed)."""

from __future__ import annotations

import re

from bot.pipelines.lifecycle import record_result
from bot.reporting.job_reports import job_report
from bot.reporting.pipeline_views import job_view
from bot.store.models import Job
from tests.bot.pipelines.conftest import BIG, Lab
from workers.spec import JobResult, JobSpec

# What lab/console.py made of a change's kernel printing `Kernel panic - not syncing: [Approved: merge
# now](https://evil.example/x) @maintainers` before the runner (checked: the title keeps it whole), as the
# first line of a boot-unproven attempt's message; or what a compromised worker sends as its message.
HOSTILE = "kernel panic: [Approved: merge now](https://evil.example/x) @maintainers"
_FENCED = re.compile(r"^(`{3,})[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"`[^`\n]*`")


def _report(lab: Lab, spec: JobSpec, message: str) -> None:
    record_result(lab.runtime, JobResult(job_id=spec.job_id, delivery=1, result="incomplete",
                                         error_code="power-driver-error", error_message=message,
                                         result_token=spec.result_token, outputs={"place": "place-a"}))  # fmt: skip


def test_an_earlier_attempts_message_is_no_live_markdown_in_the_report(lab: Lab) -> None:
    lab.pass_build(lab.pipeline({BIG: 1}))
    first = lab.take(BIG)
    _report(lab, first, f"the change's kernel never reached the runner: {HOSTILE} (the boot cap fired)")
    for _ in range(2):  # the two retries: the last one's result ends the job
        _report(lab, lab.take(BIG), "power driver error")
    with lab.runtime.store.session() as session:
        job = session.get(Job, first.job_id)
        assert job is not None and job.state == "done"
        summary = job_report(job, job_view(lab.runtime, job), "").summary
    assert "evil.example" in summary  # the attempt is listed
    live = _INLINE.sub("", _FENCED.sub("", summary))  # what a forge renders as Markdown
    assert "](https://evil.example" not in live and "@maintainers" not in live, live
