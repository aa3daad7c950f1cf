"""Reports of a triaged pipeline, from the store (SQLite and PostgreSQL) to every forge: the verdict line
first, each new failure once a crash with its evidence, error lines, log and reproduce command, then the
rest; a triaged job fails only with a new failure; re-runs being confirmed are said so; triage runs are no
jobs of the report. Forges through the fakes that record what they were sent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.core.render import new_problems
from bot.forges.github.client import GitHubApp, make_retry
from bot.forges.github.reporter import check_run_sink, sync_checks
from bot.forges.gitlab.reporter import MergeRequestNoteSink, inert
from bot.forges.patchwork.client import PatchworkClient
from bot.forges.patchwork.desk import SeriesRecord, save_series
from bot.forges.patchwork.report import sync_series_checks
from bot.host.config import Config, KnownIssueConfig, Tree, Web
from bot.host.stores import Runtime, open_runtime
from bot.reporting.job_reports import job_report
from bot.reporting.pipeline_views import job_view
from bot.reporting.sinks import SUMMARY_LABEL, JobReport, PipelineSummary
from bot.reporting.summary import pipeline_summary, summary_markdown, summary_report
from bot.reporting.sync import _claim, _Write, report_target
from bot.store import models
from tests.bot.reporting.test_build_static_reports import (
    HEAD,
    INSTALLATION,
    REPO,
    mail_body,
    merge_request,
    pull_request_pipeline,
)
from tests.bot.reporting.test_summary import MARKDOWN, walk
from tests.fakes.github_api import FakeGitHub
from tests.fakes.patchwork_api import FakePatchwork

PUBLIC = "https://ci.example.org"
CRASH = "BUG: KASAN: use-after-free in frob_release"
X86, ARM = "qemu-x86_64 unit", "qemu-arm64 unit"
EVIDENCE = "failed 4/4 with the change, 0/4 on base"
CONSOLE = ("[    1.0] booting\n[    2.0] ==================\n"
           f"[    2.1] {CRASH}\n[    2.2] Read of size 8 at addr ffff8880\n[    2.3] Call Trace:\n"
           + "".join(f"[    3.{n}]  frame_{n}+0x1/0x2\n" for n in range(40)))  # fmt: skip
VERDICT_LINE = "2 new failures, 1 pre-existing failure, 1 flaky, 1 known issue, 1 fixed, 2 passed"


@dataclass
class Stage:
    runtime: Runtime
    pipeline_id: int
    jobs: dict[str, int]

    def summary(self) -> PipelineSummary:
        summary = pipeline_summary(self.runtime, self.pipeline_id)
        assert summary is not None
        return summary

    def report(self, label: str) -> JobReport:
        return next(job for job in self.summary().jobs if job.label == label)

    def edit(self, **jobs: dict[str, Any]) -> None:
        """Set fields of jobs by name (spec replaces), and of the pipeline under the name `pipeline`."""
        with self.runtime.store.session() as session:
            for name, fields in jobs.items():
                row: Any = (session.get(models.Pipeline, self.pipeline_id) if name == "pipeline"
                            else session.get(models.Job, self.jobs[name]))  # fmt: skip
                for key, value in fields.items():
                    setattr(row, key, value)

    def verdict(self, job: str, test: str, verdict: str, **fields: Any) -> None:
        with self.runtime.store.session() as session:
            session.add(models.TestVerdict(pipeline_id=self.pipeline_id, job_id=self.jobs[job],
                                           test_path=f"{job}/{test}", device_class=job.split()[0], verdict=verdict,
                                           **fields))  # fmt: skip


def make_runtime(request: pytest.FixtureRequest, tmp_path: Path, *, private: bool = False) -> Runtime:
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    url = sqlite if getattr(request, "param", "sqlite") == "sqlite" else request.getfixturevalue("postgres_url")
    known = KnownIssueConfig(id="KI-7", link="https://bugs.example.org/7", test=f"{X86}/fs.*",
                             expires=date(2099, 1, 1))  # fmt: skip
    config = Config(data_dir=tmp_path / "data", web=Web(public_url=PUBLIC), known_issues=[known],
                    trees=[Tree(name="linux", url="https://example.org/linux.git", private=private)])  # fmt: skip
    return open_runtime(config, database_url=url)


def build_pipeline(runtime: Runtime) -> Stage:
    """A pull request's pipeline whose two test jobs failed, with a triage run of the first."""
    console = runtime.artifacts.put_bytes(CONSOLE.encode())
    tests = {X86: [("math.add", "pass"), ("math.sub", "pass"), ("math.mul", "fail"), ("net.ping", "fail"),
                   ("fs.read", "fail"), ("mm.oops", "fail")],
             ARM: [("math.add", "pass"), ("math.mul", "fail")]}  # fmt: skip
    jobs: dict[str, int] = {}
    with runtime.store.session() as session:
        pipeline = pull_request_pipeline(session)
        for kind, name, result in (("checkout", "checkout", "pass"), ("build", "x86_64", "pass"),
                                   ("test", X86, "fail"), ("test", ARM, "fail")):  # fmt: skip
            job = models.Job(pipeline=pipeline, kind=kind, name=name, queue=kind, state="done", result=result,
                             spec={"triage_state": "done"} if kind == "test" else {},
                             log_digest=console if kind == "test" else None)  # fmt: skip
            job.tests = [models.TestResult(path=path, status=status, diagnostics="# expected 42, got 41"
                                           if status == "fail" else "")
                         for path, status in tests.get(name, [])]  # fmt: skip
            session.add(job)
            session.flush()
            jobs[name] = job.id
        mark = {"triage": {"of": jobs[X86], "side": "change", "n": 1}}
        rerun = models.Job(pipeline=pipeline, kind="test", name=f"{X86} triage change 1", queue="test",
                           state="done", result="fail", spec=mark)  # fmt: skip
        session.add(rerun)
        session.flush()
        jobs["rerun"] = rerun.id
        pipeline_id = pipeline.id
    stage = Stage(runtime, pipeline_id, jobs)
    stage.verdict(X86, "math.mul", "new", evidence=EVIDENCE, crash_title=CRASH, change_runs=4, change_fails=4,
                  base_runs=4, p_value=1 / 70)  # fmt: skip
    stage.verdict(ARM, "math.mul", "new", evidence=EVIDENCE, crash_title=CRASH)
    stage.verdict(X86, "net.ping", "flaky", evidence="failed 1/4 with the change; the base's history is mixed")
    stage.verdict(X86, "fs.read", "known-issue", evidence="failed 1/1", known_issue="KI-7")
    stage.verdict(X86, "mm.oops", "pre-existing", evidence="failed 4/4 with the change, 4/4 on base")
    stage.verdict(X86, "math.add", "fixed", evidence="passed with the change, failed 2/2 on base")
    return stage


@pytest.fixture(params=["sqlite", "postgresql"])
def stage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stage]:
    runtime = make_runtime(request, tmp_path)
    yield build_pipeline(runtime)
    runtime.store.engine.dispose()


@pytest.fixture
def private_stage(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stage]:
    runtime = make_runtime(request, tmp_path, private=True)
    yield build_pipeline(runtime)
    runtime.store.engine.dispose()


def test_the_summary_leads_with_the_verdict_line_and_lists_no_triage_run(stage: Stage) -> None:
    summary = stage.summary()
    assert summary.verdict_line == VERDICT_LINE
    assert summary.text.split("\n")[0] == VERDICT_LINE
    assert [job.label for job in summary.jobs] == ["labgate / checkout", "labgate / build x86_64",
                                                    f"labgate / {X86}", f"labgate / {ARM}"]  # fmt: skip
    assert "triage" not in summary.text and "triage" not in summary_markdown(summary)


def test_one_crash_is_one_problem_listed_with_every_test_it_hit(stage: Stage) -> None:
    summary = stage.summary()
    [problem] = new_problems(summary.verdicts)
    assert problem.crash_title == CRASH and [v.job for v in problem.failures] == [X86, ARM]
    markdown = summary_markdown(summary)
    assert markdown.split("\n")[0] == VERDICT_LINE
    tokens = list(walk(MARKDOWN.parse(markdown)))
    spans = [t.content for t in tokens if t.type == "code_inline"]
    assert spans.count(CRASH) == 1  # listed once, with the two tests it hit
    assert f"{X86}/math.mul" in spans and f"{ARM}/math.mul" in spans
    fences = [t.content for t in tokens if t.type == "fence"]
    # The crash's lines from the log, from the crash title on, at most 20; then how to reproduce.
    assert fences[0].split("\n")[0].endswith(CRASH) and len(fences[0].rstrip("\n").split("\n")) == 20
    assert fences[1] == f"labgate reproduce {stage.jobs[X86]} --server {PUBLIC}\n"
    logs = [t.attrs["href"] for t in tokens if t.type == "link_open" and str(t.attrs["href"]).endswith("/log")]
    assert logs == [f"{PUBLIC}/jobs/{stage.jobs[X86]}/log", f"{PUBLIC}/jobs/{stage.jobs[ARM]}/log"]
    assert markdown.index(CRASH) < markdown.index("Flaky") < markdown.index("| job | result |")


def test_the_rest_names_known_issues_with_their_links_and_says_why_each_does_not_count(stage: Stage) -> None:
    markdown = summary_markdown(stage.summary())
    tokens = list(walk(MARKDOWN.parse(markdown)))
    assert "https://bugs.example.org/7" in [t.attrs["href"] for t in tokens if t.type == "link_open"]
    for heading in ("Pre-existing failures", "Flaky", "Known issues", "Fixed"):
        assert heading in markdown
    assert "failed 1/4 with the change; the base's history is mixed" in markdown
    # The triaged job's own failures are the blocks above, not a second "Broken" entry.
    assert "**Broken:**" not in markdown


def test_a_triaged_job_fails_only_with_a_new_failure(stage: Stage) -> None:
    x86 = stage.report(f"labgate / {X86}")
    assert (x86.verdict, x86.title) == ("fail", "fail: math.mul (1 new failure, 1 pre-existing failure, 1 flaky, "
                                                "1 known issue, 1 fixed, 1 passed)")  # fmt: skip
    with stage.runtime.store.session() as session:
        for row in session.scalars(select(models.TestVerdict).where(models.TestVerdict.verdict == "new")):
            row.verdict = "flaky"
    x86, arm = stage.report(f"labgate / {X86}"), stage.report(f"labgate / {ARM}")
    assert (x86.verdict, x86.title) == ("pass", "pass (1 pre-existing failure, 2 flaky, 1 known issue, 1 fixed, "
                                                "1 passed)")  # fmt: skip
    assert (arm.verdict, arm.title, arm.error_lines) == ("pass", "pass (1 flaky, 1 passed)", "")
    assert x86.summary.startswith("**1 pre-existing failure, 2 flaky")


def test_a_failure_no_verdict_explains_still_fails(stage: Stage) -> None:
    """A failing test without a verdict row, an unknown verdict word, a job that failed with every verdict
    a pass: none turns into a pass."""
    with stage.runtime.store.session() as session:
        session.query(models.TestVerdict).filter_by(verdict="new").delete()
        session.query(models.TestVerdict).filter_by(verdict="pre-existing").update({"verdict": "looks-fine"})
    x86, arm = stage.report(f"labgate / {X86}"), stage.report(f"labgate / {ARM}")
    assert x86.verdict == "fail" and x86.title.startswith("fail: math.mul (2 failed,")
    assert (arm.verdict, arm.title) == ("fail", "fail: math.mul")  # no verdict at all: reported as before triage
    assert stage.summary().verdict_line.startswith("3 failed, ")


def test_while_re_runs_confirm_a_failure_the_job_says_so_not_fail(stage: Stage) -> None:
    stage.edit(pipeline={"state": "running", "result": None}, **{X86: {"spec": {"triage_state": "running"}}})
    x86 = stage.report(f"labgate / {X86}")
    assert (x86.stage, x86.verdict, x86.title) == ("running", "pending", "re-running to confirm 4 failures")
    assert stage.summary().verdict_line == "running: re-running to confirm 4 failures"


def test_the_reproduce_command_of_a_private_tree_carries_its_link_token(private_stage: Stage) -> None:
    [problem] = new_problems(private_stage.summary().verdicts)
    command = problem.failures[0].reproduce
    assert command.startswith(f"labgate reproduce {private_stage.jobs[X86]} --server {PUBLIC} --link-token ")
    assert problem.failures[0].log_url.startswith(f"{PUBLIC}/jobs/{private_stage.jobs[X86]}/log?token=")


# -- each forge -------------------------------------------------------------------------------------------


def github_app(fake: FakeGitHub) -> GitHubApp:
    fake.add_repo(REPO)
    fake.add_installation(INSTALLATION, [REPO])
    return GitHubApp(fake.app_id, fake.private_key_pem, fake.base_url, retry=make_retry(backoff_s=0),
                     write_interval_s=0)  # fmt: skip


def test_github_has_a_summary_check_run_titled_by_the_verdict_line_and_no_triage_run(stage: Stage) -> None:
    with FakeGitHub() as fake:
        github = github_app(fake)
        sync_checks(stage.runtime, github, stage.pipeline_id)
        runs = {run["name"]: run for run in fake.check_runs(REPO)}
        summary = runs[SUMMARY_LABEL]
        assert (summary["status"], summary["conclusion"]) == ("completed", "failure")
        assert summary["output"]["title"] == VERDICT_LINE
        assert summary["output"]["summary"].split("\n")[0] == VERDICT_LINE
        assert summary["details_url"] == f"{PUBLIC}/pipelines/{stage.pipeline_id}"
        assert summary["external_id"] == f"pipeline-{stage.pipeline_id}"
        assert set(runs) == {"labgate / checkout", "labgate / build x86_64", f"labgate / {X86}", f"labgate / {ARM}",
                             SUMMARY_LABEL}  # fmt: skip
        assert runs[f"labgate / {X86}"]["conclusion"] == "failure"
        # Done once: a later sync, even one that reads the pipeline running again, sends nothing backwards.
        assert sync_checks(stage.runtime, github, stage.pipeline_id) == 0
        stage.edit(pipeline={"state": "running"})
        assert sync_checks(stage.runtime, github, stage.pipeline_id) == 0
        assert len([run for run in fake.check_runs(REPO) if run["name"] == SUMMARY_LABEL]) == 1


def test_github_summary_goes_queued_running_done_in_one_check_run(stage: Stage) -> None:
    with FakeGitHub() as fake:
        github = github_app(fake)
        for state in ("queued", "running", "done"):
            stage.edit(pipeline={"state": state, "result": "fail" if state == "done" else None})
            sync_checks(stage.runtime, github, stage.pipeline_id)
        [summary] = [run for run in fake.check_runs(REPO) if run["name"] == SUMMARY_LABEL]
        created = [r.json["status"] for r in fake.requests_to("POST", rf"/repos/{REPO}/check-runs$")
                   if r.json["name"] == SUMMARY_LABEL]  # fmt: skip
        updated = [r.json["status"] for r in fake.requests_to("PATCH", rf"/repos/{REPO}/check-runs/{summary['id']}$")]
        assert (created, updated) == (["queued"], ["in_progress", "completed"])
        assert summary["output"]["title"] == VERDICT_LINE


def test_a_job_named_summary_never_takes_the_summarys_label(stage: Stage) -> None:
    with stage.runtime.store.session() as session:
        session.get(models.Job, stage.jobs[ARM]).name = "summary"  # type: ignore[union-attr]
    labels = [job.label for job in stage.summary().jobs]
    assert SUMMARY_LABEL not in labels and "labgate / test summary" in labels


def test_the_gitlab_note_starts_with_the_verdict_line(stage: Stage) -> None:
    with merge_request() as (fake, client, project):
        MergeRequestNoteSink(stage.runtime, client, project, 1).publish(stage.summary())
        [note] = fake.notes_of(project, 1)
    assert note["body"].startswith(VERDICT_LINE + "\n\n")
    assert note["body"].count("**New crash:**") == 1 and f"labgate reproduce {stage.jobs[X86]}" in note["body"]


def test_patchwork_gets_a_summary_check_with_the_verdict_line_and_the_pipeline_link(stage: Stage) -> None:
    with FakePatchwork() as pw:
        pw.add_project("netdev")
        pw.add_user("labgate-bot")
        pw.add_maintainer("netdev", "labgate-bot")
        pw.add_series("netdev", "two patches", ["one", "two"])
        client = PatchworkClient(pw.base_url, pw.add_token("labgate-bot"))
        with stage.runtime.store.session() as session:
            change = session.get(models.Pipeline, stage.pipeline_id).revision.change  # type: ignore[union-attr]
            change.source = "patchwork"
            patches = tuple(pw.series_patches(1))
            save_series(session, SeriesRecord(client.url, "netdev", 1, 1, "two patches", "", patches,
                                              ("[PATCH 0/2] two", "<0@x>"), "0" * 64))  # fmt: skip
        sync_series_checks(stage.runtime, client, stage.pipeline_id)
        for patch in pw.series_patches(1):
            checks = {check["context"]: check for check in pw.checks(patch)}
            summary = checks["labgate-summary"]
            assert (summary["state"], summary["description"]) == ("fail", VERDICT_LINE)
            assert summary["target_url"] == f"{PUBLIC}/pipelines/{stage.pipeline_id}"
            assert not any("triage" in context for context in checks)


def test_the_mail_body_starts_with_the_verdict_line_and_reproduces_the_new_failure(stage: Stage) -> None:
    body = mail_body(stage.summary())
    lines = body.split("\n")
    assert lines[0] == VERDICT_LINE
    assert body.count(f"New crash '{CRASH}', hit 2 tests") == 1
    assert f"    labgate reproduce {stage.jobs[X86]} --server {PUBLIC}" in lines
    assert f"    {PUBLIC}/jobs/{stage.jobs[X86]}/log" in lines
    assert "known issue KI-7 https://bugs.example.org/7" in " ".join(lines)



FORGED = "**All tests passed** [login](https://attacker/login) ![x](https://attacker/p.png) <b>hi</b>"


def test_what_a_change_wrote_stays_text_from_the_store_to_every_forge(stage: Stage) -> None:
    """A DUT names its tests, prints its crash (and so its title) and its diagnostics: in the summary check
    run and the merge request note they are text, with no link but ours, no quick action, no mention; in
    Patchwork's description and the mail's first line they do not appear at all (the verdict line is ours)."""
    hostile = f"x\n/merge\n@maintainers ```\n{FORGED}"
    with stage.runtime.store.session() as session:
        for row in session.scalars(select(models.TestVerdict).where(models.TestVerdict.verdict == "new")):
            row.crash_title, row.test_path = hostile, f"{row.test_path.split('/')[0]}/{hostile}"
        for test in session.scalars(select(models.TestResult).where(models.TestResult.path == "math.mul")):
            test.path, test.diagnostics = hostile, hostile
    summary = stage.summary()
    assert summary.verdict_line == VERDICT_LINE
    ours = (PUBLIC, "https://bugs.example.org/7")
    for markdown in (summary_markdown(summary), inert(summary_markdown(summary))):
        tokens = list(walk(MARKDOWN.parse(markdown)))
        assert not any(t.type in ("image", "html_inline", "html_block", "heading_open") for t in tokens)
        assert all(str(t.attrs["href"]).startswith(ours) for t in tokens if t.type == "link_open")
    note = inert(summary_markdown(summary))
    assert not re.search(r"^\s*/", note, re.MULTILINE) and not re.search(r"@[A-Za-z]", note)
    body = mail_body(summary)
    assert body.split("\n")[0] == VERDICT_LINE and "All tests passed" in body  # quoted, after the verdict


def test_a_retested_triaged_job_keeps_its_first_failure_visible(stage: Stage) -> None:
    with stage.runtime.store.session() as session:
        job = session.get(models.Job, stage.jobs[X86])
        assert job is not None
        report = job_report(job, job_view(stage.runtime, job), "", earlier_failure="pipeline 1: not ok math.mul")
    assert report.verdict == "fail" and "**Earlier attempt:**" in report.summary
    assert "pipeline 1: not ok math.mul" in report.summary


def test_a_summary_create_whose_answer_was_lost_is_found_not_made_twice(stage: Stage) -> None:
    """Another sync claimed the summary's row and GitHub made its check run, but the answer never came back:
    the next sync finds it by its external id (pipeline-<id>) and brings it up to date."""
    with FakeGitHub() as fake:
        github = github_app(fake)
        target = report_target(stage.runtime, stage.pipeline_id)
        sink = check_run_sink(github, target) if target is not None else None
        summary = stage.summary()
        assert target is not None and sink is not None
        lost = summary_report(summary, "running", "lost")
        assert _claim(stage.runtime, sink, target, _Write(lost, None, claimed=False))
        assert not _claim(stage.runtime, sink, target, _Write(lost, None, claimed=False))  # one claim a pipeline
        sink.create(lost)  # reached GitHub; its id was never stored
        sync_checks(stage.runtime, github, stage.pipeline_id)
        [run] = [run for run in fake.check_runs(REPO) if run["name"] == SUMMARY_LABEL]
        assert (run["status"], run["output"]["title"]) == ("completed", VERDICT_LINE)
        assert fake.requests_to("GET", rf"/repos/{REPO}/commits/{HEAD}/check-runs")  # looked up, not created again


def test_a_cancelled_pipelines_summary_says_why(stage: Stage) -> None:
    stage.edit(pipeline={"result": "cancelled", "error_message": f"superseded by {'d' * 40}"})
    assert stage.summary().verdict_line == f"cancelled: superseded by {'d' * 40} ({VERDICT_LINE})"


def test_verdicts_kept_under_the_plans_test_name_are_read_alike(stage: Stage) -> None:
    """The history and verdicts may name a test job as the plan does ("unit/math.mul") or as the job is
    ("qemu-x86_64 unit/math.mul"): the report is the same."""
    before = stage.report(f"labgate / {X86}")
    with stage.runtime.store.session() as session:
        job = session.get(models.Job, stage.jobs[X86])
        assert job is not None
        job.spec = {**job.spec, "name": "unit"}
        for row in session.scalars(select(models.TestVerdict).where(models.TestVerdict.job_id == job.id)):
            row.test_path = row.test_path.replace(f"{X86}/", "unit/", 1)
    after = stage.report(f"labgate / {X86}")
    assert (after.verdict, after.title) == (before.verdict, before.title)
    assert stage.summary().verdict_line == VERDICT_LINE
