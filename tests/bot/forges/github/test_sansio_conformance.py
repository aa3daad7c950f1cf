"""Conformance of GitHub sansio with others' files: every octokit example payload parsed to its exact outcome,
and the published signature vectors. They live in ../shared/fixtures (tests/shared_fixtures.py): skipped where
that folder is not beside the clone, failed then under CI=true. The project's own tests are in test_sansio.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.core.events import (
    Actor,
    ChangeAction,
    ChangeEvent,
    Event,
    InstallationEvent,
    PingEvent,
    PushEvent,
    RepoRef,
    RerunEvent,
)
from bot.forges.github.sansio import ParseOutcome, SignatureError, parse, verify
from tests.shared_fixtures import shared_fixture, shared_fixture_names

OCTOKIT = "github/octokit-webhooks"
VECTORS = "github/signature-vectors.json"
VECTOR_COUNT = 7  # SOURCES.md lists seven; one more in the file must get its own id here

HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
BASE = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
CODERTOCAT = Actor("Codertocat", None, False)
HELLO = RepoRef("github", "Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master", None)
HELLO_APP = RepoRef("github", "Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master", 1)
HELLO_957387 = RepoRef(
    "github", "Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master", 957387
)
OPENED_AT = datetime(2019, 5, 15, 15, 20, 33, tzinfo=UTC)
CLOSED_AT = datetime(2019, 5, 15, 15, 21, 18, tzinfo=UTC)


def change(action: ChangeAction, repo: RepoRef, updated_at: datetime, draft: bool = False) -> ChangeEvent:
    """All octokit pull_request samples are the same PR #2 at different moments."""
    return ChangeEvent(
        action=action,
        repo=repo,
        number=2,
        head_sha=HEAD,
        head_ref="changes",
        head_repo="Codertocat/Hello-World",
        base_ref="master",
        base_sha=BASE,
        title="Update the README with new information.",
        author=Actor("Codertocat", "OWNER", False),
        sender=CODERTOCAT,
        draft=draft,
        merged=False,
        updated_at=updated_at,
    )


def tag_deleted(repo: RepoRef) -> PushEvent:
    return PushEvent(
        repo=repo,
        ref="refs/tags/simple-tag",
        before="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        after="0" * 40,
        created=False,
        deleted=True,
        forced=False,
        pusher=Actor("Codertocat"),
    )


OCTOCODERS_PING = PingEvent(
    repo=RepoRef("github", "Octocoders/Hello-World", "https://github.com/Octocoders/Hello-World.git", "master"),
    hook_id=109948940,
    zen="Anything added dilutes everything else.",
)

# The exact outcome of every sample: an event, or the reason it is ignored. A new sample without a row fails.
EXPECTED: dict[str, Event | str] = {
    "check_run/completed.payload.json": "check_run 'completed': our own check run updates, nothing to do",
    "check_run/created.payload.json": "check_run 'created': our own check run updates, nothing to do",
    "check_run/requested_action.payload.json": RerunEvent(
        repo=RepoRef("github", "electron/electron", "https://github.com/electron/electron.git", "master", 690857),
        head_sha="5bd5f196a46b8222fb7484f05faba41a73cf34bd",
        scope="action",
        requester=Actor("codebytere", None, False),
        check_id=1494503112,
        external_id=None,
        action="lgtm|26764",
        numbers=(26764,),
    ),
    "check_run/rerequested.payload.json": RerunEvent(
        # Sic: this sample's clone_url is plain http.
        repo=RepoRef("github", "github/hello-world", "http://github.com/github/hello-world.git", "master", 1),
        head_sha="d6fde92930d4715a2b49857d24b940956b26d2d3",
        scope="run",
        requester=Actor("octocat", None, False),
        check_id=4,
        external_id=None,
        numbers=(),
    ),
    "check_suite/completed.payload.json": "check_suite 'completed': only a re-run request is acted on",
    "check_suite/requested.payload.json": "check_suite 'requested': only a re-run request is acted on",
    "check_suite/rerequested.payload.json": RerunEvent(
        repo=HELLO_957387,
        head_sha=HEAD,
        scope="suite",
        requester=Actor("octocoders-linter[bot]", None, True),
        numbers=(2,),
    ),
    "installation/created.payload.json": InstallationEvent(
        action="created", installation_id=957387, account="Codertocat", repositories=("Codertocat/Hello-World",)
    ),
    "issue_comment/created.payload.json": "comment on an issue, not a pull request",
    "issue_comment/created.with-installation.payload.json": "comment on an issue, not a pull request",
    "issue_comment/deleted.payload.json": "issue_comment 'deleted': only new comments carry commands",
    "issue_comment/edited.payload.json": "issue_comment 'edited': only new comments carry commands",
    "ping/payload.json": OCTOCODERS_PING,
    "ping/with-app_id.payload.json": OCTOCODERS_PING,
    "pull_request/closed.payload.json": change("closed", HELLO_APP, CLOSED_AT),
    "pull_request/converted_to_draft.payload.json": change("drafted", HELLO, CLOSED_AT, draft=True),
    "pull_request/opened.payload.json": change("opened", HELLO_APP, OPENED_AT),
    "pull_request/opened.with-null-body.json": change("opened", HELLO_APP, OPENED_AT),
    "pull_request/opened.with-organization.payload.json": change("opened", HELLO_APP, OPENED_AT),
    "pull_request/ready_for_review.payload.json": change("ready", HELLO, CLOSED_AT),
    "pull_request/reopened.payload.json": change("reopened", HELLO_APP, OPENED_AT),
    "pull_request/synchronize.payload.json": change("updated", HELLO_APP, OPENED_AT),
    "push/payload.json": tag_deleted(HELLO),
    "push/with-installation.payload.json": tag_deleted(HELLO_APP),
    "push/with-new-branch.payload.json": PushEvent(
        repo=HELLO_APP,
        ref="refs/heads/master",
        before="0" * 40,
        after="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        created=True,
        deleted=False,
        forced=False,
        pusher=Actor("Codertocat"),
    ),
    "status/payload.json": "commit statuses are reports (ours included), not triggers",
    "workflow_run/completed.with-pull-requests.payload.json": (
        "GitHub Actions runs are not followed; submissions come through the API"
    ),
}


@pytest.fixture
def octokit() -> Path:
    return shared_fixture(OCTOKIT)


def parse_sample(octokit: Path, name: str) -> ParseOutcome:
    event = name.split("/")[0]  # the directory is the X-GitHub-Event value
    return parse({"X-GitHub-Event": event, "X-GitHub-Delivery": "72d3162e"}, (octokit / name).read_bytes())


def test_every_sample_has_an_expectation(octokit: Path) -> None:
    assert sorted(EXPECTED) == sorted(str(p.relative_to(octokit)) for p in octokit.glob("*/*.json"))


@pytest.mark.parametrize("name", shared_fixture_names(OCTOKIT, "*/*.json"))
def test_sample_parses_to_expected_outcome(octokit: Path, name: str) -> None:
    assert name in EXPECTED, f"no expected outcome for new sample {name}"
    outcome = parse_sample(octokit, name)
    expected = EXPECTED[name]
    if isinstance(expected, str):
        assert (outcome.event, outcome.reason) == (None, expected)
    else:
        assert outcome.event == expected
        assert outcome.reason


def test_accepted_reasons_say_what_was_accepted(octokit: Path) -> None:
    assert parse_sample(octokit, "pull_request/synchronize.payload.json").reason == (
        "pull request #2 synchronize: change updated"
    )
    assert parse_sample(octokit, "check_run/rerequested.payload.json").reason == "re-run of check run 4"
    assert parse_sample(octokit, "push/with-new-branch.payload.json").reason == "push to refs/heads/master"


def vector(number: int) -> dict[str, Any]:
    vectors: list[dict[str, Any]] = json.loads(shared_fixture(VECTORS).read_text())["vectors"]
    assert len(vectors) == VECTOR_COUNT
    return vectors[number - 1]


@pytest.mark.parametrize("number", range(1, VECTOR_COUNT + 1), ids=lambda n: f"vector{n}")
def test_signature_vectors(number: int) -> None:
    given = vector(number)
    headers = {"X-Hub-Signature-256": given["x_hub_signature_256"]}
    body = given["payload_utf8"].encode("utf-8")
    if given["valid"]:
        verify(headers, body, given["secret"])
    else:
        with pytest.raises(SignatureError):
            verify(headers, body, given["secret"])


def test_signature_is_over_raw_bytes_not_reserialised_json() -> None:
    given = vector(6)  # octokit #71: \u001B in the raw body
    body = given["payload_utf8"].encode("utf-8")
    reserialised = json.dumps(json.loads(body), indent=2).encode() + b"\n"
    assert reserialised != body
    with pytest.raises(SignatureError, match="does not match"):
        verify({"X-Hub-Signature-256": given["x_hub_signature_256"]}, reserialised, given["secret"])
