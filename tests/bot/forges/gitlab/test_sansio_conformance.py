"""Conformance of GitLab sansio with others' files: every go-gitlab sample payload parsed to its exact outcome.

They live in ../shared/fixtures (tests/shared_fixtures.py): skipped where that folder is not beside the clone,
failed then under CI=true. The project's own tests are in test_sansio.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.core.events import Actor, ChangeEvent, CommentEvent, PushEvent, RepoRef
from bot.forges.gitlab.sansio import EVENT_HEADER, MalformedPayload, ParseOutcome, parse
from tests.shared_fixtures import shared_fixture, shared_fixture_names

GO_GITLAB = "gitlab/go-gitlab"


@dataclass(frozen=True)
class Refused:
    """The sample is refused as MalformedPayload with exactly this message."""

    message: str


# The X-Gitlab-Event each sample is delivered with (SOURCES.md: "Header <-> file").
HEADERS = {
    "group_merge_request.json": "Merge Request Hook",
    "job.json": "Job Hook",
    "merge_request.json": "Merge Request Hook",
    "note_commit.json": "Note Hook",
    "note_merge_request.json": "Note Hook",
    "pipeline.json": "Pipeline Hook",
    "push.json": "Push Hook",
    "service_merge_request.json": "Merge Request Hook",
    "tag_push.json": "Tag Push Hook",
}

WOODPECKER = RepoRef("gitlab", "test/woodpecker", "http://10.40.8.5:3200/test/woodpecker.git", "master", 2)
GITLAB_TEST_5 = RepoRef(
    "gitlab", "gitlab-org/gitlab-test", "http://example.com/gitlab-org/gitlab-test.git", "master", 5
)
UPDATED = datetime(2021, 9, 27, 5, 1, 21, tzinfo=UTC)
NOTED = datetime(2015, 5, 17, 18, 21, 36, tzinfo=UTC)

# The exact outcome of every sample: the whole ParseOutcome, or the refusal. A new sample without a row fails.
EXPECTED: dict[str, ParseOutcome | Refused] = {
    # Every key of its object_attributes ends in a space ("iid ", "target_project_id "), and its project
    # has no id: nothing says which project it is.
    "group_merge_request.json": Refused("project.id: missing"),
    "job.json": ParseOutcome(None, "GitLab CI jobs are not followed; submissions from CI come through the API"),
    # GitLab's documentation example names project 1 at the top and target project 14 in the merge request
    # (a real delivery names one project twice): which tree it belongs to cannot be told, so it is refused.
    # test_documentation_example_with_one_project below parses it with the two made one.
    "merge_request.json": Refused("object_attributes.target_project_id: 14, but project.id is 1"),
    "note_commit.json": ParseOutcome(
        None, "note on a 'Commit', not a merge request", datetime(2015, 5, 17, 18, 8, 9, tzinfo=UTC)
    ),
    "note_merge_request.json": ParseOutcome(
        CommentEvent(
            repo=GITLAB_TEST_5,
            number=1,
            comment_id=1244,
            body="This MR needs work.",
            commenter=Actor("root", None, False),
            created_at=NOTED,
            seen_head_sha="562e173be03b8ff2efb05345d12df18815438a4b",
        ),
        "note 1244 on merge request !1",
        NOTED,  # the note's times; the merge request's own updated_at is older (2015-03-21)
    ),
    "pipeline.json": ParseOutcome(None, "GitLab pipelines are not followed; submissions from CI come through the API"),
    "push.json": ParseOutcome(
        PushEvent(
            repo=RepoRef("gitlab", "mike/diaspora", "http://example.com/mike/diaspora.git", "master", 15),
            ref="refs/heads/master",
            before="95790bf891e76fee5e1747ab589903a6a1f80f22",
            after="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            created=False,
            deleted=False,
            forced=False,
            pusher=Actor("jsmith", None, False),
        ),
        "push to refs/heads/master",
        None,  # a push carries no event time: its commits' times are when they were written
    ),
    # A real delivery (GitLab 14.3): new commits pushed, hence oldrev. Its `project` says the default branch
    # is master, its object_attributes.target says develop: the repository is the hook's project.
    "service_merge_request.json": ParseOutcome(
        ChangeEvent(
            action="updated",
            repo=WOODPECKER,
            number=2,
            head_sha="0ab96a10266b95b4b533dcfd98738015fbe70889",
            head_ref="next-feature",
            head_repo="test/woodpecker",
            base_ref="master",
            base_sha="",
            title="Update client.go \N{PARTY POPPER}",
            author=Actor("test", None, False),  # user.id 2 is the author_id
            sender=Actor("test", None, False),
            draft=False,
            merged=False,
            updated_at=UPDATED,
        ),
        "merge request !2 update: change updated",
        UPDATED,
    ),
    "tag_push.json": ParseOutcome(None, "tag pushes are not tested: branches and merge requests are"),
}


@pytest.fixture
def go_gitlab() -> Path:
    return shared_fixture(GO_GITLAB)


def parse_sample(go_gitlab: Path, name: str, event: str | None = None) -> ParseOutcome:
    return parse({EVENT_HEADER: event or HEADERS[name]}, (go_gitlab / name).read_bytes())


def test_every_sample_has_an_expectation(go_gitlab: Path) -> None:
    assert sorted(EXPECTED) == sorted(HEADERS) == sorted(p.name for p in go_gitlab.glob("*.json"))


@pytest.mark.parametrize("name", shared_fixture_names(GO_GITLAB, "*.json"))
def test_sample_parses_to_expected_outcome(go_gitlab: Path, name: str) -> None:
    assert name in EXPECTED, f"no expected outcome for new sample {name}"
    expected = EXPECTED[name]
    if isinstance(expected, Refused):
        with pytest.raises(MalformedPayload) as info:
            parse_sample(go_gitlab, name)
        assert str(info.value) == expected.message
    else:
        assert parse_sample(go_gitlab, name) == expected


@pytest.mark.parametrize("name", ["push.json", "service_merge_request.json", "note_merge_request.json"])
@pytest.mark.parametrize("event", ["System Hook", "Service Hook"])
def test_samples_under_other_hook_headers_parse_the_same(go_gitlab: Path, name: str, event: str) -> None:
    # System and service hooks carry push and merge request bodies: the body's object_kind decides.
    assert parse_sample(go_gitlab, name, event) == EXPECTED[name]


def test_confidential_note_parses_as_a_note(go_gitlab: Path) -> None:
    name = "note_merge_request.json"
    assert parse_sample(go_gitlab, name, "Confidential Note Hook") == EXPECTED[name]


def test_documentation_example_with_one_project(go_gitlab: Path) -> None:
    payload = json.loads((go_gitlab / "merge_request.json").read_text())
    payload["project"]["id"] = payload["object_attributes"]["target_project_id"]
    outcome = parse({EVENT_HEADER: "Merge Request Hook"}, json.dumps(payload).encode())
    opened_at = datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)
    assert outcome == ParseOutcome(
        ChangeEvent(
            action="opened",
            repo=RepoRef("gitlab", "gitlabhq/gitlab-test", "http://example.com/gitlabhq/gitlab-test.git", "master", 14),
            number=1,
            head_sha="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            head_ref="ms-viewport",
            head_repo="awesome_space/awesome_project",
            base_ref="master",
            base_sha="",
            title="MS-Viewport",
            author=Actor("", None, False),  # user 1 opened it, but its author_id is 51: the intake looks it up
            sender=Actor("user1", None, False),
            draft=False,  # no `draft` in this example: work_in_progress says it
            merged=False,
            updated_at=opened_at,
        ),
        "merge request !1 open: change opened",
        opened_at,
    )
