"""GitHub sansio: signature vectors, every octokit sample parsed to its exact outcome, malformed deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from bot.core.events import (
    Actor,
    ChangeAction,
    ChangeEvent,
    CommentEvent,
    Event,
    InstallationEvent,
    PingEvent,
    PushEvent,
    RepoRef,
    RerunEvent,
)
from bot.forges.github.sansio import (
    MalformedPayload,
    ParseOutcome,
    SignatureError,
    delivery_id,
    event_name,
    parse,
    verify,
)

FIXTURES = Path(__file__).resolve().parents[5] / "shared" / "fixtures" / "github"
SAMPLES = FIXTURES / "octokit-webhooks"
VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text())["vectors"]

HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
BASE = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
CODERTOCAT = Actor("Codertocat", None, False)
HELLO = RepoRef("github", "Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master", None)
HELLO_APP = RepoRef("github", "Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master", 1)
HELLO_957387 = RepoRef(
    "github", "Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master", 957387
)


def change(action: ChangeAction, repo: RepoRef, draft: bool = False) -> ChangeEvent:
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
    "pull_request/closed.payload.json": change("closed", HELLO_APP),
    "pull_request/converted_to_draft.payload.json": change("drafted", HELLO, draft=True),
    "pull_request/opened.payload.json": change("opened", HELLO_APP),
    "pull_request/opened.with-null-body.json": change("opened", HELLO_APP),
    "pull_request/opened.with-organization.payload.json": change("opened", HELLO_APP),
    "pull_request/ready_for_review.payload.json": change("ready", HELLO),
    "pull_request/reopened.payload.json": change("reopened", HELLO_APP),
    "pull_request/synchronize.payload.json": change("updated", HELLO_APP),
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

SAMPLE_NAMES = sorted(str(p.relative_to(SAMPLES)) for p in SAMPLES.glob("*/*.json"))


def headers_for(event: str, **extra: str) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", **extra}


def load(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_bytes())


def parse_json(event: str, payload: dict[str, Any]) -> ParseOutcome:
    return parse(headers_for(event), json.dumps(payload).encode())


def pr_comment(body: str = "/retest") -> dict[str, Any]:
    """octokit's issue_comment samples are all on plain issues (SOURCES.md); adding `issue.pull_request`,
    as GitHub does for a comment on a PR, makes one on a pull request."""
    payload = load("issue_comment/created.with-installation.payload.json")
    payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"}
    payload["comment"]["body"] = body
    return payload


# --- signature ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[f"vector{i + 1}" for i in range(len(VECTORS))])
def test_signature_vectors(vector: dict[str, Any]) -> None:
    headers = {"X-Hub-Signature-256": vector["x_hub_signature_256"]}
    body = vector["payload_utf8"].encode("utf-8")
    if vector["valid"]:
        verify(headers, body, vector["secret"])
    else:
        with pytest.raises(SignatureError):
            verify(headers, body, vector["secret"])


def test_signature_header_lookup_ignores_case() -> None:
    vector = VECTORS[0]
    verify({"x-hub-signature-256": vector["x_hub_signature_256"]}, b"Hello, World!", vector["secret"])


def test_signature_is_over_raw_bytes_not_reserialised_json() -> None:
    vector = VECTORS[5]  # octokit #71: \u001B in the raw body
    body = vector["payload_utf8"].encode("utf-8")
    reserialised = json.dumps(json.loads(body), indent=2).encode() + b"\n"
    assert reserialised != body
    with pytest.raises(SignatureError, match="does not match"):
        verify({"X-Hub-Signature-256": vector["x_hub_signature_256"]}, reserialised, vector["secret"])


def test_uppercase_hex_is_the_same_digest() -> None:
    vector = VECTORS[0]
    upper = "sha256=" + vector["x_hub_signature_256"].removeprefix("sha256=").upper()
    verify({"X-Hub-Signature-256": upper}, b"Hello, World!", vector["secret"])


@pytest.mark.parametrize(
    ("headers", "secret", "message"),
    [
        ({}, "s", "missing X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "sha1=" + "0" * 40}, "s", "not of the form"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 63}, "s", "not of the form"),
        ({"X-Hub-Signature-256": "0" * 64}, "s", "not of the form"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "s", "does not match"),
        ({"X-Hub-Signature-256": "sha256=" + hmac.new(b"", b"x", hashlib.sha256).hexdigest()}, "", "no webhook secret"),
    ],
)
def test_signature_failures(headers: dict[str, str], secret: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(headers, b"x", secret)


def test_legacy_sha1_header_alone_is_refused() -> None:
    body = b"Hello, World!"
    sha1 = "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()
    with pytest.raises(SignatureError, match="missing"):
        verify({"X-Hub-Signature": sha1}, body, "k")


def test_signature_error_never_quotes_the_secret_or_body() -> None:
    secret, body = "hunter2-very-secret", b'{"token": "payload-content"}'
    with pytest.raises(SignatureError) as info:
        verify({"X-Hub-Signature-256": "sha256=" + "a" * 64}, body, secret)
    assert secret not in str(info.value) and "payload-content" not in str(info.value)


# --- every octokit sample ----------------------------------------------------------------------------------


def test_every_sample_has_an_expectation() -> None:
    assert sorted(EXPECTED) == SAMPLE_NAMES


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_parses_to_expected_outcome(name: str) -> None:
    assert name in EXPECTED, f"no expected outcome for new sample {name}"
    event = name.split("/")[0]  # the directory is the X-GitHub-Event value
    outcome = parse(headers_for(event), (SAMPLES / name).read_bytes())
    expected = EXPECTED[name]
    if isinstance(expected, str):
        assert outcome == ParseOutcome(None, expected)
    else:
        assert outcome.event == expected
        assert outcome.reason


def test_accepted_reasons_say_what_was_accepted() -> None:
    assert parse_json("pull_request", load("pull_request/synchronize.payload.json")).reason == (
        "pull request #2 synchronize: change updated"
    )
    assert parse_json("check_run", load("check_run/rerequested.payload.json")).reason == "re-run of check run 4"
    assert parse_json("push", load("push/with-new-branch.payload.json")).reason == "push to refs/heads/master"


# --- pull_request ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["labeled", "edited", "assigned", "review_requested", "auto_merge_enabled"])
def test_other_pull_request_actions_are_ignored(action: str) -> None:
    payload = load("pull_request/opened.payload.json") | {"action": action}
    assert parse_json("pull_request", payload) == ParseOutcome(
        None, f"pull_request action {action!r} does not change what is tested"
    )


def test_pull_request_from_fork_and_by_bot() -> None:
    payload = load("pull_request/opened.payload.json")
    payload["pull_request"]["head"]["repo"]["full_name"] = "someone/Hello-World"
    payload["pull_request"]["user"] = {"login": "dependabot[bot]", "type": "Bot"}
    payload["pull_request"]["author_association"] = "NONE"
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent)
    assert event.head_repo == "someone/Hello-World"
    assert event.author == Actor("dependabot[bot]", "NONE", True)


def test_pull_request_from_deleted_fork_has_empty_head_repo() -> None:
    payload = load("pull_request/closed.payload.json")
    payload["pull_request"]["head"]["repo"] = None
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent) and event.head_repo == ""


def test_merged_pull_request() -> None:
    payload = load("pull_request/closed.payload.json")
    payload["pull_request"]["merged"] = True
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent) and event.merged and event.action == "closed"


# --- issue_comment -----------------------------------------------------------------------------------------


def test_comment_on_pull_request() -> None:
    outcome = parse_json("issue_comment", pr_comment("/ok-to-test\n"))
    assert outcome.event == CommentEvent(
        repo=HELLO_APP,
        number=1,
        comment_id=492700400,
        body="/ok-to-test\n",
        commenter=Actor("Codertocat", "OWNER", False),
        created_at=datetime(2019, 5, 15, 15, 20, 21, tzinfo=UTC),  # the sample's comment.created_at
    )
    assert outcome.reason == "comment 492700400 on pull request #1"


def test_comment_by_bot_and_null_body() -> None:
    payload = pr_comment()
    payload["comment"]["user"]["type"] = "Bot"
    payload["comment"]["body"] = None
    event = parse_json("issue_comment", payload).event
    assert isinstance(event, CommentEvent)
    assert event.commenter.is_bot and event.body == ""


def test_edited_comment_on_pull_request_is_ignored() -> None:
    payload = pr_comment() | {"action": "edited"}
    assert parse_json("issue_comment", payload).event is None


# --- check_run / check_suite -------------------------------------------------------------------------------


def test_check_run_keeps_our_external_id() -> None:
    payload = load("check_run/rerequested.payload.json")
    payload["check_run"]["external_id"] = "job-42"
    event = parse_json("check_run", payload).event
    assert isinstance(event, RerunEvent) and event.external_id == "job-42"


def test_requested_action_without_identifier_is_malformed() -> None:
    payload = load("check_run/requested_action.payload.json")
    del payload["requested_action"]["identifier"]
    with pytest.raises(MalformedPayload, match=r"missing field requested_action\.identifier"):
        parse_json("check_run", payload)


# --- ping, installation, unknown ---------------------------------------------------------------------------


def test_organisation_ping_has_no_repository() -> None:
    payload = load("ping/payload.json")
    del payload["repository"]
    assert parse_json("ping", payload).event == PingEvent(None, 109948940, "Anything added dilutes everything else.")


def test_installation_deleted_without_repositories() -> None:
    payload = load("installation/created.payload.json") | {"action": "deleted"}
    del payload["repositories"]
    assert parse_json("installation", payload).event == InstallationEvent("deleted", 957387, "Codertocat", ())


def test_unknown_event_is_ignored_with_reason() -> None:
    assert parse_json("star", {"action": "created"}) == ParseOutcome(None, "event 'star' is not used by labgate")


# --- headers and malformed bodies --------------------------------------------------------------------------


def test_header_helpers() -> None:
    headers = {"x-github-event": "push", "X-GITHUB-DELIVERY": " 72d3162e "}
    assert event_name(headers) == "push"
    assert delivery_id(headers) == "72d3162e"
    with pytest.raises(MalformedPayload, match="X-GitHub-Delivery"):
        delivery_id({})
    with pytest.raises(MalformedPayload, match="X-GitHub-Event"):
        event_name({"X-GitHub-Event": " "})
    with pytest.raises(MalformedPayload, match="X-GitHub-Event"):
        parse({}, b"{}")


def test_form_encoded_delivery() -> None:
    body = (SAMPLES / "ping/payload.json").read_text()
    form = urlencode({"payload": body}).encode()
    outcome = parse(headers_for("ping", **{"Content-Type": "application/x-www-form-urlencoded"}), form)
    assert outcome.event == OCTOCODERS_PING
    with pytest.raises(MalformedPayload, match="no `payload` field"):
        parse(headers_for("ping", **{"Content-Type": "application/x-www-form-urlencoded"}), b"other=1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe", "body is not UTF-8"),
        (b"[1, 2]", "JSON list, not an object"),
        (b"", "body is not JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse(headers_for("push"), body)


def drop(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    del node[last]
    return payload


@pytest.mark.parametrize(
    ("event", "sample", "path"),
    [
        ("pull_request", "pull_request/opened.payload.json", "action"),
        ("pull_request", "pull_request/opened.payload.json", "pull_request.head.sha"),
        ("pull_request", "pull_request/opened.payload.json", "pull_request.base.ref"),
        ("pull_request", "pull_request/opened.payload.json", "pull_request.user.login"),
        ("pull_request", "pull_request/opened.payload.json", "pull_request.author_association"),
        ("pull_request", "pull_request/opened.payload.json", "repository.clone_url"),
        ("pull_request", "pull_request/opened.payload.json", "sender"),
        ("issue_comment", "issue_comment/created.payload.json", "issue.number"),
        ("issue_comment", "issue_comment/created.payload.json", "comment.author_association"),
        ("check_run", "check_run/rerequested.payload.json", "check_run.head_sha"),
        ("check_run", "check_run/rerequested.payload.json", "check_run.pull_requests"),
        ("check_suite", "check_suite/rerequested.payload.json", "check_suite.head_sha"),
        ("push", "push/payload.json", "after"),
        ("push", "push/payload.json", "pusher.name"),
        ("ping", "ping/payload.json", "zen"),
        ("installation", "installation/created.payload.json", "installation.account"),
    ],
)
def test_missing_field_is_named_by_path(event: str, sample: str, path: str) -> None:
    payload = drop(path, load(sample))
    if event == "issue_comment":
        payload["issue"]["pull_request"] = {}  # only a PR comment is read further
    with pytest.raises(MalformedPayload) as info:
        parse_json(event, payload)
    assert str(info.value) == f"missing field {path}"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("pull_request.number", "2", "field pull_request.number is not an integer"),
        ("pull_request.number", True, "field pull_request.number is not an integer"),
        ("pull_request.draft", "false", "field pull_request.draft is not a boolean"),
        ("pull_request.head", None, "field pull_request.head is not an object"),
        ("installation", {"id": "1"}, "field installation.id is not an integer"),
    ],
)
def test_wrong_field_types_are_named(path: str, value: Any, message: str) -> None:
    payload = load("pull_request/opened.payload.json")
    *parents, last = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    node[last] = value
    with pytest.raises(MalformedPayload) as info:
        parse_json("pull_request", payload)
    assert str(info.value) == message


def test_bad_list_item_is_named_by_index() -> None:
    payload = load("check_suite/rerequested.payload.json")
    payload["check_suite"]["pull_requests"] = [{"number": 2}, "3"]
    with pytest.raises(MalformedPayload, match=r"check_suite\.pull_requests\[1\] is not an object"):
        parse_json("check_suite", payload)


def test_malformed_message_does_not_include_the_payload() -> None:
    payload = load("pull_request/opened.payload.json")
    del payload["pull_request"]["head"]["sha"]
    with pytest.raises(MalformedPayload) as info:
        parse_json("pull_request", payload)
    assert "Update the README" not in str(info.value) and len(str(info.value)) < 100
