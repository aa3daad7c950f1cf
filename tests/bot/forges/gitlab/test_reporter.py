"""GitLab's side of reporting: states and descriptions of statuses, the one note per merge request edited
in place, and every note made inert against quick actions and mentions written by the change."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.reporter import MergeRequestNoteSink, inert, status_description, status_state
from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.reporting.sinks import JobReport, PipelineSummary
from bot.reporting.summary import summary_markdown
from tests.fakes.gitlab_api import DEVELOPER, FakeGitLab

REPORT = JobReport(job_id=1, pipeline_id=1, kind="test", name="qemu-x86_64 unit", label="labgate / qemu-x86_64 unit",
                   stage="done", verdict="fail", title="fail: math.mul", summary="", details_url="https://ci/jobs/1",
                   error_lines="not ok 2 math.mul\n# expected 42, got 41")  # fmt: skip


def summary(*jobs: JobReport, headline: str = "labgate: fail: 1 failing") -> PipelineSummary:
    return PipelineSummary(pipeline_id=1, done=True, verdict="fail", headline=headline, text="", markdown="",
                           url="https://ci/pipelines/1", jobs=jobs, reproduce="labgate try URL --ref abc")  # fmt: skip


@pytest.mark.parametrize(("stage", "verdict", "state"), [
    ("queued", "pending", "pending"), ("running", "pending", "running"), ("done", "pass", "success"),
    ("done", "fail", "failed"), ("done", "timed-out", "failed"), ("done", "cancelled", "canceled"),
    ("done", "neutral", "canceled"), ("done", "warning", "canceled"),
])  # fmt: skip
def test_states(stage: str, verdict: str, state: str) -> None:
    assert status_state(replace(REPORT, stage=stage, verdict=verdict)) == state  # type: ignore[arg-type]


def test_our_failures_are_never_a_pass_and_say_not_tested() -> None:
    ours = replace(REPORT, verdict="neutral", title="worker lost")
    assert status_state(ours) != "success" and status_description(ours) == "not tested: worker lost"


def test_descriptions_fit_gitlab() -> None:
    assert len(status_description(replace(REPORT, title="x" * 1000))) == 255


def test_quick_actions_and_mentions_written_by_the_change_are_inert() -> None:
    hostile = replace(REPORT, title="fail: x\n/merge", error_lines="/approve\n  /close\n@all look\n/label ~x")
    body = inert(summary_markdown(summary(hostile, headline="labgate: fail @maintainers")))
    # GitLab runs a line starting with "/" as a quick action (outside code blocks; these are in one,
    # but nothing relies on that); no line of ours starts with one, and no @ notifies anyone.
    assert not re.search(r"^\s*/", body, re.MULTILINE)
    assert not re.search(r"@[A-Za-z]", body)
    assert "merge" in body and "all look" in body  # still readable


@dataclass
class World:
    fake: FakeGitLab
    runtime: Runtime
    client: GitLabClient
    project: int


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FakeGitLab() as fake:
        fake.add_user("labgate")
        fake.add_user("alice")
        project = fake.add_project("octo-group/hello")
        fake.add_member("labgate", DEVELOPER, project=project)
        fake.add_merge_request(project, 1, head_sha="e" * 40, author="alice")
        runtime = open_runtime(Config(data_dir=tmp_path / "data"))
        yield World(fake, runtime, GitLabClient(fake.base_url, fake.add_token("labgate")), project)
        runtime.store.engine.dispose()


def test_one_note_per_merge_request_edited_only_when_it_changes(world: World) -> None:
    sink = MergeRequestNoteSink(world.runtime, world.client, world.project, 1)
    running = summary(replace(REPORT, stage="running", verdict="pending", title="running"), headline="labgate: running")
    sink.publish(running)
    sink.publish(running)  # nothing new: not sent
    sink.publish(summary(REPORT))
    [note] = world.fake.notes_of(world.project, 1)
    assert "math.mul" in note["body"] and "running" not in note["body"].split("\n")[0]
    assert len(world.fake.requests_to("POST", rf"/api/v4/projects/{world.project}/merge_requests/1/notes")) == 1
    assert len(world.fake.requests_to("PUT", rf"/api/v4/projects/{world.project}/merge_requests/1/notes/\d+")) == 1
    # Another sink (another report task) finds the same note.
    MergeRequestNoteSink(world.runtime, world.client, world.project, 1).publish(summary(REPORT, headline="labgate: x"))
    assert len(world.fake.notes_of(world.project, 1)) == 1
