"""PatchworkChecksSink against FakePatchwork: every update a new check on every patch, states, contexts, refusals."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bot.forges.patchwork.checks import PatchworkChecksSink, check_context, check_state
from bot.forges.patchwork.client import PatchworkClient, PatchworkError, classify_error
from bot.reporting.sinks import JobReport, JobStatusSink
from tests.bot.forges.patchwork.conftest import PROJECT
from tests.fakes.patchwork_api import NO_PERMISSION, FakePatchwork

REPORT = JobReport(job_id=5, pipeline_id=2, kind="build", name="x86_64", label="labgate / build x86_64",
                   stage="queued", verdict="pending", title="queued", summary="",
                   details_url="https://ci.invalid/jobs/5")  # fmt: skip


@pytest.fixture(autouse=True)
def three_patches(pw: FakePatchwork) -> None:
    pw.add_series(PROJECT, "three patches", ["one", "two", "three"])


def sink_for(pw: FakePatchwork, user: str = "labgate-bot") -> PatchworkChecksSink:
    return PatchworkChecksSink(PatchworkClient(pw.base_url, pw.add_token(user)), pw.series_patches(1))


def test_every_update_is_a_new_check_on_every_patch(pw: FakePatchwork) -> None:
    sink: JobStatusSink = sink_for(pw)
    assert sink.create(REPORT) == 0
    sink.update(0, dataclasses.replace(REPORT, stage="running", title="running"))
    sink.update(0, dataclasses.replace(REPORT, stage="done", verdict="pass", title="pass (12 pass)"))
    assert sink.find(REPORT) is None
    for patch_id in pw.series_patches(1):
        checks = pw.checks(patch_id)
        assert [(c["state"], c["context"], c["description"]) for c in checks] == [
            ("pending", "labgate-build-x86_64", "queued"), ("pending", "labgate-build-x86_64", "running"),
            ("success", "labgate-build-x86_64", "pass (12 pass)")]  # fmt: skip
        assert {c["target_url"] for c in checks} == {"https://ci.invalid/jobs/5"}
    posted = pw.requests_to("POST", r"/api/patches/\d+/checks/")
    assert [r.path for r in posted[:3]] == [f"/api/patches/{p}/checks/" for p in pw.series_patches(1)]


@pytest.mark.parametrize(("verdict", "state"), [("pass", "success"), ("fail", "fail"), ("warning", "warning"),
                                                ("neutral", "warning"), ("cancelled", "warning"),
                                                ("timed-out", "warning"), ("pending", "pending")])  # fmt: skip
def test_states_and_our_errors_never_fail(pw: FakePatchwork, verdict: str, state: str) -> None:
    report = dataclasses.replace(REPORT, stage="done", verdict=verdict)  # type: ignore[arg-type]
    assert check_state(report) == state
    sink_for(pw).create(report)
    assert [c["state"] for c in pw.checks(1)] == [state]


def test_not_done_is_pending_whatever_the_verdict() -> None:
    assert check_state(dataclasses.replace(REPORT, stage="running", verdict="fail")) == "pending"


def test_contexts_are_slugs_stable_and_distinct() -> None:
    assert check_context("labgate / build x86_64") == "labgate-build-x86_64"
    assert check_context("labgate / checkout") == "labgate-checkout"
    labels = ["labgate / build x86_64", "labgate/build x86_64", "labgate / build / x86_64", "labgate build x86_64",
              "labgate / qemu-x86_64 unit", "labgate / qemu x86_64 unit", "labgate / qemu_x86_64 unit",
              "labgate / build x86_64 ", "labgate / ü", "labgate / ö", "", "/", "x" * 300, "x" * 301,
              "labgate / " + "a " * 200, "labgate / qemu-x86_64 unit--0"]  # fmt: skip
    contexts = [check_context(label) for label in labels]
    assert len(set(contexts)) == len(labels)
    assert all(re.fullmatch(r"[-A-Za-z0-9_]{1,255}", c) for c in contexts)
    assert contexts == [check_context(label) for label in labels]  # stable


def test_long_page_url_is_left_out_and_description_bounded(pw: FakePatchwork) -> None:
    long = dataclasses.replace(REPORT, details_url="https://ci.invalid/" + "a" * 300, title="t " * 400)
    sink_for(pw).create(long)
    check = pw.checks(1)[0]
    assert check["target_url"] is None and len(check["description"]) == 500


def test_not_a_maintainer_is_403_with_the_servers_words(pw: FakePatchwork) -> None:
    with pytest.raises(PatchworkError) as raised:
        sink_for(pw, "stranger").create(REPORT)
    assert (raised.value.status, raised.value.detail) == (403, NO_PERMISSION)
    assert not classify_error(raised.value).transient  # type: ignore[union-attr]
    assert pw.checks(1) == []


def test_a_refused_check_is_400_with_the_servers_words(pw: FakePatchwork) -> None:
    with pytest.raises(PatchworkError) as raised:
        sink_for(pw).create(dataclasses.replace(REPORT, details_url="javascript:alert(1)"))
    assert (raised.value.status, raised.value.detail) == (400, "target_url: Enter a valid URL.")
    assert not classify_error(raised.value).transient  # type: ignore[union-attr]


def test_a_failure_midway_is_posted_again_whole_by_the_retry(pw: FakePatchwork) -> None:
    sink = sink_for(pw)
    second = pw.series_patches(1)[1]
    pw.fail_next("POST", rf"/api/patches/{second}/checks/", 502)
    with pytest.raises(PatchworkError) as raised:
        sink.create(REPORT)
    assert classify_error(raised.value).transient  # type: ignore[union-attr]
    sink.create(REPORT)
    assert [len(pw.checks(p)) for p in pw.series_patches(1)] == [2, 1, 1]  # the repeat on patch 1 is harmless


def test_attack_control_characters_in_a_title_never_reach_the_description(pw: FakePatchwork) -> None:
    """A refusal quotes a submitter's Subject: escapes, line breaks and bidi overrides end as spaces."""
    title = 'not tested: patch "[PATCH] x\x1b[2J\r\nX-Evil: 1\u202e\u2028" <a\x07@b>: 0001.patch:3: rule'
    sink_for(pw).create(dataclasses.replace(REPORT, stage="done", verdict="warning", title=title))
    (posted,) = pw.checks(1)
    assert posted["description"] == 'not tested: patch "[PATCH] x [2J X-Evil: 1 " <a @b>: 0001.patch:3: rule'
