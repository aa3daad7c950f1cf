"""A series' reports in Patchwork's words: a checkout that failed is "not tested" (warning), never `fail`."""

from __future__ import annotations

import dataclasses

from bot.forges.patchwork.report import as_series_check, as_series_summary
from bot.reporting.sinks import JobReport, PipelineSummary

REFUSAL = 'patch "[PATCH 2/2] README: more" <a-2@example.org>: 0002.patch:16: binary patches are not accepted'
CHECKOUT = JobReport(job_id=1, pipeline_id=1, kind="checkout", name="checkout", label="labgate / checkout",
                     stage="done", verdict="fail", title="error", summary="", details_url="https://ci.invalid/jobs/1",
                     error_lines=f"{REFUSAL}\n")  # fmt: skip
HEADLINE = "labgate: fail: 1 failing (checkout: error)"
SUMMARY = PipelineSummary(pipeline_id=1, done=True, verdict="warning", headline=HEADLINE, markdown="",
                          text=f"{HEADLINE}\n\nlabgate / checkout: error", url="https://ci.invalid/pipelines/1",
                          jobs=(CHECKOUT,))  # fmt: skip


def test_a_refused_patch_is_not_tested_on_its_check_with_the_patch_and_the_rule() -> None:
    said = as_series_check(CHECKOUT)
    assert (said.verdict, said.title) == ("warning", f"not tested: {REFUSAL}")


def test_the_series_mail_heads_with_the_refusal_and_keeps_its_error_lines() -> None:
    said = as_series_summary(SUMMARY)
    assert said.headline == f"labgate: not tested: {REFUSAL}" and said.verdict == "warning"
    assert said.text.startswith(said.headline + "\n") and said.jobs == SUMMARY.jobs  # the mail still quotes them


def test_a_series_that_was_tested_keeps_its_summary() -> None:
    failed = dataclasses.replace(CHECKOUT, kind="test", name="qemu", label="labgate / qemu", title="fail: math.mul")
    passed = dataclasses.replace(CHECKOUT, verdict="pass", title="pass")
    tested = dataclasses.replace(SUMMARY, headline="labgate: fail: 1 failing (qemu)", jobs=(passed, failed))
    assert as_series_summary(tested) == tested
