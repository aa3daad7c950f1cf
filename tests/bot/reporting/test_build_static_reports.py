"""How a kernel build's new warnings and the static stage's findings are reported, from the store to every
forge: the job's title leads with the count line, its report lists each new warning, and only new
warnings on changed lines, errors and static findings on changed lines are annotated. Pre-existing
warnings never are. Each forge's renderer is fed the same pipeline: GitHub check runs (FakeGitHub),
GitLab's status and merge request note, Patchwork checks (FakePatchwork) and the report mail."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from bot.core.build_compare import compare_builds, comparison_outputs
from bot.forges.github.client import GitHubApp, make_retry
from bot.forges.github.reporter import check_annotations, sync_checks
from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.reporter import CommitStatusSink, MergeRequestNoteSink, inert
from bot.forges.mail.message import MailRecipients, MailThread, compose_report_mail
from bot.forges.patchwork.checks import PatchworkChecksSink
from bot.forges.patchwork.client import PatchworkClient
from bot.forges.patchwork.report import as_series_check
from bot.host.config import Config, Tree, Web
from bot.host.stores import Runtime, open_runtime
from bot.reporting.pipeline_views import pipeline_view
from bot.reporting.sinks import JobReport, PipelineSummary
from bot.reporting.summary import pipeline_summary, summary_markdown
from bot.store import models
from tests.bot.core.test_build_compare import GCC_BASE, GCC_CHANGE, ledger
from tests.bot.reporting.test_summary import MARKDOWN, walk
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import DEVELOPER, FakeGitLab
from tests.fakes.patchwork_api import FakePatchwork

REPO = "octo-org/linux"
INSTALLATION = 77
HEAD = "c" * 40
FIRST, SECOND = "1" * 40, "2" * 40
# Line 7 holds a pre-existing warning (the unused parameter, shifted there by the change): it is on a
# changed line and still must not be annotated. Line 23 holds the change's new unused variable.
CHANGED = {"drivers/a.c": [[1, 3], [7, 7], [23, 23]], "Documentation/a.rst": [[4, 4]]}
NEW_LINE = "drivers/a.c:23: unused variable ‘z’ [-Wunused-variable]"
ANNOTATIONS = [
    {"file": "drivers/a.c", "line": 23, "level": "error", "source": "checkpatch", "check": "CODE_INDENT",
     "text": "code indent should use tabs where possible", "commit": FIRST},
    {"file": "drivers/a.c", "line": 40, "level": "warning", "source": "checkpatch", "check": "LONG_LINE",
     "text": "line length of 104 exceeds 100 columns", "commit": FIRST},
    {"file": "", "line": 0, "level": "error", "source": "checkpatch", "check": "MISSING_SIGN_OFF",
     "text": "Missing Signed-off-by: line(s)", "commit": SECOND},
    {"file": "Documentation/a.rst", "line": 4, "level": "error", "source": "diff-check", "check": "",
     "text": "trailing whitespace.", "commit": ""},
]  # fmt: skip
STATIC_TESTS = (("static/checkpatch/1-drivers-a-add-z", "fail"), ("static/checkpatch/2-docs-fix-a-typo", "fail"),
                ("static/diff-check", "fail"), ("static/kernel-doc", "pass"))  # fmt: skip


def kernel_outputs(text: str, *, digest: str = "ab" * 32) -> dict[str, Any]:
    return {"warnings": ledger(text), "warnings_complete": True, "binary_digest": digest, "recompiled": []}


@dataclass
class Stage:
    runtime: Runtime
    pipeline_id: int
    summary: PipelineSummary

    def report(self, label: str) -> JobReport:
        return next(job for job in self.summary.jobs if job.label == label)


def pull_request_pipeline(session: Session) -> models.Pipeline:
    """A done, failed pipeline of pull request 1 of REPO on tree linux, added to the session."""
    tree = models.Tree(name="linux", url="https://example.org/linux.git")
    change = models.Change(tree=tree, source="github", external_id=f"{REPO}#1", title="t", number=1,
                           forge_repo=REPO, installation_id=INSTALLATION)  # fmt: skip
    pipeline = models.Pipeline(revision=models.Revision(change=change, base_ref="main", head_sha=HEAD),
                               state="done", result="fail")  # fmt: skip
    session.add(pipeline)
    return pipeline


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    config = Config(data_dir=tmp_path / "data", web=Web(public_url="https://ci.example.org"),
                    trees=[Tree(name="linux", url="https://example.org/linux.git")])  # fmt: skip
    runtime = open_runtime(config, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    base = kernel_outputs(GCC_BASE)
    change = kernel_outputs(GCC_CHANGE, digest="cd" * 32)
    # What the control side stores after the change build's result (bot/pipelines/change_builds.py).
    compared = comparison_outputs(compare_builds({"result": "pass", "outputs": change},
                                                 {"result": "pass", "outputs": base}, CHANGED))  # fmt: skip
    identical = comparison_outputs(compare_builds({"result": "pass", "outputs": base},
                                                  {"result": "pass", "outputs": base}, CHANGED))  # fmt: skip
    failed = kernel_outputs("lib/b.c:2:6: error: conflicting types for ‘x’; have ‘long int’\n" + GCC_CHANGE)
    jobs: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
        ("checkout", "checkout", "pass", {}, {"changed_lines": CHANGED, "changed_files": list(CHANGED)}),
        ("static", "static", "fail", {}, {"annotations": ANNOTATIONS, "annotations_complete": True}),
        ("build", "x86_64 base", "pass", {"role": "base"}, base),
        ("build", "x86_64", "pass", {"role": "change", "kernel": {}}, {**change, "comparison": compared}),
        ("build", "x86_64 same", "pass", {"role": "change", "kernel": {}}, {**base, "comparison": identical}),
        ("build", "arm64", "fail", {"role": "change", "kernel": {}}, failed),
        ("build", "hello", "pass", {}, {"diagnostics": [
            {"file": "drivers/a.c", "line": 2, "level": "warning", "text": "unused variable 'q'"},
            {"file": "drivers/a.c", "line": 90, "level": "warning", "text": "unused variable 'r'"}]}),
    ]  # fmt: skip
    with runtime.store.session() as session:
        pipeline = pull_request_pipeline(session)
        for kind, name, result, spec, outputs in jobs:
            job = models.Job(pipeline=pipeline, kind=kind, name=name, queue=kind, state="done", result=result,
                             spec=spec, outputs=outputs)  # fmt: skip
            session.add(job)
            if kind == "static":
                job.tests = [models.TestResult(path=path, status=status) for path, status in STATIC_TESTS]
        session.flush()
        pipeline_id = pipeline.id
    summary = pipeline_summary(runtime, pipeline_id)
    assert summary is not None
    yield Stage(runtime, pipeline_id, summary)
    runtime.store.engine.dispose()


def test_a_change_build_reports_its_count_delta_and_annotates_only_its_new_warning(stage: Stage) -> None:
    report = stage.report("labgate / build x86_64")
    assert report.title == "pass: 1 new warning (base 4 → 5)"
    assert report.summary.startswith(r"**1 new warning \(base 4 → 5\)**")
    fences = [token.content for token in MARKDOWN.parse(report.summary) if token.type == "fence"]
    assert fences[0] == NEW_LINE + "\n"
    # The unused parameter sits on changed line 7 too, but the base had it: never annotated.
    assert [(d["path"], d["line"], d["title"]) for d in report.diagnostics] == [
        ("drivers/a.c", 23, "new compiler warning [-Wunused-variable]")]  # fmt: skip
    assert report.findings == NEW_LINE and report.error_lines == ""


def test_binary_identical_and_no_new_warnings_say_so(stage: Stage) -> None:
    report = stage.report("labgate / build x86_64 same")
    assert report.title == "pass: no new warnings (base 4, change 4); binary identical to base"
    assert "binary identical to base" in report.summary
    assert (report.diagnostics, report.findings) == ((), "")


def test_a_build_not_compared_reports_its_errors_and_says_the_base_is_unknown(stage: Stage) -> None:
    report = stage.report("labgate / build arm64")
    assert report.title == "fail: 1 error; base build unknown: warnings not compared"
    assert [(d["path"], d["line"], d["level"]) for d in report.diagnostics] == [("lib/b.c", 2, "error")]
    assert report.findings.splitlines()[0] == "lib/b.c:2: error: conflicting types for ‘x’; have ‘long int’"
    assert report.error_lines == report.findings  # a failure's findings are its error lines
    assert NEW_LINE not in report.findings  # without a base, no warning is called new


def test_the_base_build_and_a_command_build_keep_their_own_reports(stage: Stage) -> None:
    base = stage.report("labgate / build x86_64 base")
    assert base.title == "pass: base build: 4 warnings" and base.diagnostics == () and base.findings == ""
    command = stage.report("labgate / build hello")
    assert command.title == "pass" and command.findings == ""
    assert [(d["line"], d["message"]) for d in command.diagnostics] == [(2, "unused variable 'q'")]


def test_the_static_job_counts_per_check_and_patch_and_annotates_changed_lines(stage: Stage) -> None:
    report = stage.report("labgate / static")
    assert report.title == ("fail: checkpatch: 1 error, 1 warning in patch 1/2 'drivers a add z'; "
                            "checkpatch: 1 error in patch 2/2 'docs fix a typo'; diff-check: 1 error")  # fmt: skip
    assert [(d["path"], d["line"], d["level"], d["title"]) for d in report.diagnostics] == [
        ("drivers/a.c", 23, "error", "checkpatch: CODE_INDENT"),
        ("Documentation/a.rst", 4, "error", "diff-check")]  # fmt: skip
    assert report.error_lines == report.findings
    assert report.findings.splitlines() == [
        "drivers/a.c:23: error: code indent should use tabs where possible [checkpatch CODE_INDENT]",
        "drivers/a.c:40: warning: line length of 104 exceeds 100 columns [checkpatch LONG_LINE]",
        "error: Missing Signed-off-by: line(s) [checkpatch MISSING_SIGN_OFF]",
        "Documentation/a.rst:4: error: trailing whitespace. [diff-check]"]  # fmt: skip


def test_labgate_try_prints_each_kernel_build_and_static_job_with_its_findings(stage: Stage) -> None:
    said = {found.job: found.lines() for found in pipeline_view(stage.runtime, stage.pipeline_id).findings}
    assert list(said) == ["static static", "build x86_64 base", "build x86_64", "build x86_64 same", "build arm64"]
    assert said["build x86_64"] == ["build x86_64: 1 new warning (base 4 → 5)", "  " + NEW_LINE]
    assert said["build x86_64 same"] == [
        "build x86_64 same: no new warnings (base 4, change 4); binary identical to base"]  # fmt: skip
    assert said["static static"][2].startswith("  drivers/a.c:40: warning: line length of 104")
    assert pipeline_view(stage.runtime, stage.pipeline_id, with_logs=False).findings == ()  # a poll's view
    # A file name the change chose reaches the terminal without its escape sequences.
    evil = {"file": "drivers/a\x1b]0;owned\x07.c", "line": 1, "col": 1, "level": "warning", "flag": "",
            "text": "x\x1b[2J\ry", "on_changed_line": True}  # fmt: skip
    with_comparison(stage, {"base_known": True, "new_warnings": [evil], "gone_warnings": 0, "base_count": 0,
                            "change_count": 1, "errors": [], "binary_identical": False})  # fmt: skip
    [shown] = [f for f in pipeline_view(stage.runtime, stage.pipeline_id).findings if f.job == "build x86_64"]
    assert not any(c in "".join(shown.lines()) for c in "\x1b\x07\r")


def test_a_static_job_that_reported_nothing_keeps_its_plain_title(stage: Stage) -> None:
    with stage.runtime.store.session() as session:
        job = session.query(models.Job).filter_by(kind="static").one()
        job.outputs, job.error_code = {}, "timeout"
    summary = pipeline_summary(stage.runtime, stage.pipeline_id)
    assert summary is not None
    report = next(job for job in summary.jobs if job.kind == "static")
    assert report.title == "fail (timeout): static/checkpatch/1-drivers-a-add-z" and report.findings == ""


def test_github_check_runs_carry_the_count_line_and_only_the_chosen_annotations(stage: Stage) -> None:
    with FakeGitHub() as fake:
        fake.add_repo(REPO)
        fake.add_installation(INSTALLATION, [REPO])
        github = GitHubApp(fake.app_id, fake.private_key_pem, fake.base_url, retry=make_retry(backoff_s=0),
                           write_interval_s=0)  # fmt: skip
        sync_checks(stage.runtime, github, stage.pipeline_id)
        runs = {run["name"]: run for run in fake.check_runs(REPO)}
    build = runs["labgate / build x86_64"]
    assert build["output"]["title"] == "pass: 1 new warning (base 4 → 5)"
    assert NEW_LINE in build["output"]["summary"]
    shown = [(a["path"], a["start_line"], a["annotation_level"], a["title"]) for a in build["output"]["annotations"]]
    assert shown == [("drivers/a.c", 23, "warning", "new compiler warning [-Wunused-variable]")]
    static = runs["labgate / static"]["output"]["annotations"]
    assert [(a["path"], a["annotation_level"], a["title"]) for a in static] == [
        ("drivers/a.c", "failure", "checkpatch: CODE_INDENT"),
        ("Documentation/a.rst", "failure", "diff-check"),
    ]
    assert runs["labgate / build x86_64 base"]["output"]["annotations"] == []


@contextmanager
def merge_request() -> Iterator[tuple[FakeGitLab, GitLabClient, int]]:
    """A FakeGitLab with merge request 1 of HEAD in project octo-group/linux, where labgate is a developer:
    the fake, labgate's client, the project's id."""
    with FakeGitLab() as fake:
        fake.add_user("labgate")
        project = fake.add_project("octo-group/linux")
        fake.add_member("labgate", DEVELOPER, project=project)
        fake.add_merge_request(project, 1, head_sha=HEAD, author="labgate")
        yield fake, GitLabClient(fake.base_url, fake.add_token("labgate")), project


def test_gitlab_status_and_note_carry_the_findings(stage: Stage) -> None:
    with merge_request() as (fake, client, project):
        CommitStatusSink(client, project, HEAD, None).create(stage.report("labgate / build x86_64"))
        MergeRequestNoteSink(stage.runtime, client, project, 1).publish(stage.summary)
        [status] = fake.statuses_of(project, HEAD)
        [note] = fake.notes_of(project, 1)
    assert (status["status"], status["description"]) == ("success", "pass: 1 new warning (base 4 → 5)")
    fences = [token.content for token in MARKDOWN.parse(note["body"]) if token.type == "fence"]
    assert NEW_LINE + "\n" in fences
    assert any("[checkpatch CODE_INDENT]" in fence for fence in fences)
    # The base build and the build with nothing new list nothing there; the broken static job once.
    assert len(fences) == 3 and sum("[checkpatch CODE_INDENT]" in fence for fence in fences) == 1


def test_patchwork_checks_say_the_count_line_with_the_link_and_new_warnings_warn(stage: Stage) -> None:
    labels = ("labgate / build x86_64", "labgate / build x86_64 same", "labgate / static")
    with FakePatchwork() as pw:
        pw.add_project("netdev")
        pw.add_user("labgate-bot")
        pw.add_maintainer("netdev", "labgate-bot")
        pw.add_series("netdev", "two patches", ["one", "two"])
        sink = PatchworkChecksSink(PatchworkClient(pw.base_url, pw.add_token("labgate-bot")), pw.series_patches(1))
        for label in labels:
            sink.create(as_series_check(stage.report(label)))  # as the series' sink posts it
        checks = pw.checks(pw.series_patches(1)[1])
    assert [(c["state"], c["description"], c["target_url"]) for c in checks] == [
        ("warning", "pass: 1 new warning (base 4 → 5)", stage.report(labels[0]).details_url),
        ("success", "pass: no new warnings (base 4, change 4); binary identical to base",
         stage.report(labels[1]).details_url),
        ("fail", stage.report(labels[2]).title, stage.report(labels[2]).details_url)]  # fmt: skip


def mail_body(summary: PipelineSummary) -> str:
    """The report mail's text, as the mail sink sends it."""
    mail = compose_report_mail(summary, sender=Address("labgate", addr_spec="ci@example.org"),
                               recipients=MailRecipients.parse(["dev@example.org"]), thread=MailThread("[PATCH] x"),
                               message_id="<1@example.org>", date=datetime(2026, 12, 7, tzinfo=UTC))  # fmt: skip
    return str(mail.get_content())


def test_the_mail_lists_new_warnings_of_a_passing_build_verbatim(stage: Stage) -> None:
    failures, section = mail_body(stage.summary).split("New warnings and check findings:", 1)
    assert "labgate / build x86_64: pass: 1 new warning (base 4 → 5)" in section
    assert "    " + NEW_LINE in section.splitlines()
    # The failed static job is quoted once, with its findings as its error lines.
    line = "    drivers/a.c:40: warning: line length of 104 exceeds 100 columns [checkpatch LONG_LINE]"
    assert line in failures.splitlines() and line not in section.splitlines()
    assert "x86_64 same" not in section and "x86_64 base" not in section


def with_comparison(stage: Stage, comparison: dict[str, Any]) -> tuple[PipelineSummary, JobReport]:
    """The pipeline's summary and the x86_64 build's report once its stored comparison is `comparison`."""
    with stage.runtime.store.session() as session:
        job = session.query(models.Job).filter_by(name="x86_64").one()
        job.outputs = {**job.outputs, "comparison": comparison}
    summary = pipeline_summary(stage.runtime, stage.pipeline_id)
    assert summary is not None
    return summary, next(job for job in summary.jobs if job.name == "x86_64")


def test_a_link_failure_after_a_new_warning_quotes_the_log_and_still_lists_the_warning(stage: Stage) -> None:
    """A build that fails without a compiler error (the linker's) is told by its log; its new warning is
    listed as well, under the findings."""
    log = b"  LD      vmlinux\nld: kernel/printk/printk.o: undefined reference to `frob'\nmake: *** Error 1\n"
    with stage.runtime.store.session() as session:
        job = session.query(models.Job).filter_by(name="x86_64").one()
        job.result, job.log_digest = "fail", stage.runtime.artifacts.put_bytes(log)
    summary = pipeline_summary(stage.runtime, stage.pipeline_id)
    assert summary is not None
    report = next(job for job in summary.jobs if job.name == "x86_64")
    assert report.title == "fail: 1 new warning (base 4 → 5)" and report.findings == NEW_LINE
    assert "undefined reference to `frob'" in report.error_lines
    note = MARKDOWN.parse(summary_markdown(summary))
    fences = [token.content for token in note if token.type == "fence"]
    assert any("undefined reference" in fence for fence in fences) and NEW_LINE + "\n" in fences
    failures, section = mail_body(summary).split("New warnings and check findings:", 1)
    assert "undefined reference to `frob'" in failures and "    " + NEW_LINE in section.splitlines()


# -- what a change writes into its warnings is text, never markup ---------------------------------------


FORGED = "```\n**All tests passed** [login](https://attacker/login)\n/merge\n@maintainers"


def test_a_warning_text_that_forges_markup_stays_in_its_fence(stage: Stage) -> None:
    """A change controls its warnings' words (a string literal in a -Wformat message, a file name): in a
    markdown report they are fenced, and in a GitLab note they trigger no quick action and no mention."""
    evil = {"file": "drivers/```x.c", "line": 23, "col": 1, "level": "warning", "flag": "-Wformat",
            "text": f"format ‘{FORGED}’ expects argument", "on_changed_line": True}  # fmt: skip
    summary, report = with_comparison(stage, {"base_known": True, "new_warnings": [evil], "gone_warnings": 0,
                                              "base_count": 0, "change_count": 1, "errors": [],
                                              "binary_identical": False})  # fmt: skip
    for markdown in (report.summary, inert(summary_markdown(summary))):
        tokens = list(walk(MARKDOWN.parse(markdown)))
        assert not any(t.type in ("image", "html_inline", "html_block") for t in tokens)
        assert all(str(t.attrs.get("href")).startswith("https://ci.example.org") for t in tokens
                   if t.type == "link_open")  # fmt: skip
        assert not any("All tests passed" in t.content for t in tokens if t.type in ("inline", "text"))
    assert "\n/merge" not in inert(summary_markdown(summary)) and "@maintainers" not in inert(summary_markdown(summary))
    assert check_annotations(report)[0]["path"] == "drivers/```x.c"  # GitHub shows a path as text


def test_a_flood_of_warnings_is_capped_in_reports_and_annotations(stage: Stage) -> None:
    many = [{"file": "drivers/a.c", "line": n, "col": 1, "level": "warning", "flag": "-Wshadow",
             "text": f"declaration of ‘v{n}’ shadows a previous local", "on_changed_line": True}
            for n in range(1, 1001)]  # fmt: skip
    _, report = with_comparison(stage, {"base_known": True, "new_warnings": many, "gone_warnings": 0,
                                        "base_count": 0, "change_count": 1000, "errors": [],
                                        "binary_identical": False})  # fmt: skip
    assert report.title == "pass: 1000 new warnings (base 0 → 1000)"
    assert len(report.diagnostics) == 200 and len(report.findings.splitlines()) == 50 + 1
    assert report.findings.endswith("... and 950 more") and "… and 950 more: see the log." in report.summary


def test_a_stored_comparison_that_is_not_one_is_said_not_trusted(stage: Stage) -> None:
    _, report = with_comparison(stage, {"base_known": "yes"})
    unread = "pass: warnings not compared: the stored comparison is unreadable (comparison.base_known: expected"
    assert report.title.startswith(unread)
    assert report.diagnostics == ()
